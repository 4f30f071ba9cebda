"""The HTTP layer in process (httpx over ASGI, no sockets): status codes, headers, error wording, probes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from msa_discovery import create_app
from msa_discovery.api import MAX_BODY
from msa_discovery.checks import probe_http
from msa_discovery.decode import service_registration
from msa_discovery.registry import CheckDefinition, Node, Registry


@pytest.fixture
def reg() -> Registry:
    return Registry(Node("node-1", "id-1", "127.0.0.1"))


@pytest.fixture
async def http(reg: Registry) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(reg, run_checks=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://discovery") as client:
        yield client


async def test_register_without_content_type_and_in_any_key_case(http: httpx.AsyncClient) -> None:
    body = b'{"NAME":"web","Id":"web-1","port":80,"Check":{"ttl":"10s"},"checks":[{"TTL":"10s"}]}'
    r = await http.put("/v1/agent/service/register", content=body)
    assert r.status_code == 200 and r.text == ""
    checks = (await http.get("/v1/agent/checks")).json()
    assert sorted(checks) == ["service:web-1:1", "service:web-1:2"]
    assert checks["service:web-1:1"]["Status"] == "critical"


async def test_every_read_carries_the_consul_headers(http: httpx.AsyncClient) -> None:
    await http.put("/v1/kv/k", content=b"v")
    for path in ["/v1/agent/services", "/v1/agent/checks", "/v1/agent/self", "/v1/health/service/x",
                 "/v1/health/checks/x", "/v1/health/state/any", "/v1/health/node/node-1", "/v1/agent/members",
                 "/v1/catalog/services", "/v1/catalog/service/x",
                 "/v1/kv/k", "/v1/kv/missing", "/v1/status/leader", "/v1/status/peers"]:
        r = await http.get(path)
        assert int(r.headers["X-Consul-Index"]) >= 1, path
        assert r.headers["X-Consul-Knownleader"] == "true" and r.headers["X-Consul-Lastcontact"] == "0", path
    assert (await http.get("/v1/kv/missing")).status_code == 404


async def test_index_grows_with_every_change(http: httpx.AsyncClient) -> None:
    seen = []
    for body in [b'{"Name":"a"}', b'{"Name":"b"}', b'{"Name":"a","Port":2}']:
        await http.put("/v1/agent/service/register", content=body)
        seen.append(int((await http.get("/v1/catalog/services")).headers["X-Consul-Index"]))
    assert seen == sorted(seen) and len(set(seen)) == 3


@pytest.mark.parametrize(("method", "path", "body", "status", "reason"), [
    ("PUT", "/v1/agent/service/register", b"{oops", 400, "Request decode failed"),
    ("PUT", "/v1/agent/service/register", b"", 400, "Request decode failed"),
    ("PUT", "/v1/agent/service/register", b'{"Port":1}', 400, "Missing service name"),
    ("PUT", "/v1/agent/service/register", b'{"Name":"w","Check":{"TTL":"x"}}', 400, "invalid duration"),
    ("PUT", "/v1/agent/service/deregister/nope", b"", 404, 'Unknown service ID "nope"'),
    ("PUT", "/v1/agent/check/pass/service:nope", b"", 404, 'Unknown check ID "service:nope". Ensure that the check'),
    ("PUT", "/v1/agent/check/update/service:nope", b'{"Status":"passing"}', 404, "Unknown check ID"),
    ("PUT", "/v1/agent/check/pass/serfHealth", b"", 404, 'Unknown check ID "serfHealth"'),
    ("PUT", "/v1/agent/check/register", b'{"TTL":"1s"}', 400, "Missing check name"),
    ("PUT", "/v1/agent/check/register", b'{"Name":"c","TTL":"1s","Status":"ok"}', 400, "Bad check status"),
    ("PUT", "/v1/agent/check/register", b'{"Name":"c"}', 400, "Invalid check: TTL must be > 0"),
    ("PUT", "/v1/agent/check/register", b'{"Name":"c","TTL":"1s","ServiceID":"nope"}', 404,
     'ServiceID "nope" does not exist'),
    ("PUT", "/v1/agent/check/register", b'{"Name":"c","Args":["true"],"Interval":"1s"}', 500,
     "Scripts are disabled on this agent from remote calls; to enable, configure 'enable_script_checks' to true"),
    ("PUT", "/v1/agent/check/register", b'{"Name":"c","Args":["true"],"Interval":"1s","ServiceID":"nope"}', 404,
     "does not exist"),  # Consul looks up the instance before it refuses the script
    ("PUT", "/v1/agent/service/register", b'{"Name":"w","Check":{"Args":["true"],"Interval":"1s"}}', 500,
     "Scripts are disabled on this agent from remote calls"),
    ("PUT", "/v1/agent/check/deregister/nope", b"", 404, 'Unknown check ID "nope"'),
    ("PUT", "/v1/agent/check/deregister/serfHealth", b"", 404, 'Unknown check ID "serfHealth"'),
    ("GET", "/v1/agent/check/register", b"", 405, "method GET not allowed"),
    ("PUT", "/v1/agent/check/update/service:nope", b'{"Status":"fine"}', 400, "Invalid check status"),
    ("PUT", "/v1/agent/check/explode/service:nope", b"", 404, "404 page not found"),
    ("GET", "/v1/health/service/web?index=abc", b"", 400, "Invalid index"),
    ("GET", "/v1/health/service/web?index=1&wait=10", b"", 400, "Invalid wait time"),
    ("GET", "/v1/health/service/web?passing=maybe", b"", 400, "Invalid value for ?passing"),
    ("GET", "/v1/health/service/web?filter=Service.ID%20%3D%3D", b"", 400, "Failed to create boolean expression"),
    ("GET", "/v1/health/state/sad", b"", 400, "Invalid state"),
    ("PUT", "/v1/kv/", b"v", 400, "Missing key name"),
    ("PUT", "/v1/kv/k?cas=x", b"v", 400, "Invalid cas index"),
    ("PUT", "/v1/kv/k?acquire=abc", b"v", 400, "not supported"),
    ("GET", "/v1/nope", b"", 404, "404 page not found"),
    ("POST", "/v1/agent/service/register", b"{}", 405, "method POST not allowed"),
    ("DELETE", "/v1/agent/services", b"", 405, "not allowed"),
])
async def test_consul_like_errors(http: httpx.AsyncClient, method: str, path: str, body: bytes, status: int,
                                  reason: str) -> None:
    r = await http.request(method, path, content=body)
    assert r.status_code == status and reason in r.text
    assert r.headers["content-type"].startswith("text/plain")


async def test_bodies_over_512_kib_are_refused(http: httpx.AsyncClient) -> None:
    r = await http.put("/v1/kv/big", content=b"x" * (MAX_BODY + 1))
    assert r.status_code == 413 and "too large" in r.text

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: refused while reading
        for _ in range(9):
            yield b"x" * 65536

    r = await http.put("/v1/kv/big", content=chunked())
    assert r.status_code == 413
    assert (await http.put("/v1/kv/ok", content=b"x" * MAX_BODY)).json() is True


async def test_check_update_endpoint_sets_status_and_output(http: httpx.AsyncClient) -> None:
    await http.put("/v1/agent/service/register", content=b'{"Name":"web","Check":{"TTL":"10s"}}')
    r = await http.put("/v1/agent/check/update/service:web", content=b'{"Status":"warning","Output":"disk 91%"}')
    assert r.status_code == 200
    check = (await http.get("/v1/agent/checks")).json()["service:web"]
    assert (check["Status"], check["Output"]) == ("warning", "disk 91%")


async def test_blocking_query_returns_the_same_index_at_timeout(http: httpx.AsyncClient) -> None:
    await http.put("/v1/agent/service/register", content=b'{"Name":"web"}')
    index = (await http.get("/v1/health/service/web")).headers["X-Consul-Index"]
    started = time.perf_counter()
    r = await http.get(f"/v1/health/service/web?index={index}&wait=200ms")
    assert 0.19 <= time.perf_counter() - started < 0.2 + 0.2 / 16 + 0.3
    assert r.headers["X-Consul-Index"] == index


async def test_agent_services_filter_and_catalog_only_entries(http: httpx.AsyncClient) -> None:
    await http.put("/v1/agent/service/register", content=b'{"Name":"web","ID":"w1","Meta":{"version":"1"}}')
    await http.put("/v1/agent/service/register", content=b'{"Name":"web","ID":"w2","Meta":{"version":"2"}}')
    assert sorted((await http.get("/v1/agent/services")).json()) == ["w1", "w2"]  # not Consul's own "consul"
    r = await http.get("/v1/agent/services", params={"filter": 'Meta.version == "2"'})
    assert list(r.json()) == ["w2"]
    assert "consul" in (await http.get("/v1/catalog/services")).json()


async def test_ui_health_and_root(http: httpx.AsyncClient) -> None:
    r = await http.get("/ui")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"] and "/v1/agent/services" in r.text
    assert (await http.get("/")).headers["location"] == "/ui/"
    assert (await http.get("/health")).json() == {"status": "UP"}


async def test_lifespan_starts_and_stops_the_check_runner(reg: Registry) -> None:
    app = create_app(reg)
    async with app.router.lifespan_context(app):
        reg.register(*service_registration({"Name": "web", "Check": {"TTL": "50ms"}}))
        reg.update_ttl("service:web", "passing", "")
        deadline = time.monotonic() + 2
        while reg.checks["service:web"].status != "critical":
            assert time.monotonic() < deadline, "TTL never expired"
            await asyncio.sleep(0.01)
    assert reg.checks["service:web"].output == "TTL expired"


@pytest.mark.parametrize(("code", "status"), [(200, "passing"), (204, "passing"), (429, "warning"),
                                              (500, "critical"), (404, "critical")])
async def test_probe_http_maps_status_codes_like_consul(code: int, status: str) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(code, text="body"))
    async with httpx.AsyncClient(transport=transport) as client:
        d = CheckDefinition("c", "c", "s", http="http://svc/health", interval=1, timeout=1)
        got, output = await probe_http(client, d)
    assert got == status and output.startswith(f"HTTP GET http://svc/health: {code} ") and output.endswith("body")


async def test_probe_http_unreachable_is_critical() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
        d = CheckDefinition("c", "c", "s", http="http://svc/health", interval=1, timeout=1)
        assert await probe_http(client, d) == ("critical", 'GET "http://svc/health": ConnectError: connection refused')


WEIRD_BODIES = [b"null", b"[]", b"42", b'"s"', b"\xff\xfe", b'{"Name":5}', b'{"Name":"w","Check":[]}',
                b'{"Name":"w","Checks":{}}', b'{"Name":"w","Checks":[5]}', b'{"Name":"w","Weights":{"Passing":"x"}}',
                b'{"Name":"w","Check":{"HTTP":5,"Interval":"1s"}}', b'{"Name":"w","Check":{"TTL":true}}',
                b'{"Name":"w","Check":{"HTTP":"x","Interval":"1s","Header":{"a":"b"}}}', b'{"Status":null}']


@pytest.mark.parametrize("body", WEIRD_BODIES)
async def test_malformed_bodies_get_a_4xx_never_a_500(http: httpx.AsyncClient, body: bytes) -> None:
    await http.put("/v1/agent/service/register", content=b'{"Name":"ok","Check":{"TTL":"1s"}}')
    for path in ["/v1/agent/service/register", "/v1/agent/check/update/service:ok", "/v1/agent/check/register"]:
        r = await http.put(path, content=body)
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text)


async def test_checks_registered_on_their_own(http: httpx.AsyncClient, reg: Registry) -> None:
    await http.put("/v1/agent/service/register", content=b'{"Name":"web","ID":"web-1","Check":{"TTL":"10s"}}')
    await http.put("/v1/agent/check/pass/service:web-1")
    assert len((await http.get("/v1/health/service/web?passing")).json()) == 1
    # py-consul's body for c.agent.check.register("maint", Check.ttl("30s"), notes="window"): a node check.
    r = await http.put("/v1/agent/check/register", content=b'{"name":"maint","ttl":"30s","notes":"window"}')
    assert r.status_code == 200 and r.text == ""
    maint = (await http.get("/v1/agent/checks")).json()["maint"]
    assert (maint["CheckID"], maint["Name"], maint["Notes"], maint["ServiceID"], maint["ServiceName"],
            maint["Status"], maint["Type"]) == ("maint", "maint", "window", "", "", "critical", "ttl")
    [entry] = (await http.get("/v1/health/service/web")).json()
    assert [c["CheckID"] for c in entry["Checks"]] == ["maint", "serfHealth", "service:web-1"]  # node checks first
    assert (await http.get("/v1/health/service/web?passing")).json() == []  # a critical node check counts
    assert [c["CheckID"] for c in (await http.get("/v1/health/checks/web")).json()] == ["service:web-1"]
    await http.put("/v1/agent/check/pass/maint")
    assert len((await http.get("/v1/health/service/web?passing")).json()) == 1

    r = await http.put("/v1/agent/check/register",
                       content=b'{"Name":"disk","ID":"web-1-disk","ServiceID":"web-1","TTL":"30s"}')
    assert r.status_code == 200
    [entry] = (await http.get("/v1/health/service/web")).json()
    disk = {c["CheckID"]: c for c in entry["Checks"]}["web-1-disk"]
    assert (disk["ServiceID"], disk["ServiceName"]) == ("web-1", "web")
    assert (await http.get("/v1/health/service/web?passing")).json() == []
    assert (await http.put("/v1/agent/check/deregister/web-1-disk")).status_code == 200
    assert (await http.put("/v1/agent/check/deregister/maint")).status_code == 200
    assert sorted((await http.get("/v1/agent/checks")).json()) == ["service:web-1"]
    assert len((await http.get("/v1/health/service/web?passing")).json()) == 1


async def test_a_ttl_update_of_a_probed_check_is_a_500_as_in_consul(http: httpx.AsyncClient) -> None:
    body = b'{"Name":"web","Check":{"HTTP":"http://127.0.0.1:1/","Interval":"10s"}}'
    await http.put("/v1/agent/service/register", content=body)
    r = await http.put("/v1/agent/check/pass/service:web")
    assert r.status_code == 500 and r.text == 'CheckID "service:web" does not have associated TTL'


async def test_health_node_lists_the_node_checks_then_every_service_check(http: httpx.AsyncClient) -> None:
    await http.put("/v1/agent/service/register", content=b'{"Name":"web","ID":"web-1","Check":{"TTL":"10s"}}')
    checks = (await http.get("/v1/health/node/node-1")).json()
    assert [(c["CheckID"], c["ServiceID"]) for c in checks] == [("serfHealth", ""), ("service:web-1", "web-1")]
    serf = checks[0]
    assert (serf["Name"], serf["Status"], serf["Output"], serf["Node"], serf["ServiceName"]) == \
        ("Serf Health Status", "passing", "Agent alive and reachable", "node-1", "")
    assert (await http.get("/v1/health/node/elsewhere")).json() == []


async def test_agent_self_has_consuls_keys_and_agrees_with_status(http: httpx.AsyncClient) -> None:
    await http.put("/v1/agent/service/register", content=b'{"Name":"web","Check":{"TTL":"10s"}}')
    me = (await http.get("/v1/agent/self")).json()
    assert set(me) == {"Config", "DebugConfig", "Coord", "Member", "Stats", "Meta", "xDS"}
    assert (me["Config"]["NodeName"], me["Config"]["Datacenter"], me["Config"]["Server"]) == ("node-1", "dc1", True)
    assert me["Member"]["Name"] == "node-1" and me["Member"]["Status"] == 1 and me["Member"]["Tags"]["dc"] == "dc1"
    leader = (await http.get("/v1/status/leader")).json()
    assert me["Stats"]["consul"]["leader"] == "true" and me["Stats"]["consul"]["leader_addr"] == leader
    assert (await http.get("/v1/status/peers")).json() == [leader]
    assert me["Stats"]["agent"]["services"] == "1" and me["Stats"]["agent"]["checks"] == "1"
    assert int(me["Stats"]["raft"]["last_log_index"]) == int((await http.get("/v1/catalog/services"))
                                                              .headers["X-Consul-Index"])
    assert me["DebugConfig"]["EnableRemoteScriptChecks"] is False and me["DebugConfig"]["DevMode"] is True
    assert len(me["Coord"]["Vec"]) == 8 and me["Meta"]["consul-version"] == me["Config"]["Version"]
    assert me["xDS"]["SupportedProxies"] == {"envoy": []}  # no xDS server here
