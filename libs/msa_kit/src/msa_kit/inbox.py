"""Consuming events at most once: the inbox table (the ids of the events a service applied, written in the same
transaction as their effect) and the `Inbox` that applies deliveries in group commits.

The consumer side of the events kit: `EventBus` (events.py) delivers; `InboxDispatcher` parses the payload into its
typed model; `Inbox` applies it through a unit of work (outbox.SqlUnitOfWork), whose `processed` and
`mark_processed` read and write this table.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import re
import time
from collections.abc import Mapping
from typing import Any, Awaitable, Callable, Generic, TypeVar

import sqlalchemy as sa
from opentelemetry import context as otel_context
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from .events import CloudEvent, InjectedFault, PoisonMessage

log = logging.getLogger(__name__)

BUSY_GATHER_S = 0.002


def add_inbox_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "processed_events", metadata,
        sa.Column("event_id", sa.String(36), primary_key=True),
        sa.Column("event_type", sa.String(100), nullable=False),
        sa.Column("processed_at", sa.Float, nullable=False),
    )


@functools.cache
def _statements(inbox: sa.Table) -> tuple[sa.Select, sa.Insert]:
    """Built once per table and executed with parameters: SQLAlchemy reuses the compiled form by a cache key memoized
    on the statement, instead of building and keying a new one per event (3-5x less CPU a statement)."""
    seen = sa.select(inbox.c.event_id).where(inbox.c.event_id.in_(sa.bindparam("ids", expanding=True)))
    return seen, inbox.insert()


async def processed(conn: AsyncConnection, inbox: sa.Table, event_ids: list[str]) -> set[str]:
    rows = await conn.execute(_statements(inbox)[0], {"ids": event_ids})
    return set(rows.scalars())


async def mark_processed(conn: AsyncConnection, inbox: sa.Table, events: list[tuple[str, str]]) -> None:
    if events:
        now = time.time()
        await conn.execute(_statements(inbox)[1], [
            {"event_id": event_id, "event_type": event_type, "processed_at": now} for event_id, event_type in events])


M = TypeVar("M", bound=BaseModel)


@dataclasses.dataclass
class _Delivery:
    event: CloudEvent
    apply: Callable[[Any], Awaitable[None]]
    context: otel_context.Context
    done: asyncio.Future[None]


class Inbox:
    """Applies consumed events at most once — each event's id is stored in the transaction that holds its effect —
    and many events per transaction: a group commit, as databases do with their log.

    Deliveries arrive as concurrent tasks (up to the prefetch). While one transaction runs, the next ones queue;
    the next transaction takes every queued delivery (up to `max_batch`), so under load one BEGIN/COMMIT (and one
    turn of the database's writer lock) serves many events, and with one event in flight nothing waits. A handler
    that fails rolls the shared transaction back; that event alone takes the failure path (retry, dead letter) and
    the others are applied again one per transaction. Outbox rows a handler raises carry that event's own trace
    context, not the batch's.
    """

    def __init__(self, uow_factory: Callable[[], Any], *, max_batch: int = 100) -> None:
        self.uow_factory, self.max_batch = uow_factory, max_batch
        self._queue: list[_Delivery] = []
        self._worker: asyncio.Task[None] | None = None
        self._busy = False

    async def apply(self, event: CloudEvent, apply: Callable[[Any], Awaitable[None]]) -> None:
        """Returns once `apply(uow)` is committed (or the event was a duplicate); raises what it raised."""
        delivery = _Delivery(event, apply, otel_context.get_current(), asyncio.get_running_loop().create_future())
        delivery.done.add_done_callback(_retrieved)  # nobody may be left to await it (below)
        self._queue.append(delivery)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain(), name="inbox")
        # A cancelled delivery (the broker connection dropped) may still be committed: it was not acked, so it
        # comes again and is then a duplicate.
        await asyncio.shield(delivery.done)

    async def _drain(self) -> None:
        while self._queue:
            # Deliveries come in bursts (the broker pushes up to the prefetch at once, a task each): let the ones
            # already running reach the queue before taking the batch. It costs no waiting, only one loop turn.
            await asyncio.sleep(0)
            # Under load (the queue grew while the last transaction ran), a few more loop turns let the deliveries
            # already read off the socket join this batch: fewer, larger transactions; with one event in flight the
            # queue does not grow and nothing waits.
            if self._busy and len(self._queue) < self.max_batch:
                await asyncio.sleep(BUSY_GATHER_S)
            batch = self._queue[:self.max_batch]
            del self._queue[:len(batch)]
            try:
                await self._apply(batch)
                self._busy = bool(self._queue)
            except BaseException:  # cancelled while applying (shutdown): nobody waits in vain
                for d in batch + self._queue:
                    _settle(d, ConnectionError("the inbox stopped"))
                self._queue.clear()
                raise

    async def _apply(self, batch: list[_Delivery]) -> None:
        failed: tuple[_Delivery, Exception] | None = None
        try:
            async with self.uow_factory() as uow:
                seen = await uow.processed([d.event.id for d in batch])
                applied = []
                for d in batch:
                    if d.event.id in seen:
                        log.info("duplicate %s %s ignored", d.event.type, d.event.id)
                        continue
                    token = otel_context.attach(d.context)
                    try:
                        await d.apply(uow)
                        uow.stage_new_events()
                    except Exception as exc:
                        failed = (d, exc)
                        break
                    finally:
                        otel_context.detach(token)
                    seen.add(d.event.id)
                    applied.append(d)
                if failed is None:
                    await uow.mark_processed([(d.event.id, d.event.type) for d in applied])
                    await uow.commit()
        except Exception as exc:  # the database failed: every event of the batch fails alike, and is retried
            for d in batch:
                _settle(d, exc)
            return
        if failed is None:
            for d in applied:
                _log_applied(d)
            for d in batch:
                _settle(d, None)
            return
        _settle(*failed)
        for d in batch:
            if d is not failed[0]:
                await self._apply([d])


def _log_applied(d: _Delivery) -> None:
    """One line per event applied, under the event's own trace: `msa logs --trace` finds every consumer of an order."""
    token = otel_context.attach(d.context)
    try:
        log.info("applied %s %s (subject %s)", d.event.type, d.event.id, d.event.subject)
    finally:
        otel_context.detach(token)


def _retrieved(done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        done.exception()


def _settle(delivery: _Delivery, exc: BaseException | None) -> None:
    if delivery.done.done():
        return
    if exc is None:
        delivery.done.set_result(None)
    else:
        delivery.done.set_exception(exc)


Upcaster = Callable[[dict[str, Any]], dict[str, Any]]  # a payload of version N → the same event as version N + 1


def payload_version(event: CloudEvent) -> int:
    """The payload's version, from `dataschema` (`urn:msa:order.placed:v2`); 1 when it names none."""
    match = re.search(r":v(\d+)$", event.dataschema or "")
    return int(match.group(1)) if match else 1


class InboxDispatcher(Generic[M]):
    """Parses the payload into its typed model at the edge, then has the inbox apply the event at most once.

    Versions (contracts/README.md): the model reads version `model.version` (default 1). An older payload is
    brought up to it by the `upcasters` (one per step, N → N + 1) before parsing, so a consumer that learnt v2 still
    handles the v1 events in flight or replayed; a newer one than the model reads is dead-lettered with the reason
    (replayable once a consumer that reads it is deployed), never half-understood."""

    def __init__(self, inbox: Inbox, model: type[M], handler: Callable[[M, Any], Awaitable[None]],
                 failing: Callable[[str], bool] = lambda _type: False,
                 upcasters: Mapping[int, Upcaster] | None = None) -> None:
        self.inbox, self.model, self.handler, self.failing = inbox, model, handler, failing
        self.reads = int(getattr(model, "version", 1))
        self.upcasters = dict(upcasters or {})

    def upcast(self, event: CloudEvent) -> dict[str, Any]:
        version, data = payload_version(event), event.data
        if version > self.reads:
            raise PoisonMessage(f"{event.type} v{version} is newer than {self.model.__name__} reads (v{self.reads}): "
                                "deploy a consumer that reads it, then replay the dead letters")
        while version < self.reads:
            step = self.upcasters.get(version)
            if step is None:
                raise PoisonMessage(f"{event.type} v{version}: {self.model.__name__} reads v{self.reads} and has no "
                                    f"upcaster from v{version}")
            data, version = step(dict(data)), version + 1
        return data

    async def __call__(self, event: CloudEvent) -> None:
        try:
            payload = self.model.model_validate(self.upcast(event))
        except ValidationError as exc:
            raise PoisonMessage(f"{event.type} payload rejected by {self.model.__name__}: {exc.errors()[0]}") from None

        async def apply(uow: Any) -> None:
            if self.failing(event.type):
                raise InjectedFault(f"injected failure for {event.type} (faults.failing_events)")
            await self.handler(payload, uow)

        await self.inbox.apply(event, apply)
