"""ServiceWatcher against a tiny fake registry: blocking queries, outages, restarts that forget everything."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from msa_kit.discovery import Instance, ServiceWatcher


def entry(instance_id: str, port: int) -> dict[str, Any]:
    return {"Service": {"ID": instance_id, "Port": port, "Address": "127.0.0.1", "Tags": [], "Meta": {}}}


class FakeRegistry:
    """Answers `health.service(name, passing=True, index=, wait=)` the way Consul does, from `passing`."""

    def __init__(self) -> None:
        self.index = 10
        self.passing: list[dict[str, Any]] = []
        self.up = True
        self.waits: list[str | None] = []
        self._changed = asyncio.Event()
        self.health = self  # py-consul's shape: client.health.service(...)

    def set(self, passing: list[dict[str, Any]], *, index: int | None = None) -> None:
        self.passing, self.index = passing, index if index is not None else self.index + 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def service(self, name: str, *, passing: bool, index: str | None, wait: str | None) -> tuple[str, list]:
        self.waits.append(wait if index is not None else None)
        if not self.up:
            raise ConnectionRefusedError("registry down")
        if index is not None and int(index) == self.index:
            seconds = int(wait[:-2]) / 1000 if wait and wait.endswith("ms") else float((wait or "30s")[:-1])
            try:
                await asyncio.wait_for(asyncio.shield(self._changed.wait()), seconds)
            except TimeoutError:
                pass
        if not self.up:
            raise ConnectionResetError("registry went away")
        return str(self.index), list(self.passing)


A, B = entry("catalog-1", 8201), entry("catalog-2", 8202)


async def eventually(predicate, timeout: float = 3.0) -> float:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not predicate():
        assert loop.time() - started < timeout, "condition never met"
        await asyncio.sleep(0.01)
    return loop.time() - started


@pytest.fixture
async def reg() -> FakeRegistry:
    r = FakeRegistry()
    r.set([A, B])
    return r


async def watching(reg: FakeRegistry, grace: float = 0.5) -> ServiceWatcher:
    w = ServiceWatcher(reg, "catalog", recovery_grace_s=grace)  # type: ignore[arg-type]
    w.start()
    await w.ready(2)
    assert [i.id for i in w.instances] == ["catalog-1", "catalog-2"]
    return w


async def test_follows_the_passing_set_with_blocking_queries(reg: FakeRegistry) -> None:
    w = await watching(reg)
    reg.set([A])
    await eventually(lambda: [i.id for i in w.instances] == ["catalog-1"])
    reg.set([])  # no outage: an empty answer is the truth, believed at once (calls fail fast)
    await eventually(lambda: w.instances == [])
    await w.stop()


async def test_serves_the_cache_while_the_registry_is_down(reg: FakeRegistry) -> None:
    w = await watching(reg)
    reg.up = False
    reg.set([A, B])  # wakes the parked query, which now fails
    await eventually(lambda: w.stale)
    assert [i.id for i in w.instances] == ["catalog-1", "catalog-2"]
    await w.stop()


async def test_an_empty_answer_right_after_an_outage_does_not_wipe_the_cache(reg: FakeRegistry) -> None:
    w = await watching(reg, grace=2.0)
    seen: list[list[Instance]] = []
    reg.up = False
    reg.set([A, B])
    await eventually(lambda: w.stale)
    reg.up = True
    reg.set([], index=1)  # restarted and forgot everything: its index starts over
    sampler = asyncio.create_task(_sample(w, seen))
    await eventually(lambda: reg.index == 1 and len(reg.waits) > 3 and reg.waits[-1] is not None)
    assert [i.id for i in w.instances] == ["catalog-1", "catalog-2"] and w.stale
    assert reg.waits[-1].endswith("ms")  # while holding, it blocks no longer than the grace
    reg.set([B])  # the first heartbeat re-registers catalog-2
    await eventually(lambda: [i.id for i in w.instances] == ["catalog-2"] and not w.stale)
    sampler.cancel()
    assert all(seen), "the cache was empty at some moment"
    await w.stop()


async def test_an_empty_answer_that_outlasts_the_grace_is_believed(reg: FakeRegistry) -> None:
    w = await watching(reg, grace=0.3)
    reg.up = False
    reg.set([A, B])
    await eventually(lambda: w.stale)
    reg.up = True
    reg.set([])  # nobody comes back: they really are gone
    took = await eventually(lambda: w.instances == [])
    assert not w.stale and took < 0.3 + 2.0 + 0.5  # grace + the longest backoff + slack
    await w.stop()


async def test_an_index_going_backwards_without_an_error_also_opens_the_grace(reg: FakeRegistry) -> None:
    w = await watching(reg, grace=1.0)
    reg.set([], index=2)  # a restart between two queries: no failed request, but the index went backwards
    await asyncio.sleep(0.2)
    assert [i.id for i in w.instances] == ["catalog-1", "catalog-2"]
    reg.set([A])
    await eventually(lambda: [i.id for i in w.instances] == ["catalog-1"])
    await w.stop()


async def _sample(w: ServiceWatcher, seen: list[list[Instance]]) -> None:
    while True:
        seen.append(list(w.instances))
        await asyncio.sleep(0.005)
