"""The registry state machine on its own: no network, a fake clock."""

from __future__ import annotations

import asyncio
import time

import pytest

from msa_discovery.registry import (
    CRITICAL, PASSING, WARNING, CheckDefinition, Node, NotATTLCheck, Registry, ServiceDefinition, UnknownCheck,
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reg(clock: Clock) -> Registry:
    return Registry(Node("node-1", "id-1", "127.0.0.1"), clock)


def svc(sid: str, name: str = "web", **kw: object) -> ServiceDefinition:
    return ServiceDefinition(id=sid, name=name, **kw)  # type: ignore[arg-type]


def ttl(sid: str, seconds: float = 10, suffix: str = "", **kw: object) -> CheckDefinition:
    return CheckDefinition(f"service:{sid}{suffix}", "check", sid, ttl=seconds, **kw)  # type: ignore[arg-type]


def status(reg: Registry, check_id: str) -> str:
    return reg.checks[check_id].status


def test_fresh_registry_looks_like_a_fresh_consul_server(reg: Registry) -> None:
    assert reg.catalog() == {"consul": []}
    assert [c.id for c in reg.node_checks()] == ["serfHealth"]
    assert reg.index >= 1


def test_new_checks_start_critical_and_ttl_updates_move_them(reg: Registry) -> None:
    reg.register(svc("web-1"), [ttl("web-1")])
    [entry] = reg.health("web")
    assert status(reg, "service:web-1") == CRITICAL and not entry.passing
    reg.update_ttl("service:web-1", PASSING, "ok")
    assert reg.health("web")[0].passing and reg.checks["service:web-1"].output == "ok"
    reg.update_ttl("service:web-1", WARNING, "")
    assert not reg.health("web")[0].passing  # passing means every check passing; warning is not


def test_initial_status_can_be_given(reg: Registry) -> None:
    reg.register(svc("web-1"), [ttl("web-1", initial_status=PASSING)])
    assert reg.health("web")[0].passing


def test_unknown_or_non_ttl_checks_cannot_be_updated(reg: Registry) -> None:
    with pytest.raises(UnknownCheck, match='Unknown check ID "service:nope". Ensure that the check ID is passed'):
        reg.update_ttl("service:nope", PASSING, "")
    http = CheckDefinition("service:web-1", "c", "web-1", http="http://x/", interval=1)
    reg.register(svc("web-1"), [http])
    with pytest.raises(NotATTLCheck, match='CheckID "service:web-1" does not have associated TTL'):
        reg.update_ttl("service:web-1", PASSING, "")
    with pytest.raises(UnknownCheck):  # the catalog's serfHealth is not the agent's to update
        reg.update_ttl("serfHealth", PASSING, "")


def test_ttl_expiry(reg: Registry, clock: Clock) -> None:
    reg.register(svc("web-1"), [ttl("web-1", 10)])
    reg.update_ttl("service:web-1", PASSING, "")
    clock.advance(9.9)
    assert reg.tick() == pytest.approx(clock.t + 0.1)  # next deadline: the TTL
    assert status(reg, "service:web-1") == PASSING
    clock.advance(0.1)
    reg.tick()
    assert status(reg, "service:web-1") == CRITICAL
    assert reg.checks["service:web-1"].output == "TTL expired"
    reg.update_ttl("service:web-1", PASSING, "serving")
    clock.advance(10)
    reg.tick()
    assert reg.checks["service:web-1"].output == "TTL expired (last output before timeout follows): serving"


def test_heartbeats_that_change_nothing_do_not_bump_the_index(reg: Registry) -> None:
    reg.register(svc("web-1"), [ttl("web-1")])
    reg.update_ttl("service:web-1", PASSING, "")
    before = reg.index
    for _ in range(3):
        reg.update_ttl("service:web-1", PASSING, "")
    assert reg.index == before  # otherwise every heartbeat would wake every watcher


def test_indexes_are_monotonic_and_per_service(reg: Registry) -> None:
    reg.register(svc("web-1"), [ttl("web-1")])
    reg.register(svc("api-1", "api"), [ttl("api-1")])
    web, api = reg.service_index("web"), reg.service_index("api")
    assert api > web
    reg.update_ttl("service:api-1", PASSING, "")
    assert reg.service_index("web") == web and reg.service_index("api") > api  # api's change leaves web's watchers be
    assert reg.table_index("services") < reg.table_index("checks")  # status changes don't touch the services table


def test_missing_service_reports_the_extinction_index(reg: Registry) -> None:
    reg.register(svc("web-1"), [])
    reg.deregister("web-1")
    extinct = reg.service_index("web")
    assert extinct == reg.index and reg.service_index("never-seen") == extinct
    reg.register(svc("web-2"), [])
    assert reg.service_index("web") > extinct  # so a watcher of a missing name wakes when it appears


def test_reregistration_replaces_but_keeps_check_state(reg: Registry) -> None:
    reg.register(svc("web-1", port=1), [ttl("web-1")])
    reg.update_ttl("service:web-1", PASSING, "fine")
    created = reg.services["web-1"].create_index
    reg.register(svc("web-1", port=2, tags=("new",)), [ttl("web-1")])
    s = reg.services["web-1"]
    assert (s.definition.port, s.definition.tags, s.create_index) == (2, ("new",), created)
    assert status(reg, "service:web-1") == PASSING and reg.checks["service:web-1"].output == "fine"


def test_replace_existing_checks(reg: Registry) -> None:
    reg.register(svc("web-1"), [ttl("web-1", suffix=":1"), ttl("web-1", suffix=":2")])
    reg.register(svc("web-1"), [ttl("web-1", suffix=":1")])
    assert {c.id for c in reg.service_checks("web-1")} == {"service:web-1:1", "service:web-1:2"}
    reg.register(svc("web-1"), [ttl("web-1", suffix=":1")], replace_existing_checks=True)
    assert {c.id for c in reg.service_checks("web-1")} == {"service:web-1:1"}


def test_deregister_removes_service_and_checks(reg: Registry) -> None:
    reg.register(svc("web-1"), [ttl("web-1")])
    assert reg.deregister("web-1") is True
    assert "web-1" not in reg.services and "service:web-1" not in reg.checks
    assert reg.deregister("web-1") is False
    assert reg.deregister("consul") is False  # catalog-only, not the agent's to remove


def test_reaping_after_deregister_critical_service_after(reg: Registry, clock: Clock) -> None:
    reg.register(svc("web-1"), [ttl("web-1", 60, deregister_after=5)])
    reg.register(svc("web-2"), [ttl("web-2", 60, deregister_after=5)])
    reg.update_ttl("service:web-2", PASSING, "")
    assert reg.tick() == pytest.approx(clock.t + 5)
    clock.advance(4)
    reg.update_ttl("service:web-2", CRITICAL, "")  # critical from now: its 5 s start here
    clock.advance(1)
    reg.tick()
    assert "web-1" not in reg.services and "web-2" in reg.services
    clock.advance(4)
    reg.tick()
    assert "web-2" not in reg.services


def test_probe_results_for_replaced_checks_are_ignored(reg: Registry) -> None:
    old = CheckDefinition("service:web-1", "c", "web-1", http="http://x/", interval=1)
    reg.register(svc("web-1"), [old])
    reg.register(svc("web-1"), [CheckDefinition("service:web-1", "c", "web-1", http="http://y/", interval=1)])
    reg.record_result(old, PASSING, "stale")
    assert status(reg, "service:web-1") == CRITICAL


def test_catalog_lists_names_with_the_union_of_tags(reg: Registry) -> None:
    reg.register(svc("web-1", tags=("b", "a")), [])
    reg.register(svc("web-2", tags=("c",)), [])
    assert reg.catalog()["web"] == ["a", "b", "c"]


def test_kv_cas_and_indexes(reg: Registry) -> None:
    assert reg.kv_put("a/x", b"1") is True
    idx, e = reg.kv_get("a/x")
    assert e is not None and idx == e.modify_index == e.create_index
    assert reg.kv_put("a/x", b"2", cas=0) is False
    assert reg.kv_put("a/x", b"2", cas=e.modify_index) is True
    assert reg.kv_put("a/x", b"3", cas=e.modify_index) is False  # that index is stale now
    assert reg.kv_delete("a/x", cas=0) is False
    reg.kv_put("a/y", b"")
    listed_before, _ = reg.kv_list("a/")
    assert reg.kv_delete("a/x") is True
    idx, entries = reg.kv_list("a/")
    assert [e.key for e in entries] == ["a/y"] and idx > listed_before  # the delete (a tombstone) moves the index
    assert reg.kv_delete("a/", recurse=True) is True
    assert reg.kv_list("a/")[1] == [] and reg.kv_get("a/y")[1] is None


async def test_wait_for_wakes_on_a_change_and_times_out_otherwise(reg: Registry) -> None:
    reg.register(svc("web-1"), [ttl("web-1")])
    index = reg.service_index("web")

    started = time.perf_counter()
    await reg.wait_for(lambda: reg.service_index("web"), index, 0.1)
    assert time.perf_counter() - started >= 0.09 and reg.service_index("web") == index

    async def change_soon() -> None:
        await asyncio.sleep(0.05)
        reg.register(svc("other", "other"), [])  # a different service: must not wake the watcher
        await asyncio.sleep(0.05)
        reg.update_ttl("service:web-1", PASSING, "")

    task = asyncio.create_task(change_soon())
    started = time.perf_counter()
    await reg.wait_for(lambda: reg.service_index("web"), index, 5)
    assert 0.09 <= time.perf_counter() - started < 1 and reg.service_index("web") > index
    await task


async def test_release_waiters_answers_parked_queries_without_spinning(reg: Registry) -> None:
    index = reg.service_index("web")
    watcher = asyncio.create_task(reg.wait_for(lambda: reg.service_index("web"), index, 5))
    other = asyncio.create_task(reg.wait_changed(5))
    await asyncio.sleep(0.01)
    reg.release_waiters()
    await asyncio.wait_for(asyncio.gather(watcher, other), 1)
    # The next wait must block again rather than return at once forever (a busy loop in the check runner).
    started = time.perf_counter()
    await reg.wait_changed(0.05)
    assert time.perf_counter() - started >= 0.04


def test_lookups_stay_right_when_an_instance_changes_name_or_a_check_changes_owner(reg: Registry) -> None:
    """The registry keeps indexes by name and by owner; every way of changing state must keep them in step."""
    reg.register(svc("a-1", "a"), [ttl("a-1")])
    reg.register(svc("a-1", "b"), [ttl("a-1")])  # same id, new name
    assert reg.instances("a") == [] and [s.id for s in reg.instances("b")] == ["a-1"]
    reg.register(svc("c-1", "c"), [CheckDefinition("service:a-1", "moved", "c-1", ttl=10)])  # a check id moves
    assert [c.id for c in reg.service_checks("a-1")] == [] and [c.id for c in reg.service_checks("c-1")] == [
        "service:a-1"]
    reg.deregister("c-1")
    assert "service:a-1" not in reg.checks and reg.service_checks("c-1") == []
    reg.register(svc("b-2", "b"), [ttl("b-2", suffix=":1"), ttl("b-2", suffix=":2")])
    reg.register(svc("b-2", "b"), [ttl("b-2", suffix=":1")], replace_existing_checks=True)
    assert [c.id for c in reg.service_checks("b-2")] == ["service:b-2:1"]
    assert [c.id for c in reg.node_checks()] == ["serfHealth"]
    assert [s.id for s in reg.instances("b")] == ["a-1", "b-2"] and [s.id for s in reg.instances("consul")] == [
        "consul"]


# -- checks registered on their own (PUT /v1/agent/check/register) ----------------------------------------------

def node_check(check_id: str = "maint", **kw: object) -> CheckDefinition:
    return CheckDefinition(check_id, check_id, None, ttl=10, **kw)  # type: ignore[arg-type]


def test_a_node_check_counts_for_every_instance_and_wakes_every_service(reg: Registry) -> None:
    reg.register(svc("web-1"), [ttl("web-1", initial_status=PASSING)])
    reg.register(svc("api-1", "api"), [])
    before = {name: reg.service_index(name) for name in ("web", "api", "consul")}
    reg.register_check(node_check())
    assert all(reg.service_index(name) > i for name, i in before.items())  # Consul's updateAllServiceIndexesOfNode
    assert [c.id for c in reg.node_checks()] == ["maint", "serfHealth"]
    assert [c.id for c in reg.health("web")[0].checks] == ["maint", "serfHealth", "service:web-1"]
    assert not reg.health("web")[0].passing and not reg.health("api")[0].passing  # new checks start critical
    index = reg.service_index("api")
    reg.update_ttl("maint", PASSING, "ok")
    assert reg.service_index("api") > index
    assert reg.health("web")[0].passing and reg.health("api")[0].passing
    reg.deregister_check("maint")
    assert [c.id for c in reg.node_checks()] == ["serfHealth"]
    with pytest.raises(UnknownCheck):
        reg.deregister_check("maint")
    with pytest.raises(UnknownCheck):
        reg.deregister_check("serfHealth")


def test_a_check_added_to_an_instance_goes_with_it(reg: Registry) -> None:
    reg.register(svc("web-1"), [ttl("web-1", initial_status=PASSING)])
    index = reg.service_index("web")
    reg.register_check(CheckDefinition("disk", "disk", "web-1", ttl=10))
    assert reg.service_index("web") > index
    assert [c.id for c in reg.service_checks("web-1")] == ["disk", "service:web-1"]
    assert not reg.health("web")[0].passing
    reg.register(svc("web-1", port=2), [ttl("web-1")])  # re-registering the instance keeps the extra check
    assert [c.id for c in reg.service_checks("web-1")] == ["disk", "service:web-1"]
    reg.deregister("web-1")
    assert "disk" not in reg.checks
    with pytest.raises(LookupError):
        reg.register_check(CheckDefinition("disk", "disk", "web-1", ttl=10))


def test_re_registering_a_check_keeps_its_state_and_restarts_its_ttl(reg: Registry, clock: Clock) -> None:
    reg.register_check(node_check(notes="first"))
    reg.update_ttl("maint", WARNING, "hot")
    created = reg.checks["maint"].create_index
    clock.advance(8)
    reg.register_check(node_check(notes="second"))
    c = reg.checks["maint"]
    assert (c.status, c.output, c.definition.notes, c.create_index) == (WARNING, "hot", "second", created)
    clock.advance(8)
    reg.tick()
    assert reg.checks["maint"].status == WARNING  # 16 s after the first TTL started, 8 s into the new one
    clock.advance(3)
    reg.tick()
    assert reg.checks["maint"].status == CRITICAL


def test_a_critical_node_check_does_not_reap(reg: Registry, clock: Clock) -> None:
    reg.register(svc("web-1"), [ttl("web-1", initial_status=PASSING)])
    reg.register_check(node_check(deregister_after=1))
    clock.advance(5)
    reg.tick()  # Consul reaps services only: a node check has none to take with it
    assert "web-1" in reg.services and "maint" in reg.checks
