"""The Consul-API contract, driven through the stock py-consul clients (sync and consul.aio).

Runs against a real `python -m msa_discovery` process, or against a real Consul when CONSUL_HTTP_ADDR is set:
    CONSUL_HTTP_ADDR=127.0.0.1:8500 .venv/bin/python -m pytest discovery/tests -m integration
Each test uses its own service name and cleans up after itself, so a shared Consul stays usable.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import consul
import consul.aio
import httpx
import pytest
from consul import Check

if TYPE_CHECKING:  # conftest is not importable under --import-mode=importlib; the fixture provides it
    from conftest import Agent

pytestmark = pytest.mark.integration


def wait_until(fn: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (result := fn()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return result


async def await_until(fn: Callable[[], Awaitable[Any]], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (result := await fn()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return result


def service_checks(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The instance's own checks (not node checks such as serfHealth), by id."""
    return {ch["CheckID"]: ch for ch in entry["Checks"] if ch["ServiceID"]}


def ids(nodes: list[dict[str, Any]]) -> list[str]:
    return sorted(n["Service"]["ID"] for n in nodes)


# -- registration ------------------------------------------------------------------------------------------------

def test_register_with_tags_and_meta(c: consul.Consul, name: str, cleanup: list[str]) -> None:
    sid = f"{name}-1"
    cleanup += [sid, name]
    assert c.agent.service.register(name, service_id=sid, address="127.0.0.2", port=8081, tags=["blue", "v1"],
                                    meta={"version": "1"}, check=Check.ttl("10s")) is True

    svc = c.agent.services()[sid]
    assert (svc["Service"], svc["Address"], svc["Port"]) == (name, "127.0.0.2", 8081)
    assert svc["Tags"] == ["blue", "v1"] and svc["Meta"] == {"version": "1"}

    index, nodes = c.health.service(name)
    assert int(index) > 0
    [entry] = nodes
    assert entry["Service"]["ID"] == sid and entry["Service"]["Meta"] == {"version": "1"}
    assert entry["Node"]["Node"] and entry["Node"]["Address"]
    check = service_checks(entry)[f"service:{sid}"]
    assert check["Status"] == "critical"  # Consul: a new check is critical until it reports
    assert c.health.service(name, passing=True)[1] == []

    # Re-registering the same id replaces the definition.
    c.agent.service.register(name, service_id=sid, port=9090, tags=["green"], check=Check.ttl("10s"))
    svc = c.agent.services()[sid]
    assert (svc["Port"], svc["Tags"]) == (9090, ["green"])

    # Without an id, the id is the name.
    c.agent.service.register(name, port=1)
    assert c.agent.services()[name]["Service"] == name


def test_ttl_pass_warn_fail(c: consul.Consul, name: str, cleanup: list[str]) -> None:
    sid = f"{name}-1"
    cleanup.append(sid)
    c.agent.service.register(name, service_id=sid, port=80, check=Check.ttl("10s"))
    cid = f"service:{sid}"

    assert c.agent.check.ttl_pass(cid, "all good") is True
    [entry] = c.health.service(name, passing=True)[1]
    assert service_checks(entry)[cid]["Output"] == "all good"

    assert c.agent.check.ttl_warn(cid, "slow") is True
    assert c.health.service(name, passing=True)[1] == []  # warning is not passing
    assert c.agent.checks()[cid]["Status"] == "warning"

    assert c.agent.check.ttl_fail(cid) is True
    assert c.agent.checks()[cid]["Status"] == "critical"


async def test_ttl_expiry_turns_critical(ac: consul.aio.Consul, name: str, cleanup: list[str]) -> None:
    sid = f"{name}-1"
    cleanup.append(sid)
    await ac.agent.service.register(name, service_id=sid, port=80, check=Check.ttl("1s"))
    await ac.agent.check.ttl_pass(f"service:{sid}")
    assert ids((await ac.health.service(name, passing=True))[1]) == [sid]

    async def expired() -> bool:
        checks = (await ac.health.checks(name))[1]
        return bool(checks) and checks[0]["Status"] == "critical"

    await await_until(expired, timeout=5, what="TTL expiry")
    [check] = (await ac.health.checks(name))[1]
    assert check["Output"].startswith("TTL expired")
    assert (await ac.health.service(name, passing=True))[1] == []


# -- HTTP checks -------------------------------------------------------------------------------------------------

class _Target(ThreadingHTTPServer):
    status = 200


class _Handler(BaseHTTPRequestHandler):
    server: _Target

    def do_GET(self) -> None:  # noqa: N802
        body = f"answering {self.server.status}".encode()
        self.send_response(self.server.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def target() -> Iterator[_Target]:
    """A tiny HTTP server whose answer the test sets (200, 500, 429...)."""
    server = _Target(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


async def test_http_check_follows_the_target(ac: consul.aio.Consul, name: str, cleanup: list[str],
                                             target: _Target) -> None:
    sid = f"{name}-1"
    cleanup.append(sid)
    url = f"http://127.0.0.1:{target.server_address[1]}/health"
    # 300ms keeps this test quick with ours; Consul raises intervals below 1s to 1s, which only makes it slower.
    await ac.agent.service.register(name, service_id=sid, port=target.server_address[1],
                                    check=Check.http(url, "300ms", timeout="1s"))

    async def status_is(expected: str) -> bool:
        checks = (await ac.health.checks(name))[1]
        return bool(checks) and checks[0]["Status"] == expected

    target.status = 200
    await await_until(lambda: status_is("passing"), what="passing on 200")
    assert ids((await ac.health.service(name, passing=True))[1]) == [sid]

    target.status = 500
    await await_until(lambda: status_is("critical"), what="critical on 500")
    [check] = (await ac.health.checks(name))[1]
    assert "500" in check["Output"] and check["Type"] == "http"
    assert (await ac.health.service(name, passing=True))[1] == []

    target.status = 429
    await await_until(lambda: status_is("warning"), what="warning on 429")

    target.status = 200
    await await_until(lambda: status_is("passing"), what="passing again")


# -- several checks, deregistration, reaping ---------------------------------------------------------------------

def test_several_checks_all_must_pass(c: consul.Consul, name: str, cleanup: list[str]) -> None:
    sid = f"{name}-1"
    cleanup.append(sid)
    c.agent.service.register(name, service_id=sid, port=80, check=Check.ttl("10s"), extra_checks=[Check.ttl("10s")])
    first, second = f"service:{sid}:1", f"service:{sid}:2"
    agent_checks = c.agent.checks()
    assert agent_checks[first]["ServiceID"] == agent_checks[second]["ServiceID"] == sid

    c.agent.check.ttl_pass(first)
    assert c.health.service(name, passing=True)[1] == []
    c.agent.check.ttl_pass(second)
    assert ids(c.health.service(name, passing=True)[1]) == [sid]


def test_deregister(c: consul.Consul, name: str) -> None:
    sid = f"{name}-1"
    c.agent.service.register(name, service_id=sid, port=80, check=Check.ttl("10s"))
    assert c.agent.service.deregister(sid) is True
    assert sid not in c.agent.services()
    assert f"service:{sid}" not in c.agent.checks()
    assert c.health.service(name)[1] == []
    assert c.health.checks(name)[1] == []
    assert c.agent.service.deregister(sid) is False  # unknown id: 404, which py-consul turns into False


async def test_reap_after_deregister_critical_service_after(ac: consul.aio.Consul, agent: Agent, name: str,
                                                            cleanup: list[str]) -> None:
    doomed, healthy = f"{name}-doomed", f"{name}-healthy"
    cleanup.append(healthy)
    reap = {**Check.ttl("10s"), "DeregisterCriticalServiceAfter": "1s"}
    if agent.real_consul:
        # Consul enforces a 1-minute minimum and reaps every 30 s (documented): a critical instance registered
        # with 1s is still there seconds later. Ours honours any duration, so 1s keeps the test below short.
        cleanup.append(doomed)
        await ac.agent.service.register(name, service_id=doomed, port=1, check=reap)
        await asyncio.sleep(3)
        assert doomed in await ac.agent.services()
        return
    await ac.agent.service.register(name, service_id=doomed, port=1, check=reap)
    await ac.agent.service.register(name, service_id=healthy, port=2, check={**reap, "Status": "passing"})

    async def reaped() -> bool:
        return doomed not in await ac.agent.services()

    started = time.monotonic()
    await await_until(reaped, timeout=5, what="the critical instance to be reaped")
    assert time.monotonic() - started >= 0.5
    assert ids((await ac.health.service(name))[1]) == [healthy]
    # A reaped instance's heartbeat fails, which tells its client to register again.
    assert await ac.agent.check.ttl_pass(f"service:{doomed}") is False


# -- KV ----------------------------------------------------------------------------------------------------------

def test_kv_put_get_cas_recurse_keys_delete(c: consul.Consul, agent: Agent, name: str, cleanup: list[str]) -> None:
    k = f"{name}/a"
    assert c.kv.put(k, "1") is True
    index, e = c.kv.get(k)
    assert e["Key"] == k and e["Value"] == b"1" and e["Flags"] == 0 and e["CreateIndex"] == e["ModifyIndex"]
    assert int(index) >= e["ModifyIndex"]

    assert c.kv.put(k, "2", cas=0) is False  # cas=0: only if absent
    assert c.kv.put(k, "2", cas=e["ModifyIndex"] + 1000) is False
    assert c.kv.put(k, "2", cas=e["ModifyIndex"]) is True
    _, e2 = c.kv.get(k)
    assert e2["Value"] == b"2" and e2["ModifyIndex"] > e["ModifyIndex"] and e2["CreateIndex"] == e["CreateIndex"]

    assert c.kv.put(f"{name}/b/c", b"\x00\xff", flags=42) is True
    assert c.kv.put(f"{name}/b/d", None) is True
    _, entries = c.kv.get(f"{name}/", recurse=True)
    assert [x["Key"] for x in entries] == [k, f"{name}/b/c", f"{name}/b/d"]
    assert entries[1]["Value"] == b"\x00\xff" and entries[1]["Flags"] == 42
    assert entries[2]["Value"] is None  # an empty value is null, not ""
    assert c.kv.get(f"{name}/", keys=True)[1] == [k, f"{name}/b/c", f"{name}/b/d"]
    assert c.kv.get(f"{name}/", keys=True, separator="/")[1] == [k, f"{name}/b/"]
    assert httpx.get(f"{agent.url}/v1/kv/{name}/b/c?raw").content == b"\x00\xff"

    assert c.kv.delete(k, cas=e["ModifyIndex"]) is False  # stale index
    assert c.kv.delete(k, cas=e2["ModifyIndex"]) is True
    index, missing = c.kv.get(k)
    assert missing is None and int(index) > 0  # a 404 still carries X-Consul-Index
    assert c.kv.delete(f"{name}/b/", recurse=True) is True
    assert c.kv.get(f"{name}/", recurse=True)[1] is None


# -- catalog, agent, status --------------------------------------------------------------------------------------

def test_catalog(c: consul.Consul, name: str, cleanup: list[str]) -> None:
    sid = f"{name}-1"
    cleanup.append(sid)
    c.agent.service.register(name, service_id=sid, address="127.0.0.3", port=7000, tags=["x"], meta={"m": "1"})
    index, services = c.catalog.services()
    assert int(index) > 0 and services[name] == ["x"]
    _, [row] = c.catalog.service(name)
    assert (row["ServiceID"], row["ServiceName"], row["ServiceAddress"], row["ServicePort"]) == \
        (sid, name, "127.0.0.3", 7000)
    assert row["ServiceTags"] == ["x"] and row["ServiceMeta"] == {"m": "1"} and row["Node"] and row["Address"]
    assert c.catalog.service(name, tag="nope")[1] == []


def test_health_checks_and_state(c: consul.Consul, name: str, cleanup: list[str]) -> None:
    sid = f"{name}-1"
    cleanup.append(sid)
    c.agent.service.register(name, service_id=sid, port=80, check=Check.ttl("10s"))
    cid = f"service:{sid}"
    [check] = c.health.checks(name)[1]
    assert (check["CheckID"], check["ServiceName"], check["Status"]) == (cid, name, "critical")
    assert cid in {x["CheckID"] for x in c.health.state("critical")[1]}
    c.agent.check.ttl_pass(cid)
    assert cid in {x["CheckID"] for x in c.health.state("passing")[1]}
    assert cid in {x["CheckID"] for x in c.health.state("any")[1]}


def test_tag_and_filter_queries(c: consul.Consul, name: str, cleanup: list[str]) -> None:
    blue, green = f"{name}-blue", f"{name}-green"
    cleanup += [blue, green]
    c.agent.service.register(name, service_id=blue, port=1, tags=["blue"], meta={"version": "1"})
    c.agent.service.register(name, service_id=green, port=2, tags=["green", "canary"], meta={"version": "2"})
    assert ids(c.health.service(name, tag="blue")[1]) == [blue]
    assert ids(c.health.service(name, tag=["green", "canary"])[1]) == [green]
    assert ids(c.health.service(name, filter_expr='Service.Meta.version == "2"')[1]) == [green]
    assert ids(c.health.service(name, filter_expr='"blue" in Service.Tags')[1]) == [blue]


# -- errors ------------------------------------------------------------------------------------------------------

def test_errors_for_unknown_checks_and_bad_requests(c: consul.Consul, agent: Agent, name: str) -> None:
    # py-consul turns the 404 into False: the client's cue to register again.
    assert c.agent.check.ttl_pass(f"service:{name}-missing") is False
    r = httpx.put(f"{agent.url}/v1/agent/check/pass/service:{name}-missing")
    assert r.status_code == 404 and f'Unknown check ID "service:{name}-missing"' in r.text
    r = httpx.put(f"{agent.url}/v1/agent/service/register", content=b"{}")
    assert r.status_code == 400 and "Missing service name" in r.text
    r = httpx.put(f"{agent.url}/v1/agent/service/register", content=b"{not json")
    assert r.status_code == 400 and "Request decode failed" in r.text
    with pytest.raises(consul.ConsulException):
        c.agent.service.register(name, check={"interval": "10s"})  # neither TTL nor HTTP: Invalid check


# -- blocking queries --------------------------------------------------------------------------------------------

async def test_blocking_query_wakes_on_change(ac: consul.aio.Consul, name: str, cleanup: list[str]) -> None:
    sid = f"{name}-1"
    cleanup.append(sid)
    await ac.agent.service.register(name, service_id=sid, port=80, check=Check.ttl("10s"))
    index, _ = await ac.health.service(name)
    watcher = asyncio.create_task(ac.health.service(name, index=index, wait="5s"))
    await asyncio.sleep(0.3)
    assert not watcher.done()  # parked: nothing changed yet

    started = time.perf_counter()
    await ac.agent.check.ttl_pass(f"service:{sid}")
    new_index, nodes = await asyncio.wait_for(watcher, 5)
    latency = time.perf_counter() - started
    print(f"\nblocking query woke {latency * 1000:.1f} ms after the change was sent")
    assert int(new_index) > int(index)
    assert service_checks(nodes[0])[f"service:{sid}"]["Status"] == "passing"
    assert latency < 1.0


def test_blocking_query_times_out_with_the_same_index(c: consul.Consul, name: str, cleanup: list[str]) -> None:
    sid = f"{name}-1"
    cleanup.append(sid)
    c.agent.service.register(name, service_id=sid, port=80, check=Check.ttl("10s"))
    index, _ = c.health.service(name)
    started = time.monotonic()
    again, _ = c.health.service(name, index=index, wait="1s")
    elapsed = time.monotonic() - started
    assert again == index
    assert 0.9 <= elapsed < 1.0 + 1 / 16 + 0.5  # the wait, plus at most wait/16 of jitter, plus slack


async def test_the_calls_our_services_make(ac: consul.aio.Consul, name: str, cleanup: list[str]) -> None:
    """Exactly what the sandbox's services do: register with a TTL check, heartbeat, watch, deregister."""
    sid = f"{name}-8101"
    cleanup.append(sid)
    check = {**consul.Check.ttl("10s"), "DeregisterCriticalServiceAfter": "1m"}
    assert await ac.agent.service.register(name, service_id=sid, address="127.0.0.1", port=8101, tags=["v1"],
                                           meta={"version": "1.0"}, check=check) is True
    index, nodes = await ac.health.service(name, passing=True)
    assert nodes == []

    watcher = asyncio.create_task(ac.health.service(name, passing=True, index=index, wait="30s"))
    await asyncio.sleep(0.1)
    assert await ac.agent.check.ttl_pass(f"service:{sid}") is True
    index2, nodes = await asyncio.wait_for(watcher, 5)
    [node] = nodes
    assert (node["Service"]["ID"], node["Service"]["Address"], node["Service"]["Port"]) == (sid, "127.0.0.1", 8101)
    assert node["Service"]["Meta"] == {"version": "1.0"} and node["Service"]["Tags"] == ["v1"]

    watcher = asyncio.create_task(ac.health.service(name, passing=True, index=index2, wait="30s"))
    await asyncio.sleep(0.1)
    assert await ac.agent.service.deregister(sid) is True
    index3, nodes = await asyncio.wait_for(watcher, 5)
    assert nodes == [] and int(index3) > int(index2)
    assert await ac.agent.check.ttl_pass(f"service:{sid}") is False  # gone: the client should re-register


# -- checks registered on their own: PUT /v1/agent/check/register, /v1/agent/check/deregister/:check_id ----------
# Consul's API docs (agent/check): the body is a check definition; `Name` is required, `ID` defaults to the name,
# `Notes` is kept for people, `ServiceID` ties the check to a registered service instance, and without one the check
# belongs to the node. Script checks (`Args`) need enable_script_checks, which is off by default (and in -dev).

def test_register_a_node_check_the_way_the_py_consul_docs_do(c: consul.Consul, name: str,
                                                            check_cleanup: list[str]) -> None:
    check_cleanup.append(name)
    assert c.agent.check.register(name, Check.ttl("1s"), notes="foo") is True
    check = c.agent.checks()[name]  # keyed by its CheckID, which defaulted to the name
    assert (check["CheckID"], check["Name"], check["Notes"]) == (name, name, "foo")
    assert (check["ServiceID"], check["ServiceName"], check["Type"]) == ("", "", "ttl")
    assert check["Status"] == "critical"  # a new check is critical until it reports

    # An explicit check_id wins over the name.
    check_cleanup.append(f"{name}-mem")
    assert c.agent.check.register("Memory utilization", Check.ttl("30s"), check_id=f"{name}-mem") is True
    check = c.agent.checks()[f"{name}-mem"]
    assert (check["CheckID"], check["Name"]) == (f"{name}-mem", "Memory utilization")
    assert c.agent.check.ttl_warn(f"{name}-mem", "92% used") is True
    assert (c.agent.checks()[f"{name}-mem"]["Status"], c.agent.checks()[f"{name}-mem"]["Output"]) == \
        ("warning", "92% used")

    assert c.agent.check.deregister(name) is True
    assert name not in c.agent.checks()
    assert c.agent.check.deregister(name) is False  # gone: a 404, which py-consul turns into False
    assert c.agent.check.ttl_pass(name) is False


def test_a_node_check_bears_on_every_instance_of_the_node(c: consul.Consul, name: str, cleanup: list[str],
                                                         check_cleanup: list[str]) -> None:
    sid, maint = f"{name}-1", f"{name}-maint"
    cleanup.append(sid)
    c.agent.service.register(name, service_id=sid, port=80, check=Check.ttl("30s"))
    c.agent.check.ttl_pass(f"service:{sid}")
    assert ids(c.health.service(name, passing=True)[1]) == [sid]

    check_cleanup.append(maint)
    c.agent.check.register("maintenance window", Check.ttl("30s"), check_id=maint)
    [entry] = c.health.service(name)[1]
    node_checks = {ch["CheckID"]: ch for ch in entry["Checks"] if not ch["ServiceID"]}
    assert node_checks[maint]["Status"] == "critical" and node_checks[maint]["Node"] == entry["Node"]["Node"]
    assert c.health.service(name, passing=True)[1] == []  # the instance's own check passes, its node's does not
    assert maint not in {ch["CheckID"] for ch in c.health.checks(name)[1]}  # that one lists the service's checks

    assert c.agent.check.ttl_pass(maint) is True
    assert ids(c.health.service(name, passing=True)[1]) == [sid]
    assert c.agent.check.deregister(maint) is True
    [entry] = c.health.service(name)[1]
    assert maint not in {ch["CheckID"] for ch in entry["Checks"]}


async def test_register_a_check_for_a_service_instance(ac: consul.aio.Consul, name: str, cleanup: list[str],
                                                      check_cleanup: list[str]) -> None:
    sid, disk = f"{name}-1", f"{name}-1-disk"
    cleanup.append(sid)
    await ac.agent.service.register(name, service_id=sid, port=80, check=Check.ttl("30s"))
    await ac.agent.check.ttl_pass(f"service:{sid}")
    index, nodes = await ac.health.service(name, passing=True)
    assert ids(nodes) == [sid]

    # A watcher of the service is woken by the new check, which (critical) takes the instance out of passing.
    watcher = asyncio.create_task(ac.health.service(name, passing=True, index=index, wait="10s"))
    await asyncio.sleep(0.1)
    check_cleanup.append(disk)
    assert await ac.agent.check.register("disk", Check.ttl("30s"), check_id=disk, service_id=sid,
                                         notes="free space") is True
    new_index, nodes = await asyncio.wait_for(watcher, 5)
    assert nodes == [] and int(new_index) > int(index)

    [entry] = (await ac.health.service(name))[1]
    check = service_checks(entry)[disk]
    assert (check["ServiceID"], check["ServiceName"], check["Name"], check["Notes"], check["Status"]) == \
        (sid, name, "disk", "free space", "critical")
    assert disk in {ch["CheckID"] for ch in (await ac.health.checks(name))[1]}
    assert (await ac.agent.checks())[disk]["ServiceID"] == sid

    await ac.agent.check.ttl_pass(disk)
    assert ids((await ac.health.service(name, passing=True))[1]) == [sid]
    await ac.agent.check.ttl_fail(disk, "disk full")
    assert (await ac.health.service(name, passing=True))[1] == []
    assert await ac.agent.check.deregister(disk) is True
    [entry] = (await ac.health.service(name, passing=True))[1]  # only its own check is left, and it passes
    assert disk not in service_checks(entry)

    # For an instance that is not registered: a 404 (False). A check registered for an instance goes with it.
    assert await ac.agent.check.register("disk", Check.ttl("30s"), check_id=disk, service_id=f"{name}-nope") is False
    assert await ac.agent.check.register("disk", Check.ttl("30s"), check_id=disk, service_id=sid) is True
    assert await ac.agent.service.deregister(sid) is True
    assert disk not in await ac.agent.checks()


def test_script_checks_are_refused_as_with_enable_script_checks_off(c: consul.Consul, name: str,
                                                                    check_cleanup: list[str]) -> None:
    # Consul's default (and -dev's): enable_script_checks = false. The check is validated, then refused with a 500.
    check_cleanup.append(name)
    with pytest.raises(consul.ConsulException, match="Scripts are disabled on this agent"):
        c.agent.check.register(name, Check.script(["/bin/true"], "10s"))
    assert name not in c.agent.checks()
    with pytest.raises(consul.ConsulException, match="Scripts are disabled on this agent"):
        c.agent.service.register(name, service_id=f"{name}-1", port=80, check=Check.script(["/bin/true"], "10s"))
    assert f"{name}-1" not in c.agent.services()  # nothing of the registration is kept


async def test_script_checks_are_refused_aio(ac: consul.aio.Consul, name: str, check_cleanup: list[str]) -> None:
    check_cleanup.append(name)
    with pytest.raises(consul.ConsulException, match="Scripts are disabled on this agent"):
        await ac.agent.check.register(name, Check.script(["/bin/true"], "10s"))
    assert name not in await ac.agent.checks()


# -- the node's own check: serfHealth ---------------------------------------------------------------------------
# Consul's servers keep, for every node, the check "serfHealth" ("Serf Health Status"), passing while the node's
# agent is alive in gossip. It belongs to the node (ServiceID ""), so the health endpoints list it beside each
# instance's checks and ?passing counts it; it is not one of the agent's checks (/v1/agent/checks).

def serf_health(checks: list[dict[str, Any]]) -> dict[str, Any]:
    [serf] = [ch for ch in checks if ch["CheckID"] == "serfHealth"]
    return serf


def test_every_instance_carries_its_nodes_serf_health_check(c: consul.Consul, name: str, cleanup: list[str]) -> None:
    node_name = c.agent.self()["Config"]["NodeName"]
    sids = [f"{name}-1", f"{name}-2"]
    cleanup += sids
    for sid in sids:
        c.agent.service.register(name, service_id=sid, port=80, check=Check.ttl("30s"))
    for entry in c.health.service(name)[1]:
        serf = serf_health(entry["Checks"])
        assert (serf["Name"], serf["Status"], serf["Output"]) == \
            ("Serf Health Status", "passing", "Agent alive and reachable")
        assert (serf["ServiceID"], serf["ServiceName"], serf["Node"]) == ("", "", node_name)
        assert entry["Node"]["Node"] == node_name
        assert {ch["CheckID"] for ch in entry["Checks"] if ch["ServiceID"]} == {f"service:{entry['Service']['ID']}"}

    # ?passing: every check must pass, serfHealth included (it does), so the instance that reported is listed.
    assert c.health.service(name, passing=True)[1] == []
    c.agent.check.ttl_pass(f"service:{sids[0]}")
    [entry] = c.health.service(name, passing=True)[1]
    assert entry["Service"]["ID"] == sids[0] and all(ch["Status"] == "passing" for ch in entry["Checks"])
    assert serf_health(entry["Checks"])["Status"] == "passing"

    # The service's own checks, and the agent's, do not include it; the agent cannot update or remove it.
    assert "serfHealth" not in {ch["CheckID"] for ch in c.health.checks(name)[1]}
    assert "serfHealth" not in c.agent.checks()
    assert c.agent.check.ttl_pass("serfHealth") is False
    assert c.agent.check.deregister("serfHealth") is False


async def test_serf_health_in_the_node_and_state_endpoints(ac: consul.aio.Consul, name: str,
                                                           cleanup: list[str]) -> None:
    node_name = (await ac.agent.self())["Config"]["NodeName"]
    sid = f"{name}-1"
    cleanup.append(sid)
    await ac.agent.service.register(name, service_id=sid, port=80, check=Check.ttl("30s"))
    index, checks = await ac.health.node(node_name)
    assert int(index) > 0
    serf = serf_health(checks)
    assert (serf["Name"], serf["Status"], serf["ServiceID"], serf["Node"]) == \
        ("Serf Health Status", "passing", "", node_name)
    assert f"service:{sid}" in {ch["CheckID"] for ch in checks}
    assert "serfHealth" in {ch["CheckID"] for ch in (await ac.health.state("passing"))[1]}
    [entry] = (await ac.health.service(name))[1]
    assert serf_health(entry["Checks"])["Status"] == "passing"
    assert (await ac.health.node(f"{name}-no-such-node"))[1] == []


# -- /v1/agent/self ------------------------------------------------------------------------------------------------
# Consul's API docs (agent/self): the agent's configuration and member information, as Config, DebugConfig, Coord,
# Member, Stats, Meta and xDS; Stats.consul.leader_addr is the raft leader that /v1/status/leader reports.

SELF_KEYS = {"Config", "DebugConfig", "Coord", "Member", "Stats", "Meta", "xDS"}


def check_self(me: dict[str, Any], leader: str, peers: list[str], datacenters: list[str],
               node_names: list[str]) -> None:
    assert SELF_KEYS <= set(me)
    config, member, stats = me["Config"], me["Member"], me["Stats"]
    assert config["NodeName"] and member["Name"] == config["NodeName"] and config["NodeName"] in node_names
    assert config["Datacenter"] in datacenters and config["NodeID"] and config["Server"] is True
    major, minor, *_ = config["Version"].split(".")
    assert major.isdigit() and minor.isdigit()
    assert member["Status"] == 1 and member["Tags"]["dc"] == config["Datacenter"] and member["Tags"]["role"] == "consul"
    assert member["Addr"] and isinstance(member["Port"], int)
    assert stats["consul"]["server"] == "true" and stats["consul"]["leader"] == "true"
    assert stats["consul"]["leader_addr"] == leader and leader in peers
    assert {"agent", "build"} <= set(stats) and config["Version"].startswith(stats["build"]["version"])
    assert me["DebugConfig"]["Datacenter"] == config["Datacenter"]
    assert me["DebugConfig"]["EnableRemoteScriptChecks"] is False  # why script checks are refused
    assert isinstance(me["Coord"]["Vec"], list) and isinstance(me["Meta"], dict)
    assert isinstance(me["xDS"]["SupportedProxies"], dict)


def test_agent_self_and_status(c: consul.Consul) -> None:
    leader = c.status.leader()
    assert isinstance(leader, str) and ":" in leader
    me = c.agent.self()
    check_self(me, leader, c.status.peers(), c.catalog.datacenters(), [n["Node"] for n in c.catalog.nodes()[1]])
    [alive] = [m for m in c.agent.members() if m["Name"] == me["Config"]["NodeName"]]
    assert alive["Status"] == 1 and alive["Tags"]["role"] == "consul"


async def test_agent_self_and_status_aio(ac: consul.aio.Consul, name: str, cleanup: list[str]) -> None:
    me = await ac.agent.self()
    check_self(me, await ac.status.leader(), await ac.status.peers(), await ac.catalog.datacenters(),
               [n["Node"] for n in (await ac.catalog.nodes())[1]])
    # What a client reads from here matches what the health endpoints say about the node.
    sid = f"{name}-1"
    cleanup.append(sid)
    await ac.agent.service.register(name, service_id=sid, port=80)
    [entry] = (await ac.health.service(name))[1]
    assert (entry["Node"]["Node"], entry["Node"]["Datacenter"]) == \
        (me["Config"]["NodeName"], me["Config"]["Datacenter"])
