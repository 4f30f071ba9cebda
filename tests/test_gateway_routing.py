"""The gateway in the real topology: routes from config-repo reloaded live, every error it produces as
problem+json, forged tokens and identity headers refused, rate limits, CORS and security headers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Iterator

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from support import ADMIN_TOKEN, Api, Stack

pytestmark = pytest.mark.integration


def is_problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert {"type", "title", "status", "detail", "instance"} <= body.keys() and body["status"] == status
    assert body["trace_id"] == r.headers["x-trace-id"]  # the failure can be looked up by its trace
    return body


def refresh(stack: Stack) -> None:
    r = httpx.post(f"{stack.config_server}/actuator/busrefresh", timeout=5)
    assert r.status_code == 204, r.text


def wait_until(predicate, timeout: float = 5.0) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(0.02)
    return time.monotonic() - started


@contextmanager
def routes_added(stack: Stack, *routes: str) -> Iterator[float]:
    """Prepend routes to the stack's copy of gateway.yml, busrefresh, and yield how long until they were live;
    afterwards restore the file and refresh again."""
    path = stack.config_repo / "gateway.yml"
    original = path.read_text()
    path.write_text(original.replace("  routes:\n", "  routes:\n" + "".join(f"    - {r}\n" for r in routes), 1))
    first_id = routes[0].split("id:")[1].split(",")[0].strip()
    try:
        refresh(stack)
        started = time.monotonic()
        live = lambda: any(r["id"] == first_id for r in gateway_routes(stack))  # noqa: E731
        wait_until(live)
        yield time.monotonic() - started
    finally:
        path.write_text(original)
        refresh(stack)
        wait_until(lambda: not any(r["id"] == first_id for r in gateway_routes(stack)))


def gateway_routes(stack: Stack) -> list[dict]:
    r = httpx.get(f"{stack.gateway}/gateway/routes", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()["routes"]


@contextmanager
def silent_server(reply: bytes | None) -> Iterator[int]:
    """A TCP server that answers every connection with `reply` and closes, or (None) never answers at all."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            if reply is None:
                held.append(conn)
            else:
                conn.recv(65536)
                conn.sendall(reply)
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for c in held:
            c.close()


# -- routes from config, live -----------------------------------------------------------------------------------------

def test_a_route_added_to_config_repo_is_live_within_2_s_of_busrefresh(stack: Stack):
    pid = stack.topology.pid("gateway")
    http = httpx.Client(base_url=stack.gateway, timeout=5)
    assert http.get("/api/shop/products").status_code == 404
    path = stack.config_repo / "gateway.yml"
    original = path.read_text()
    new = "{id: shop, path: /api/shop, service: catalog, strip_prefix: 2, auth: public}"
    path.write_text(original.replace("  routes:\n", f"  routes:\n    - {new}\n", 1))
    try:
        refresh(stack)
        started = time.monotonic()
        took = wait_until(lambda: http.get("/api/shop/products").status_code == 200, timeout=5)
        print(f"\nnew route answering {took * 1000:.0f} ms after busrefresh")
        assert took < 2.0
        assert http.get("/api/shop/products").json() == http.get("/api/catalog/products").json()
        assert any(r["id"] == "shop" for r in gateway_routes(stack))
    finally:
        path.write_text(original)
        refresh(stack)
        started = time.monotonic()
        wait_until(lambda: http.get("/api/shop/products").status_code == 404, timeout=5)
        print(f"route removed {(time.monotonic() - started) * 1000:.0f} ms after the second busrefresh")
    assert stack.topology.pid("gateway") == pid  # no restart


def test_requests_in_flight_survive_a_refresh(stack: Stack, api: Api):
    errors: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=stack.gateway, timeout=5) as c:
            while not stop.is_set():
                r = c.get("/api/catalog/products")
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:100]}")

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        with routes_added(stack, "{id: extra, path: /api/extra, service: catalog, auth: public}"):
            time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []


def test_the_admin_route_table_needs_the_admin_token(stack: Stack):
    r = httpx.get(f"{stack.gateway}/gateway/routes")
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    assert [r["id"] for r in gateway_routes(stack)][:3] == ["token", "auth", "sign-up"]


# -- the gateway's errors ----------------------------------------------------------------------------------------------

def test_404_400_and_413(stack: Stack, api: Api):
    assert is_problem(api.http.get("/api/nowhere"), 404)["detail"] == "no route for GET /api/nowhere"
    is_problem(api.http.get("/api/catalog/%2e%2e/admin/config"), 400)
    big = b'{"items": [' + b'{"sku": "X", "quantity": 1},' * 50_000 + b'{"sku": "X", "quantity": 1}]}'
    is_problem(api.http.post("/api/orders", content=big, headers={**api.auth, "content-type": "application/json"}),
               413)


def test_502_503_504_and_429(stack: Stack):
    with silent_server(b"NOT HTTP AT ALL\r\n\r\n") as garbage, silent_server(None) as mute:
        with routes_added(stack,
                          f"{{id: garbage, path: /api/t/garbage, url: 'http://127.0.0.1:{garbage}', auth: public}}",
                          f"{{id: mute, path: /api/t/mute, url: 'http://127.0.0.1:{mute}', auth: public, timeout_s: 0.3}}",
                          "{id: ghost, path: /api/t/ghost, service: ghost, auth: public}",
                          "{id: limited, path: /api/t/limited, service: catalog, strip_prefix: 3, auth: public, "
                          "rate_limit: {requests: 1, per_s: 10, burst: 2}}"):
            http = httpx.Client(base_url=stack.gateway, timeout=5)
            is_problem(http.get("/api/t/garbage/x"), 502)
            started = time.monotonic()
            assert "did not answer" in is_problem(http.get("/api/t/mute/x"), 504)["detail"]
            assert time.monotonic() - started < 2.0  # the route's timeout, not the default
            assert "ghost" in is_problem(http.get("/api/t/ghost/x"), 503)["detail"]
            statuses = [http.get("/api/t/limited/products") for _ in range(3)]
            assert [r.status_code for r in statuses[:2]] == [200, 200]
            refused = statuses[2]
            is_problem(refused, 429)
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.headers["ratelimit-limit"] == "2" and refused.headers["ratelimit-remaining"] == "0"


# -- identity and tokens -----------------------------------------------------------------------------------------------

def test_identity_headers_sent_by_a_client_are_stripped(stack: Stack, api: Api):
    me = api.http.get("/api/users/me", headers=api.auth).json()
    forged = {"X-User-Id": "someone-else", "X-User-Name": "root", "X-User-Roles": "admin"}
    assert api.http.get("/api/users/me", headers={**api.auth, **forged}).json() == me
    is_problem(api.http.get("/api/users/me", headers=forged), 401)  # no token: forged identity is not enough
    # the admin route checks the token's roles, not a header the client wrote
    is_problem(api.http.get(f"/api/admin/users/{me['id']}", headers={**api.auth, **forged}), 403)


def test_admin_routes_need_the_admin_role(stack: Stack, api: Api):
    me = api.http.get("/api/users/me", headers=api.auth).json()
    admin = Api(stack.gateway).log_in_as_admin()
    assert admin.http.get(f"/api/admin/users/{me['id']}", headers=admin.auth).json() == me


def _real_key(stack: Stack):
    pem = (stack.var_dir / "keys" / "user-signing.pem").read_bytes()
    return serialization.load_pem_private_key(pem, password=None)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_forged_tokens_are_refused(stack: Stack, api: Api):
    header = jwt.get_unverified_header(api.token)
    claims = jwt.decode(api.token, options={"verify_signature": False})
    from cryptography.hazmat.primitives.asymmetric import rsa

    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = httpx.get(stack.topology.url("user-1") + "/.well-known/jwks.json").json()
    public_pem = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(jwks["keys"][0])).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    now = int(time.time())
    escalated = {**claims, "roles": ["admin"]}
    head_hs = f"{_b64(json.dumps({'alg': 'HS256', 'typ': 'JWT', 'kid': header['kid']}).encode())}." \
              f"{_b64(json.dumps(escalated).encode())}"
    forgeries = {
        "wrong key": jwt.encode(escalated, other_key, algorithm="RS256", headers={"kid": header["kid"]}),
        "expired": jwt.encode({**claims, "iat": now - 7200, "exp": now - 3600}, _real_key(stack), algorithm="RS256",
                              headers={"kid": header["kid"]}),
        "alg none": f"{_b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}."
                    f"{_b64(json.dumps(escalated).encode())}.",
        "HS256 with the public key": f"{head_hs}.{_b64(hmac.new(public_pem, head_hs.encode(), hashlib.sha256).digest())}",
        "unknown kid": jwt.encode(claims, other_key, algorithm="RS256", headers={"kid": f"k-{uuid.uuid4().hex}"}),
        "tampered claims": ".".join([api.token.split(".")[0], _b64(json.dumps(escalated).encode()),
                                    api.token.split(".")[2]]),
        "garbage": "not-a-token",
    }
    for what, token in forgeries.items():
        r = api.http.get("/api/users/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401, (what, r.text)
        is_problem(r, 401)
    assert api.http.get("/api/users/me", headers=api.auth).status_code == 200


# -- response policy ---------------------------------------------------------------------------------------------------

def test_security_headers_and_cors_from_config(stack: Stack):
    http = httpx.Client(base_url=stack.gateway, timeout=5)
    for r in (http.get("/api/catalog/products"), http.get("/api/nowhere"), http.get("/health")):
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"
        assert "default-src 'self'" in r.headers["content-security-policy"]
    origin = "http://localhost:5173"

    def preflight(who: str) -> httpx.Response:
        return http.options("/api/orders", headers={"Origin": who, "Access-Control-Request-Method": "POST",
                                                   "Access-Control-Request-Headers": "authorization, content-type"})

    # By default no origin but the gateway's own may call the API from a browser.
    is_problem(preflight(origin), 403)
    assert "access-control-allow-origin" not in http.get("/api/catalog/products", headers={"Origin": origin}).headers
    path = stack.config_repo / "gateway.yml"
    original = path.read_text()
    path.write_text(original + f"\n---\ngateway: {{cors: {{allow_origins: ['{origin}']}}}}\n")
    try:
        refresh(stack)
        wait_until(lambda: preflight(origin).status_code == 204)
        pre = preflight(origin)
        assert pre.headers["access-control-allow-origin"] == origin
        assert "authorization" in pre.headers["access-control-allow-headers"]
        actual = http.get("/api/catalog/products", headers={"Origin": origin})
        assert actual.headers["access-control-allow-origin"] == origin
        is_problem(preflight("https://evil.example"), 403)
    finally:
        path.write_text(original)
        refresh(stack)
        wait_until(lambda: preflight(origin).status_code == 403)


def test_access_log_lines_are_json_with_route_upstream_and_trace(stack: Stack, api: Api):
    r = api.http.get("/api/users/me", headers=api.auth)
    trace_id, user_id = r.headers["x-trace-id"], r.json()["id"]
    log = stack.topology.log_path("gateway")

    def line():
        for raw in log.read_text().splitlines():
            if trace_id in raw and '"logger": "access"' in raw:
                return json.loads(raw)
        return None

    wait_until(lambda: line() is not None)
    entry = line()
    assert entry["method"] == "GET" and entry["path"] == "/api/users/me" and entry["route"] == "users"
    assert entry["upstream"] == "user-1" and entry["status"] == 200 and entry["user"] == user_id
    assert entry["ms"] > 0
