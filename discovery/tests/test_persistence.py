"""Persistence across a restart, with Consul's agent rules for what comes back and in which state.

The registry runs on a fake monotonic clock; wall-clock time is passed in explicitly, so "the restart took 1 s"
and "the restart took longer than the TTL" are both exact."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from msa_discovery import create_app
from msa_discovery.__main__ import data_dir
from msa_discovery.persistence import Persister, restore, snapshot
from msa_discovery.registry import CRITICAL, PASSING, CheckDefinition, Node, Registry, ServiceDefinition

NODE = Node("node-1", "id-1", "127.0.0.1")
WALL = 1_700_000_000.0


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def populated() -> Registry:
    reg = Registry(NODE, Clock(50.0))
    reg.register(ServiceDefinition("web-1", "web", "10.0.0.1", 80, ("v1",), {"version": "1"}),
                 [CheckDefinition("service:web-1", "c", "web-1", ttl=3.0, deregister_after=30.0)])
    reg.register(ServiceDefinition("web-2", "web", "10.0.0.2", 80),
                 [CheckDefinition("service:web-2", "c", "web-2", ttl=3.0)])
    reg.register(ServiceDefinition("api-1", "api", port=81),
                 [CheckDefinition("service:api-1", "c", "api-1", http="http://x/health", interval=1.0)])
    reg.update_ttl("service:web-1", PASSING, "ok")
    reg.update_ttl("service:web-2", PASSING, "ok")
    reg.record_result(reg.checks["service:api-1"].definition, PASSING, "HTTP 200")
    reg.kv_put("config/a", b"1", flags=7)
    reg.kv_put("config/b", None)
    reg.kv_put("config/c", b"x")
    reg.kv_delete("config/c")
    return reg


def restarted(doc: dict, seconds_later: float) -> Registry:
    """A fresh process (its own monotonic clock) loading `doc` `seconds_later` after it was saved."""
    reg = Registry(NODE, Clock(7.0))
    restore(reg, json.loads(json.dumps(doc)), WALL + seconds_later)  # through JSON, as on disk
    return reg


def test_a_quick_restart_brings_every_instance_back_passing_with_a_fresh_ttl() -> None:
    before = populated()
    after = restarted(snapshot(before, WALL), seconds_later=1.0)
    assert [e.service.id for e in after.health("web") if e.passing] == ["web-1", "web-2"]
    web1 = after.checks["service:web-1"]
    assert (web1.status, web1.output) == (PASSING, "ok")
    assert web1.ttl_deadline == 7.0 + 3.0  # Consul starts a new TTL timer for a restored check
    s = after.services["web-1"]
    assert (s.definition.address, s.definition.tags, s.definition.meta) == ("10.0.0.1", ("v1",), {"version": "1"})
    assert (s.create_index, s.modify_index) == (before.services["web-1"].create_index,
                                                before.services["web-1"].modify_index)
    assert after.checks["service:web-1"].definition.deregister_after == 30.0


def test_a_ttl_that_ran_out_while_we_were_down_is_not_restored() -> None:
    after = restarted(snapshot(populated(), WALL), seconds_later=3.5)
    assert [e.service.id for e in after.health("web")] == ["web-1", "web-2"]  # known, so a heartbeat is a 200 ...
    assert not any(e.passing for e in after.health("web"))  # ... but not passing until that heartbeat
    assert (after.checks["service:web-1"].status, after.checks["service:web-1"].output) == (CRITICAL, "")
    after.update_ttl("service:web-1", PASSING, "")
    assert [e.service.id for e in after.health("web") if e.passing] == ["web-1"]


def test_http_checks_start_over_from_their_initial_status() -> None:
    after = restarted(snapshot(populated(), WALL), seconds_later=0.1)
    assert after.checks["service:api-1"].status == CRITICAL  # the check runner probes it again at once


def test_indexes_continue_and_kv_cas_still_holds() -> None:
    before = populated()
    old_index, old_a = before.index, before.kv["config/a"]
    after = restarted(snapshot(before, WALL), seconds_later=60)
    assert after.index > old_index  # never backwards; the restore is itself a write, waking old watchers
    assert after.service_index("web") > before.service_index("web")
    a = after.kv["config/a"]
    assert (a.value, a.flags, a.modify_index) == (b"1", 7, old_a.modify_index)
    assert after.kv["config/b"].value is None and "config/c" not in after.kv
    assert after.kv_list("config/")[0] >= before.kv_list("config/")[0]  # the delete's tombstone is kept
    assert after.kv_put("config/a", b"2", cas=old_a.modify_index)


def test_the_node_and_the_consul_service_are_not_duplicated() -> None:
    after = restarted(snapshot(populated(), WALL), seconds_later=1)
    assert [c.id for c in after.node_checks()] == ["serfHealth"]
    assert after.catalog() == {"api": [], "consul": [], "web": ["v1"]}


async def test_the_app_restores_before_serving_and_saves_on_shutdown(tmp_path: Path) -> None:
    first = populated()
    app = create_app(first, run_checks=False, data_dir=tmp_path)
    async with app.router.lifespan_context(app):
        first.update_ttl("service:web-1", PASSING, "last words")
    saved = json.loads((tmp_path / "registry.json").read_text())
    assert {c["output"] for c in saved["checks"] if c["check_id"] == "service:web-1"} == {"last words"}
    assert not list(tmp_path.glob("*.tmp"))

    second = Registry(NODE)
    app = create_app(second, run_checks=False, data_dir=tmp_path)
    async with app.router.lifespan_context(app):
        assert [e.service.id for e in second.health("web") if e.passing] == ["web-1", "web-2"]


async def test_the_persister_saves_heartbeats_too(tmp_path: Path) -> None:
    """A heartbeat that changes nothing is not a write (no new index), but it moves the TTL deadline, which a
    restart needs to know: the persister saves it anyway."""
    reg = populated()
    persister = Persister(reg, tmp_path, interval=0.01)

    def saved() -> tuple[int, float]:
        doc = json.loads(persister.path.read_text())
        return doc["index"], doc["saved_at"]

    task = asyncio.create_task(persister.run())
    try:
        await asyncio.sleep(0.05)
        index, saved_at = saved()
        await asyncio.sleep(0.05)
        assert saved() == (index, saved_at)  # nothing changed, nothing written
        reg.update_ttl("service:web-1", PASSING, "ok")
        await asyncio.sleep(0.05)
        index_after, saved_at_after = saved()
    finally:
        task.cancel()
    assert index_after == index and saved_at_after > saved_at


def test_an_unreadable_file_is_set_aside_and_we_start_empty(tmp_path: Path) -> None:
    (tmp_path / "registry.json").write_text("{not json")
    reg = Registry(NODE)
    Persister(reg, tmp_path).load()
    assert reg.catalog() == {"consul": []}
    assert (tmp_path / "registry.json.unreadable").exists() and not (tmp_path / "registry.json").exists()


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None),
    ({"MSA_VAR_DIR": "/v"}, Path("/v/discovery")),
    ({"MSA_VAR_DIR": "/v", "DATA_DIR": "/d"}, Path("/d")),
    ({"MSA_VAR_DIR": "/v", "DATA_DIR": ""}, None),
])
def test_where_the_data_dir_is(env: dict[str, str], expected: Path | None) -> None:
    assert data_dir(env) == expected


def test_checks_registered_on_their_own_come_back_like_the_others() -> None:
    before = populated()
    before.register_check(CheckDefinition("maint", "maintenance", None, ttl=3.0, notes="node-wide"))
    before.register_check(CheckDefinition("disk", "disk", "web-2", ttl=3.0))
    before.update_ttl("maint", PASSING, "fine")
    after = restarted(snapshot(before, WALL), seconds_later=1.0)
    assert [c.id for c in after.node_checks()] == ["maint", "serfHealth"]  # serfHealth once, the process's own
    maint = after.checks["maint"]
    assert (maint.status, maint.output, maint.definition.notes, maint.local) == (PASSING, "fine", "node-wide", True)
    assert after.checks["serfHealth"].local is False
    assert [c.id for c in after.service_checks("web-2")] == ["disk", "service:web-2"]
    assert after.checks["disk"].status == CRITICAL  # never reported: its registered initial status
