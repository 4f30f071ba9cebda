"""The outbox and inbox against a real database, SQLite and PostgreSQL. The inbox's group commit: many events per transaction, each
still at most once, a failing one isolated, each outbox row under its own event's trace. The relay: no wake-up lost.
"""

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from msa_kit.events import CloudEvent
from msa_kit.inbox import Inbox
from msa_kit.outbox import SqlUnitOfWork, add_messaging_tables
from msa_kit.sql import create_schema

metadata = sa.MetaData()
outbox, inbox_table = add_messaging_tables(metadata)
effects = sa.Table("effects", metadata, sa.Column("event_id", sa.String, primary_key=True))


@dataclass(frozen=True)
class Applied:
    type = "test.applied"
    event_id: str


@dataclass
class Aggregate:
    id: str
    events: list[Any] = field(default_factory=list)

    def aggregate_id(self) -> str:
        return self.id


@pytest.fixture
async def db(new_database, engine_for):
    engine = engine_for(await new_database("inbox"))
    await create_schema(engine, metadata)
    yield engine
    await engine.dispose()


def counting_factory(engine) -> tuple[list[int], Any]:
    transactions = [0]

    def factory() -> SqlUnitOfWork:
        transactions[0] += 1
        return SqlUnitOfWork(engine, outbox, inbox_table, "/test")
    return transactions, factory


def event(i: int, event_id: str | None = None) -> CloudEvent:
    return CloudEvent(id=event_id or f"e-{i}", source="/test", type="test.happened", data={"i": i})


async def record(uow: SqlUnitOfWork, e: CloudEvent) -> None:
    await uow.conn.execute(effects.insert().values(event_id=e.id))
    agg = Aggregate(e.id)
    agg.events.append(Applied(e.id))
    uow.seen.append(agg)


async def rows(engine, table: sa.Table) -> list[Any]:
    async with engine.connect() as conn:
        return (await conn.execute(sa.select(table))).all()


async def test_concurrent_events_share_transactions_and_each_is_applied_once(db):
    transactions, factory = counting_factory(db)
    inbox = Inbox(factory, max_batch=100)
    events = [event(i) for i in range(40)]
    await asyncio.gather(*(inbox.apply(e, lambda uow, e=e: record(uow, e)) for e in events))
    assert len(await rows(db, effects)) == 40 and len(await rows(db, inbox_table)) == 40
    assert len(await rows(db, outbox)) == 40
    assert transactions[0] <= 3, transactions  # the first alone, then the ones that queued meanwhile


async def test_a_duplicate_in_the_same_batch_or_later_is_applied_once(db):
    _, factory = counting_factory(db)
    inbox = Inbox(factory)
    calls: list[str] = []

    async def handler(uow: SqlUnitOfWork, e: CloudEvent) -> None:
        calls.append(e.id)
        await record(uow, e)

    same = [event(1, "dup"), event(2, "dup"), event(3, "other")]
    await asyncio.gather(*(inbox.apply(e, lambda uow, e=e: handler(uow, e)) for e in same))
    await inbox.apply(event(4, "dup"), lambda uow: handler(uow, event(4, "dup")))
    assert sorted(calls) == ["dup", "other"]
    assert {r.event_id for r in await rows(db, effects)} == {"dup", "other"}


async def test_a_failing_handler_fails_alone_and_the_rest_of_its_batch_commits(db):
    transactions, factory = counting_factory(db)
    inbox = Inbox(factory)

    async def handler(uow: SqlUnitOfWork, e: CloudEvent) -> None:
        await record(uow, e)  # its effect and its outbox event are written, then rolled back
        if e.data["i"] == 5:
            raise RuntimeError("handler bug")

    events = [event(i) for i in range(10)]
    results = await asyncio.gather(*(inbox.apply(e, lambda uow, e=e: handler(uow, e)) for e in events),
                                   return_exceptions=True)
    assert [type(r).__name__ for r in results].count("RuntimeError") == 1 and isinstance(results[5], RuntimeError)
    applied = {r.event_id for r in await rows(db, effects)}
    assert applied == {f"e-{i}" for i in range(10) if i != 5}
    assert {r.event_id for r in await rows(db, inbox_table)} == applied
    assert {json.loads(r.envelope)["data"]["event_id"] for r in await rows(db, outbox)} == applied
    # Retried later (the bus's retry queue), the failed event is applied like any other.
    await inbox.apply(event(5), lambda uow: record(uow, event(5)))
    assert len(await rows(db, effects)) == 10


async def test_each_outbox_row_carries_the_trace_of_the_event_that_raised_it(db):
    _, factory = counting_factory(db)
    inbox = Inbox(factory)
    tracer = TracerProvider().get_tracer("test")
    expected: dict[str, str] = {}

    async def deliver(e: CloudEvent) -> None:
        # As the broker instrumentation does: each delivery runs under its own consume span.
        with tracer.start_as_current_span(f"consume {e.id}") as span:
            expected[e.id] = format(span.get_span_context().trace_id, "032x")
            await inbox.apply(e, lambda uow: record(uow, e))

    token = otel_context.attach(trace.set_span_in_context(trace.INVALID_SPAN))
    try:
        await asyncio.gather(*(deliver(event(i)) for i in range(12)))
    finally:
        otel_context.detach(token)
    written = {json.loads(r.envelope)["data"]["event_id"]: json.loads(r.trace)["traceparent"].split("-")[1]
               for r in await rows(db, outbox)}
    assert written == expected


class GatedBus:
    """A broker stand-in whose first publish waits for the test's go-ahead."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.connected.set()
        self.published: list[str] = []
        self.publishing = asyncio.Event()
        self.go = asyncio.Event()

    async def publish(self, envelope: str, _event_id: str, _event_type: str, _trace: dict) -> None:
        self.publishing.set()
        await self.go.wait()
        self.published.append(json.loads(envelope)["data"]["event_id"])


async def commit_event(engine, relay, event_id: str) -> None:
    uow = SqlUnitOfWork(engine, outbox, inbox_table, "/test", relay)
    async with uow:
        agg = Aggregate(event_id)
        agg.events.append(Applied(event_id))
        uow.seen.append(agg)
        await uow.commit()


async def test_a_commit_made_while_the_relay_publishes_is_relayed_at_once_not_at_the_next_poll(db):
    from msa_kit.outbox import OutboxRelay

    bus = GatedBus()
    relay = OutboxRelay(db, outbox, bus, poll_s=30.0)  # type: ignore[arg-type]
    relay.start()
    try:
        await commit_event(db, relay, "first")
        await asyncio.wait_for(bus.publishing.wait(), 5)
        await commit_event(db, relay, "second")  # its wake-up arrives while "first" is being published
        bus.go.set()
        async with asyncio.timeout(10):  # far below the 30 s poll: only the wake-up can have started the round
            while bus.published != ["first", "second"]:
                await asyncio.sleep(0.01)
    finally:
        await relay.stop()
