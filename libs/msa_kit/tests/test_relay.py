"""The outbox relay against a real database shared by two "instances" (two engines: two write locks, one database,
as two processes have), on SQLite and on PostgreSQL. A commit hands its rows to its own relay; what that relay cannot publish — it died, a publish
failed, an earlier row of the aggregate is elsewhere — another relay's sweep takes over, in order, once the lease
runs out. End to end over the real broker: with two relays racing and one dying, every event is applied once."""

import asyncio
import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from msa_kit import sql
from msa_kit.events import EventBus
from msa_kit.inbox import Inbox, InboxDispatcher
from msa_kit.runtime import Runtime
from msa_kit.outbox import OutboxRelay, SqlUnitOfWork, add_messaging_tables

metadata = sa.MetaData()
outbox, inbox_table = add_messaging_tables(metadata)
effects = sa.Table("effects", metadata, sa.Column("event_id", sa.String, primary_key=True),
                   sa.Column("n", sa.Integer, nullable=False))


@dataclass(frozen=True)
class Happened:
    type = "test.happened"
    n: int


@dataclass
class Thing:
    id: str
    events: list[Any] = field(default_factory=list)

    def aggregate_id(self) -> str:
        return self.id


class RecordingBus:
    """A broker stand-in: records what was published; `hold` makes every publish wait (a relay stuck or about to
    die); `fail` makes the next n publishes fail (the broker refusing)."""

    def __init__(self, *, hold: bool = False, fail: int = 0) -> None:
        self.connected = asyncio.Event()
        self.connected.set()
        self.published: list[int] = []  # the events' n, in publish order
        self.release = asyncio.Event()
        if not hold:
            self.release.set()
        self.fail = fail
        self.waiting = 0  # publishes started and not yet answered

    async def publish(self, envelope: str, _event_id: str, _event_type: str, _trace: dict) -> None:
        self.waiting += 1
        try:
            await self.release.wait()
        finally:
            self.waiting -= 1
        if self.fail:
            self.fail -= 1
            raise ConnectionError("broker refused")
        self.published.append(json.loads(envelope)["data"]["n"])


@pytest.fixture
async def engines(new_database, engine_for):
    """Two instances' engines on one database."""
    url = await new_database("shared")
    a, b = engine_for(url), engine_for(url)
    await sql.create_schema(a, metadata)
    yield a, b
    await a.dispose()
    await b.dispose()


async def commit(engine: Any, relay: OutboxRelay | None, subject: str, *ns: int) -> None:
    async with SqlUnitOfWork(engine, outbox, inbox_table, "/test", relay) as uow:
        thing = Thing(subject)
        thing.events.extend(Happened(n) for n in ns)
        uow.seen.append(thing)
        await uow.commit()


async def until(condition: Any, timeout: float = 10.0) -> None:
    """Waits for a condition (bounded, generously: this is not a timing assertion)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def outbox_rows(engine: Any) -> list[Any]:
    async with engine.connect() as conn:
        return (await conn.execute(sa.select(outbox).order_by(outbox.c.seq))).all()


async def started(relay: OutboxRelay) -> OutboxRelay:
    relay.start()
    await until(lambda: relay.accepting)
    return relay


async def die(relay: OutboxRelay) -> None:
    """A crash: the relay's tasks end, nothing is marked or given back."""
    for task in relay._tasks:
        task.cancel()
    _, running = await asyncio.wait(relay._tasks, timeout=10)
    assert not running, f"relay tasks that ignored their cancellation: {[t.get_name() for t in running]}"


async def test_a_commit_is_published_by_its_own_relay_without_a_claim_and_marked_sent(engines):
    a, _ = engines
    bus = RecordingBus()
    relay = await started(OutboxRelay(a, outbox, bus, poll_s=30.0))  # type: ignore[arg-type]
    try:
        await commit(a, relay, "x", 1, 2)
        await until(lambda: bus.published == [1, 2])
        await until(lambda: relay.settled())  # marked sent
    finally:
        await relay.stop()
    rows = await outbox_rows(a)
    assert [r.sent_at is not None for r in rows] == [True, True]
    # Born claimed by their relay (so no other sweeps them up meanwhile): the claim was written with the rows.
    assert all(r.claimed_until is not None and r.claimed_until > r.created_at for r in rows)


async def test_a_dead_instances_rows_are_relayed_by_the_other_after_the_lease(engines):
    a, b = engines
    stuck = RecordingBus(hold=True)
    dying = await started(OutboxRelay(a, outbox, stuck, lease_s=0.3, poll_s=30.0))  # type: ignore[arg-type]
    for i in range(5):
        await commit(a, dying, f"agg-{i % 2}", i)
    await until(lambda: stuck.waiting > 0)  # publishing (stuck), more rows handed over: then the instance dies
    await die(dying)
    assert stuck.published == []
    bus = RecordingBus()
    survivor = await started(OutboxRelay(b, outbox, bus, poll_s=0.05))  # type: ignore[arg-type]
    try:
        await until(lambda: len(bus.published) >= 5)
        await until(lambda: survivor.settled())
    finally:
        await survivor.stop()
    assert sorted(bus.published) == [0, 1, 2, 3, 4]
    assert bus.published == sorted(bus.published)  # oldest first: each aggregate's order holds
    assert all(r.sent_at is not None for r in await outbox_rows(b))


async def test_a_row_behind_another_instances_unsent_row_of_its_aggregate_waits_for_it(engines):
    a, b = engines
    stuck = RecordingBus(hold=True)
    dying = await started(OutboxRelay(a, outbox, stuck, lease_s=0.3, poll_s=30.0))  # type: ignore[arg-type]
    await commit(a, dying, "order-1", 1)
    await until(lambda: stuck.waiting > 0)
    await die(dying)
    bus = RecordingBus()
    other = await started(OutboxRelay(b, outbox, bus, poll_s=0.05))  # type: ignore[arg-type]
    try:
        await commit(b, other, "order-1", 2)  # the same aggregate, later: it must not overtake event 1
        await commit(b, other, "order-2", 3)  # another aggregate: published at once
        await until(lambda: len(bus.published) >= 3)
    finally:
        await other.stop()
    assert bus.published.index(1) < bus.published.index(2)
    assert sorted(bus.published) == [1, 2, 3]


async def test_two_relays_sweeping_the_same_rows_publish_each_once(engines):
    a, b = engines
    for i in range(300):  # written with no relay running (e.g. while it was down): only the sweeps take them
        await commit(a if i % 2 else b, None, f"agg-{i % 7}", i)
    bus_a, bus_b = RecordingBus(), RecordingBus()
    relays = [OutboxRelay(a, outbox, bus_a, batch=20, poll_s=0.01),  # type: ignore[arg-type]
              OutboxRelay(b, outbox, bus_b, batch=20, poll_s=0.01)]  # type: ignore[arg-type]
    for r in relays:
        r.start()
    try:
        await until(lambda: len(bus_a.published) + len(bus_b.published) >= 300)
        await until(lambda: relays[0].settled() and relays[1].settled())
    finally:
        for r in relays:
            await r.stop()
    published = Counter(bus_a.published + bus_b.published)
    assert set(published) == set(range(300)) and set(published.values()) == {1}
    assert all(r.sent_at is not None for r in await outbox_rows(a))


async def test_a_failed_publish_goes_back_to_the_sweep_and_nothing_later_overtakes_it(engines):
    a, _ = engines
    bus = RecordingBus(hold=True, fail=1)
    relay = await started(OutboxRelay(a, outbox, bus, poll_s=0.05))  # type: ignore[arg-type]
    try:
        await commit(a, relay, "x", 1)
        await until(lambda: bus.waiting > 0)  # 1 is being published (and will fail) ...
        await commit(a, relay, "x", 2)  # ... while 2 is handed over: it must wait for 1's retry
        bus.release.set()
        await until(lambda: len(bus.published) >= 2)
        await until(lambda: relay.settled())
    finally:
        await relay.stop()
    assert bus.published[:2] == [1, 2]
    assert all(r.sent_at is not None for r in await outbox_rows(a))


async def test_stop_gives_handed_over_rows_back_so_the_other_instance_takes_them_without_the_lease(engines):
    a, b = engines
    stopping = OutboxRelay(a, outbox, RecordingBus(hold=True), lease_s=3600.0)  # type: ignore[arg-type]
    stopping.accepting = True  # as if running: a commit hands its rows over ...
    await commit(a, stopping, "x", 1)
    await stopping.stop()  # ... and the stop, before they were published, gives them back
    bus = RecordingBus()
    other = await started(OutboxRelay(b, outbox, bus, poll_s=0.05))  # type: ignore[arg-type]
    try:
        await until(lambda: bus.published == [1])  # long before the hour's lease
    finally:
        await other.stop()


# ---- end to end, over the real broker ------------------------------------------------------------------------

class HappenedV1(BaseModel):
    n: int


async def test_two_racing_relays_one_dying_every_event_is_applied_once(tmp_path: Path, monkeypatch, amqp_url,
                                                                        new_database, engine_for):
    namespace = f"test-{uuid.uuid4().hex[:6]}."
    monkeypatch.setenv("MSA_NAMESPACE", namespace)
    monkeypatch.setenv("MSA_VAR_DIR", str(tmp_path))
    producer_url = await new_database("producer")
    a, b = engine_for(producer_url), engine_for(producer_url)
    consumer_db = engine_for(await new_database("consumer"))
    await sql.create_schema(a, metadata)
    await sql.create_schema(consumer_db, metadata)
    applied: Counter[int] = Counter()

    async def on_happened(payload: HappenedV1, uow: Any) -> None:
        applied[payload.n] += 1
        await uow.conn.execute(effects.insert().values(event_id=str(payload.n), n=payload.n))

    consumer = EventBus(Runtime.for_service("consumer"), prefetch=100)
    consumer.subscribe(Happened.type, InboxDispatcher(
        Inbox(lambda: SqlUnitOfWork(consumer_db, outbox, inbox_table, "/consumer")), HappenedV1, on_happened))
    producers = [EventBus(Runtime.for_service("producer")) for _ in range(2)]
    buses = [consumer, *producers]
    for bus in buses:
        bus.start()
    relays: list[OutboxRelay] = []
    try:
        for bus in buses:
            await asyncio.wait_for(bus.connected.wait(), 10)
        relays = [OutboxRelay(a, outbox, producers[0], lease_s=0.5, poll_s=0.05),
                  OutboxRelay(b, outbox, producers[1], lease_s=0.5, poll_s=0.05)]
        for r in relays:
            await started(r)
        n = 400

        async def write(engine: Any, relay: OutboxRelay, ns: range) -> None:
            for i in ns:
                await commit(engine, relay, f"agg-{i % 13}", i)

        # Both instances write at once (their relays race on the file's one write lock) ...
        await asyncio.gather(write(a, relays[0], range(0, n, 2)), write(b, relays[1], range(1, n, 2)))
        await die(relays[0])  # ... then one dies, whatever it still held ...
        await write(b, relays[1], range(n, n + 50))  # ... and the survivor carries on, and takes its rows over.
        await until(lambda: len(applied) >= n + 50, timeout=30)
        await until(lambda: relays[1].settled())
    finally:
        for r in relays[1:]:
            await r.stop()
        for bus in buses:
            await bus.close()
        await cleanup(amqp_url, namespace)
        for engine in (a, b, consumer_db):
            await engine.dispose()
    assert set(applied) == set(range(n + 50))
    assert set(applied.values()) == {1}  # each applied once, however often it was delivered
    async with consumer_db.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(effects))).scalar_one() == n + 50
    assert all(r.sent_at is not None for r in await outbox_rows(b))


async def cleanup(amqp_url: str, namespace: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for queue in ("consumer.events", "consumer.events.retry", "consumer.events.dlq", "msa.events.unrouted"):
            await channel.queue_delete(f"{namespace}{queue}")
        for exchange in ("msa.events", "msa.events.unrouted"):
            await channel.exchange_delete(f"{namespace}{exchange}")
