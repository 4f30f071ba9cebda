"""The proxy in front of fake upstreams: each filter, each error the gateway produces, identity handling."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest
from harness import Harness, instance

from msa_kit.resilience import BreakerPolicy

CATALOG = {"id": "catalog", "path": "/api/catalog", "service": "catalog", "strip_prefix": 2, "auth": "public"}
ORDERS = {"id": "orders", "path": "/api/orders", "service": "order", "strip_prefix": 1}
ADMIN = {"id": "admin", "path": "/api/admin/users", "service": "user", "strip_prefix": 3, "prefix": "/internal/users",
         "roles": ["admin"]}


@pytest.fixture
async def gw():
    h = Harness([CATALOG, ORDERS, ADMIN])
    yield h
    await h.close()


def is_problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and body["type"] == "about:blank" and body["title"] and "detail" in body
    assert body["instance"] == r.request.url.path
    return body


# -- faithful proxying ----------------------------------------------------------------------------------------------

async def test_query_method_body_and_status_pass_through_untouched(gw):
    gw.upstreams.handlers[9301] = lambda r: httpx.Response(418, json={"echo": r.content.decode(), "q": r.url.query.decode()})
    r = await gw.client.post("/api/orders/x?a=1&b=%2F&a=2", content=b'{"k": 1}', headers=gw.bearer())
    assert r.status_code == 418 and r.json() == {"echo": '{"k": 1}', "q": "a=1&b=%2F&a=2"}


async def test_hop_by_hop_headers_are_dropped_and_forwarded_headers_set(gw):
    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=dict(request.headers), headers={"Connection": "close", "Keep-Alive": "5",
                                                                      "X-Up": "1", "Set-Cookie": "a=1"})
    gw.upstreams.handlers[9201] = gw.upstreams.handlers[9202] = upstream
    r = await gw.client.get("/api/catalog/p", headers={"Connection": "keep-alive, x-secret", "TE": "trailers",
                                                       "Proxy-Authorization": "x", "X-Forwarded-For": "1.2.3.4",
                                                       "User-Agent": "me/1", "X-Secret": "s",
                                                       "Accept-Encoding": "identity"})
    seen = r.json()
    assert not {"te", "proxy-authorization", "keep-alive", "connection", "x-secret"} & seen.keys()
    assert seen["x-forwarded-for"] == "1.2.3.4, 10.0.0.7" and seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "gw.test" and seen["user-agent"] == "me/1"
    assert seen["accept-encoding"] == "identity"  # the client's, not the gateway's client's default
    assert "keep-alive" not in r.headers and r.headers["x-up"] == "1" and r.headers["set-cookie"] == "a=1"


async def test_identity_headers_sent_by_a_client_are_stripped(gw):
    forged = {"X-User-Id": "admin-id", "X-User-Name": "root", "X-User-Roles": "admin"}
    public = (await gw.client.get("/api/catalog/p", headers=forged)).json()["headers"]
    assert not {"x-user-id", "x-user-name", "x-user-roles"} & public.keys()
    authed = (await gw.client.get("/api/orders", headers={**forged, **gw.bearer(sub="u-9", name="bob")})).json()
    assert authed["headers"]["x-user-id"] == "u-9" and authed["headers"]["x-user-name"] == "bob"
    assert authed["headers"]["x-user-roles"] == "user"
    assert "authorization" not in authed["headers"]  # the token stops at the gateway


async def test_streams_a_large_request_body_and_a_large_response():
    got = bytearray()

    async def sink(request: httpx.Request) -> httpx.Response:
        got.extend(request.content)
        return httpx.Response(200, content=b"x" * 3_000_000)

    h = Harness([{**CATALOG, "auth": "public"}], max_body_bytes=5_000_000)
    h.upstreams.handlers[9201] = h.upstreams.handlers[9202] = sink

    async def chunks():
        for _ in range(40):
            yield b"y" * 100_000

    r = await h.client.post("/api/catalog/upload", content=chunks())
    assert r.status_code == 200 and len(r.content) == 3_000_000 and len(got) == 4_000_000
    await h.close()


# -- filters --------------------------------------------------------------------------------------------------------

async def test_request_and_response_header_filters():
    h = Harness([{**CATALOG, "request_headers": {"add": {"X-Tenant": "t1"}, "remove": ["X-Debug"]},
                  "response_headers": {"add": {"Cache-Control": "max-age=60"}, "remove": ["X-Internal"]}}])
    h.upstreams.handlers[9201] = h.upstreams.handlers[9202] = lambda r: httpx.Response(
        200, json=dict(r.headers), headers={"X-Internal": "secret", "Cache-Control": "no-store"})
    r = await h.client.get("/api/catalog/p", headers={"X-Debug": "1", "X-Tenant": "spoofed"})
    assert r.json()["x-tenant"] == "t1" and "x-debug" not in r.json()
    assert "x-internal" not in r.headers and r.headers["cache-control"] == "max-age=60"
    await h.close()


async def test_fixed_url_target_and_header_predicate():
    h = Harness([{"id": "canary", "path": "/api/catalog", "headers": {"X-Canary": "yes"}, "url": "http://127.0.0.1:9999",
                  "strip_prefix": 2, "auth": "public"}, CATALOG])
    assert (await h.client.get("/api/catalog/p", headers={"X-Canary": "yes"})).json()["instance"] == 9999
    assert (await h.client.get("/api/catalog/p")).json()["instance"] in (9201, 9202)
    await h.close()


async def test_weights_split_calls_by_instance_version():
    h = Harness([{**CATALOG, "weights": {"v1": 90, "v2": 10}}],
                instances={"catalog": [instance("catalog", 9201), instance("catalog", 9202),
                                       instance("catalog", 9203, "v2")]})
    ports = Counter([(await h.client.get("/api/catalog/p")).json()["instance"] for _ in range(100)])
    assert ports[9203] == 10 and ports[9201] + ports[9202] == 90 and min(ports[9201], ports[9202]) >= 35
    await h.close()


async def test_timeout_is_504():
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(1)
        return httpx.Response(200)

    h = Harness([{**CATALOG, "timeout_s": 0.05}])
    h.upstreams.handlers[9201] = h.upstreams.handlers[9202] = slow

    async def answer_or_timeout(request):  # the stand-in client knows no timeouts: enforce the route's like one
        try:
            return await asyncio.wait_for(h.upstreams(request), request.extensions["timeout"]["read"])
        except asyncio.TimeoutError:
            raise httpx.ReadTimeout("read timed out", request=request) from None

    h.upstream_client.handler = answer_or_timeout
    body = is_problem(await h.client.get("/api/catalog/p"), 504)
    assert "did not answer in time" in body["detail"]
    await h.close()


async def test_idempotent_requests_are_retried_on_another_instance():
    h = Harness([{**CATALOG, "retries": 1}])
    h.upstreams.handlers[9201] = lambda r: httpx.Response(503)
    for _ in range(4):
        assert (await h.client.get("/api/catalog/p")).status_code == 200
    assert (await h.client.post("/api/catalog/p", content=b"x")).status_code in (200, 503)  # POST: never retried
    await h.close()


async def test_an_instance_dying_mid_answer_is_retried_before_anything_is_sent():
    class BrokenOff(httpx.AsyncByteStream):
        async def __aiter__(self):
            yield b"half"
            raise httpx.ReadError("peer closed connection without sending complete message body")

    h = Harness([{**CATALOG, "retries": 1}])
    h.upstreams.handlers[9201] = lambda r: httpx.Response(200, headers={"content-length": "704"}, stream=BrokenOff())
    for _ in range(4):
        r = await h.client.get("/api/catalog/p")
        assert r.status_code == 200 and b"half" not in r.content  # the other instance's whole answer
    await h.close()


async def test_rate_limit_is_per_caller_with_ratelimit_headers():
    h = Harness([{**CATALOG, "rate_limit": {"requests": 1, "per_s": 60, "burst": 2}}])
    first = await h.client.get("/api/catalog/p")
    assert first.headers["ratelimit-limit"] == "2" and first.headers["ratelimit-remaining"] == "1"
    await h.client.get("/api/catalog/p")
    refused = await h.client.get("/api/catalog/p")
    body = is_problem(refused, 429)
    assert int(refused.headers["retry-after"]) >= 1 and refused.headers["ratelimit-remaining"] == "0"
    assert int(refused.headers["ratelimit-reset"]) > 0 and "rate limit" in body["detail"]
    # Another caller (a user, keyed by id rather than address) has a bucket of its own.
    h.reconfigure([{**CATALOG, "auth": "required", "rate_limit": {"requests": 1, "per_s": 60, "burst": 2}}])
    assert (await h.client.get("/api/catalog/p", headers=h.bearer(sub="u-2"))).status_code == 200
    await h.close()


# -- auth ------------------------------------------------------------------------------------------------------------

async def test_auth_errors_are_401_with_www_authenticate(gw):
    missing = await gw.client.get("/api/orders")
    assert is_problem(missing, 401) and missing.headers["www-authenticate"] == "Bearer"
    expired = await gw.client.get("/api/orders", headers=gw.bearer(ttl=-60))
    assert "expired" in is_problem(expired, 401)["detail"]
    assert 'invalid_token' in expired.headers["www-authenticate"]
    for bad in ("Basic abc", "Bearer", "Bearer not.a.jwt", "Bearer eyJhbGciOiJub25lIn0.e30."):
        is_problem(await gw.client.get("/api/orders", headers={"Authorization": bad}), 401)


async def test_roles_protect_admin_routes(gw):
    is_problem(await gw.client.get("/api/admin/users/7", headers=gw.bearer(roles=["user"])), 403)
    r = await gw.client.get("/api/admin/users/7", headers=gw.bearer(roles=["admin"]))
    assert r.status_code == 200 and r.json()["path"] == "/internal/users/7"


async def test_jwks_unreachable_is_503():
    h = Harness([ORDERS], instances={"order": [instance("order", 9301)]})  # no user instance: no keys
    assert "signing keys" in is_problem(await h.client.get("/api/orders", headers=h.bearer()), 503)["detail"]
    await h.close()


# -- the gateway's own errors ------------------------------------------------------------------------------------------

async def test_400_for_paths_that_could_escape_a_prefix(gw):
    is_problem(await gw.client.get("/api/catalog/%2E%2E/admin"), 400)
    is_problem(await gw.client.get("/api/catalog/a%2Fb"), 400)
    is_problem(await gw.client.post("/api/catalog/p", headers={"Content-Length": "x"}), 400)


async def test_404_no_route(gw):
    body = is_problem(await gw.client.get("/nowhere"), 404)
    assert body["detail"] == "no route for GET /nowhere"


async def test_413_by_content_length_and_by_streamed_size():
    h = Harness([CATALOG], max_body_bytes=1000)
    is_problem(await h.client.post("/api/catalog/p", content=b"x" * 1001), 413)

    async def chunks():
        for _ in range(5):
            yield b"x" * 400

    is_problem(await h.client.post("/api/catalog/p", content=chunks()), 413)
    assert (await h.client.post("/api/catalog/p", content=b"x" * 1000)).status_code == 200
    await h.close()


async def test_502_when_the_upstream_breaks():
    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("malformed response", request=request)

    h = Harness([{**CATALOG, "url": "http://127.0.0.1:9999", "service": None}])
    h.upstreams.handlers[9999] = broken
    assert "malformed" in is_problem(await h.client.get("/api/catalog/p"), 502)["detail"]
    await h.close()


@pytest.mark.parametrize(("error", "status", "said"), [(httpx.ReadError("reset"), 502, "broke off its answer (reset)"),
                                                       (httpx.ReadTimeout("stalled"), 504, "stopped answering")])
async def test_a_small_answer_that_breaks_off_is_a_clean_error_not_a_cut_short_200(error, status, said):
    # A small answer (by Content-Length) is read whole before any of it is sent: one that breaks off halfway is
    # still answered with a problem, where a streamed one could only be cut short.
    class Breaks(httpx.AsyncByteStream):
        async def __aiter__(self):
            yield b'{"sku": "X", '
            raise error

    h = Harness([{**CATALOG, "url": "http://127.0.0.1:9999", "service": None}])
    h.upstreams.handlers[9999] = lambda request: httpx.Response(200, headers={"content-length": "40"}, stream=Breaks())
    assert said in is_problem(await h.client.get("/api/catalog/p"), status)["detail"]
    await h.close()


async def test_503_no_instance_and_breaker_open():
    h = Harness([CATALOG, ORDERS], instances={"order": [instance("order", 9301)], "user": [instance("user", 9100)]},
                breaker=BreakerPolicy(2, 60))
    assert "no passing instance" in is_problem(await h.client.get("/api/catalog/p"), 503)["detail"]
    h.upstreams.handlers[9301] = lambda r: httpx.Response(500)
    assert [(await h.client.get("/api/orders", headers=h.bearer())).status_code for _ in range(2)] == [500, 500]
    assert "circuit breaker open" in is_problem(await h.client.get("/api/orders", headers=h.bearer()), 503)["detail"]
    await h.close()


# -- response policy ---------------------------------------------------------------------------------------------------

async def test_security_headers_on_every_response(gw):
    for r in (await gw.client.get("/api/catalog/p"), await gw.client.get("/nowhere")):
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"


async def test_cors_preflight_and_actual_requests():
    h = Harness([CATALOG], cors={"allow_origins": ["https://app.example"]})
    pre = await h.client.options("/api/catalog/p", headers={"Origin": "https://app.example",
                                                           "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in pre.headers["access-control-allow-methods"]
    actual = await h.client.get("/api/catalog/p", headers={"Origin": "https://app.example"})
    assert actual.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-trace-id" in actual.headers["access-control-expose-headers"]
    is_problem(await h.client.options("/api/catalog/p", headers={"Origin": "https://evil.example",
                                                                "Access-Control-Request-Method": "POST"}), 403)
    assert "access-control-allow-origin" not in (await h.client.get(
        "/api/catalog/p", headers={"Origin": "https://evil.example"})).headers
    await h.close()


async def test_a_refresh_does_not_disturb_a_request_in_flight():
    release = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200, json={"path": request.url.path})

    h = Harness([CATALOG])
    h.upstreams.handlers[9201] = h.upstreams.handlers[9202] = slow
    in_flight = asyncio.create_task(h.client.get("/api/catalog/p"))
    await asyncio.sleep(0.05)
    h.reconfigure([{**CATALOG, "path": "/api/v2/catalog", "strip_prefix": 3}])
    release.set()
    assert (await in_flight).json() == {"path": "/p"}  # finished on the route it matched
    assert (await h.client.get("/api/catalog/p")).status_code == 404
    assert (await h.client.get("/api/v2/catalog/p")).json() == {"path": "/p"}
    await h.close()
