"""The transactional outbox: events written in the same transaction as the state change that raised them, and
relayed to the broker afterwards — at least once, in order per aggregate.

`SqlUnitOfWork` is the write half: a transaction on the service's database (sql.py) whose `commit()` stages the
domain events its aggregates recorded as outbox rows, and whose `mark_processed` records consumed events in the
inbox (inbox.py) beside their effect. `OutboxRelay` is the other half: it publishes the rows through the bus
(events.py) with publisher confirms, and marks them sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import time
from contextlib import nullcontext
from typing import Any, Iterator

import sqlalchemy as sa
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .events import CloudEvent, EventBus
from .inbox import add_inbox_table, mark_processed, processed
from .sql import begin, transaction, write_lock
from .tracing import carrier
from .uow import UnitOfWork

log = logging.getLogger(__name__)

PUBLISHED = Counter("msa_outbox_published", "Outbox events the broker confirmed")


def add_messaging_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    """The outbox and the inbox, in the service's own metadata (its database)."""
    outbox = sa.Table(
        "outbox", metadata,
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(36), nullable=False, unique=True),
        sa.Column("event_type", sa.String(100), nullable=False),
        sa.Column("subject", sa.String(100), nullable=False, index=True),  # the aggregate: its events stay in order
        sa.Column("envelope", sa.Text, nullable=False),
        sa.Column("trace", sa.Text, nullable=False),  # W3C headers of the request that wrote the row
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("claimed_until", sa.Float),
        sa.Column("sent_at", sa.Float, index=True),
    )
    return outbox, add_inbox_table(metadata)


@dataclasses.dataclass(frozen=True)
class _Statements:
    """The outbox's statements, built once per table and executed with parameters: SQLAlchemy reuses the compiled
    form by a cache key memoized on the statement, instead of building, coercing and keying new ones for every
    commit and every sweep (3-5x less CPU a statement)."""

    add: sa.Insert
    unsent_of: sa.Select  # (subject, event_id) of the unsent rows of these subjects
    claimable: sa.Select  # seqs nobody holds, whose aggregate has no earlier row held by another relay
    waiting: sa.Select  # whether rows are unclaimed only because an earlier row of theirs is held
    claim: sa.Update
    claimed: sa.Select
    sent: sa.Update
    released: sa.Update

    @classmethod
    @functools.cache
    def of(cls, o: sa.Table) -> "_Statements":
        earlier = o.alias("earlier")
        now = sa.bindparam("now")
        blocked = sa.exists().where(earlier.c.subject == o.c.subject, earlier.c.seq < o.c.seq,
                                    earlier.c.sent_at.is_(None),
                                    earlier.c.claimed_until.is_not(None), earlier.c.claimed_until >= now)
        unclaimed = sa.and_(o.c.sent_at.is_(None), sa.or_(o.c.claimed_until.is_(None), o.c.claimed_until < now))
        ids = sa.bindparam("ids", expanding=True)
        return cls(
            add=o.insert(),
            unsent_of=sa.select(o.c.subject, o.c.event_id).where(
                o.c.subject.in_(sa.bindparam("subjects", expanding=True)), o.c.sent_at.is_(None)),
            claimable=sa.select(o.c.seq).where(unclaimed, ~blocked).order_by(o.c.seq).limit(sa.bindparam("batch")),
            waiting=sa.select(sa.exists().where(unclaimed, blocked)),
            # Conditional, so that on PostgreSQL a relay that raced this one to the same rows claims none of them
            # (it waits for this row lock, then finds them claimed); SQLite has one writer anyway.
            claim=o.update().where(o.c.seq.in_(ids), o.c.sent_at.is_(None),
                                   sa.or_(o.c.claimed_until.is_(None), o.c.claimed_until < now))
            .values(claimed_until=sa.bindparam("until")),
            claimed=sa.select(o.c.event_id, o.c.event_type, o.c.subject, o.c.envelope, o.c.trace)
            .where(o.c.seq.in_(ids), o.c.claimed_until == sa.bindparam("until")).order_by(o.c.seq),
            sent=o.update().where(o.c.event_id.in_(ids)).values(sent_at=sa.bindparam("at")),
            released=o.update().where(o.c.event_id.in_(ids)).values(claimed_until=None),
        )


class SqlUnitOfWork(UnitOfWork):
    """A transaction on the service's database; `commit()` writes the collected domain events to the outbox.

    With a `relay`, the outbox rows a commit writes are born claimed by this process's relay and handed to it in
    memory: it publishes them at once, without reading or claiming them in a transaction of its own."""

    def __init__(self, engine: AsyncEngine, outbox: sa.Table, inbox: sa.Table, source: str,
                 relay: "OutboxRelay | None" = None, *, read_only: bool = False) -> None:
        super().__init__()
        self.engine, self.outbox, self.inbox, self.source, self.relay = engine, outbox, inbox, source, relay
        self.read_only = read_only
        self.conn: AsyncConnection
        self._staged: list[dict[str, Any]] = []

    async def __aenter__(self) -> "SqlUnitOfWork":
        # Writers take turns (sql.py). Queue this process's transactions here, in asyncio, instead of letting them
        # collide on the database's lock (on SQLite, its busy handler sleeps in growing steps: measured ~10x slower).
        self._lock = None if self.read_only else write_lock(self.engine)
        if self._lock:
            await self._lock.acquire()
        try:
            self.conn = await begin(self.engine, read_only=self.read_only)
        except BaseException:
            if self._lock:
                self._lock.release()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        # A consumer's handler is cancelled when the broker connection drops, possibly right here. The write lock
        # must be released whatever happens, or every later write of this process waits forever; and the
        # rollback/close runs shielded, so a cancellation cannot leave the connection mid-transaction either.
        try:
            await asyncio.shield(self._end())
        finally:
            if self._lock:
                self._lock.release()

    async def _end(self) -> None:
        try:
            await self.rollback()
        finally:
            await self.conn.close()

    def stage_new_events(self) -> None:
        new = self.collect_new_events()
        if new:
            trace = json.dumps(carrier())
            now = time.time()
            self._staged += [
                {"event_id": ce.id, "event_type": ce.type, "subject": ce.subject, "envelope": ce.model_dump_json(),
                 "trace": trace, "created_at": now}
                for ce in (CloudEvent.from_domain(self.source, subject, e) for subject, e in new)]

    async def commit(self) -> None:
        if self.read_only:
            raise RuntimeError("a read-only unit of work cannot commit")
        self.stage_new_events()
        rows, self._staged = self._staged, []
        owned: list[dict[str, Any]] = []
        epoch = 0
        if rows:
            if self.relay is not None and self.relay.accepting:
                epoch = self.relay.epoch
                elsewhere = await self._held_elsewhere(rows)
                until = time.time() + self.relay.lease_s
                for row in rows:
                    row["claimed_until"] = None if row["subject"] in elsewhere else until
                owned = [row for row in rows if row["claimed_until"] is not None]
            await self.conn.execute(_Statements.of(self.outbox).add, rows)
        await self.conn.commit()
        if self.relay is not None and rows:
            self.relay.committed(owned, len(rows) - len(owned), epoch)

    async def _held_elsewhere(self, rows: list[dict[str, Any]]) -> set[str]:
        """The aggregates among `rows` with an earlier unsent row this process's relay does not hold (another
        instance's, or one waiting for a retry). Their new rows keep the claim-in-order path (`OutboxRelay`'s
        sweep); the others' may be published straight away without breaking an aggregate's order."""
        assert self.relay is not None
        earlier = await self.conn.execute(_Statements.of(self.outbox).unsent_of,
                                          {"subjects": list({r["subject"] for r in rows})})
        return {subject for subject, event_id in earlier if not self.relay.holds(event_id)}

    async def rollback(self) -> None:
        if self.conn.in_transaction():
            await self.conn.rollback()

    async def processed(self, event_ids: list[str]) -> set[str]:
        return await processed(self.conn, self.inbox, event_ids)

    async def mark_processed(self, events: list[tuple[str, str]]) -> None:
        await mark_processed(self.conn, self.inbox, events)


@dataclasses.dataclass(frozen=True)
class _Row:
    """An outbox row on its way to the broker."""
    event_id: str
    event_type: str
    subject: str
    envelope: str
    trace: str
    until: float  # its claim (lease) runs out then: another relay may take it over

    @classmethod
    def of(cls, row: Any, until: float) -> "_Row":
        get = row.get if isinstance(row, dict) else row._mapping.get
        return cls(get("event_id"), get("event_type"), get("subject"), get("envelope"), get("trace"), until)


class OutboxRelay:
    """Moves committed outbox rows to the broker, in order per aggregate, marking them sent only after the confirm.

    Every instance of a service runs one. The rows an instance commits are born claimed by it (for `lease_s`) and
    handed to its relay in memory (`committed`): it publishes them at once — no transaction to find or claim them,
    so the one write transaction an event costs the relay is marking it sent, and that one is shared by every
    event confirmed meanwhile and kept off the event's path (a task of its own). A row nobody holds — its
    instance died, its publish failed, it was written while the relay was down or behind another instance's
    unsent row of the same aggregate — is taken by the sweep: every `poll_s` (sooner when told), any relay claims
    the oldest such rows whose lease ran out, in a transaction, and publishes them. At least once: a relay that
    dies between the confirm and the mark has its rows published again after the lease; consumers are idempotent.
    Per-aggregate order: a row is published straight away only when no earlier row of its aggregate is unsent
    elsewhere (`SqlUnitOfWork`); the sweep claims a row only when no earlier row of its aggregate is claimed; and
    after a failed publish nothing later counts as sent.
    """

    def __init__(self, engine: AsyncEngine, outbox: sa.Table, bus: EventBus, *, batch: int = 100,
                 lease_s: float = 10.0, poll_s: float = 0.5) -> None:
        self.engine, self.outbox, self.bus = engine, outbox, bus
        self.batch, self.lease_s, self.poll_s = batch, lease_s, poll_s
        self.accepting = False  # new rows are handed over in memory (False: not running, or the broker failing)
        self.epoch = 1  # counts failed publishes (each gives rows back to the sweep)
        self._mine: list[_Row] = []  # handed over, not yet published
        self._held: set[str] = set()  # event ids this relay holds: handed over or claimed, until marked sent
        self._sent: list[tuple[list[str], float]] = []  # confirmed, to be marked sent: (event ids, when)
        self._released: list[str] = []  # to be given back to the sweep (a failed publish)
        self._swept: set[str] = set()  # event ids the sweep claimed, until marked sent
        self._wake = asyncio.Event()
        self._sweep_now = asyncio.Event()
        self._marks = asyncio.Event()
        self._marked = asyncio.Event()  # for tests and stop(): set after each marking transaction
        self._tasks: list[asyncio.Task[None]] = []

    def wake(self) -> None:
        """Rows were written that only the sweep will take: sweep now rather than at the next poll."""
        self._sweep_now.set()

    def holds(self, event_id: str) -> bool:
        return event_id in self._held

    def committed(self, rows: list[dict[str, Any]], for_sweep: int = 0, epoch: int = 0) -> None:
        """Called by the unit of work after its commit: `rows` it wrote claimed for this relay, as its check in
        `epoch` allowed, and how many others it wrote for the sweep."""
        if rows and epoch != self.epoch:
            # A publish failed since the check (a database that yields mid-transaction): an earlier row of their
            # aggregate may have been given back to the sweep; these go after it, through the sweep too.
            self._released += [r["event_id"] for r in rows]
            self._marks.set()
            for_sweep += len(rows)
        elif rows:
            self._mine += [_Row.of(r, r["claimed_until"]) for r in rows]
            self._held.update(r["event_id"] for r in rows)
            self._wake.set()
        if for_sweep:
            self.wake()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name="outbox-relay"),
                       asyncio.create_task(self._sweep_forever(), name="outbox-sweep"),
                       asyncio.create_task(self._mark_forever(), name="outbox-marker")]

    async def backlog(self) -> int:
        return (await self.unsent())[0]

    async def unsent(self) -> tuple[int, float | None]:
        """The rows not yet confirmed by the broker: how many, and the oldest one's `created_at` (None: none)."""
        o = self.outbox
        async with self.engine.connect() as conn:
            count, oldest = (await conn.execute(
                sa.select(sa.func.count(), sa.func.min(o.c.created_at)).where(o.c.sent_at.is_(None)))).one()
        return count, oldest

    def settled(self) -> bool:
        """Nothing handed over, in flight or waiting to be marked (for tests and operators)."""
        return not (self._mine or self._held or self._swept or self._sent or self._released)

    async def _run(self) -> None:
        """The handed-over rows: published as they come, never waiting for the database."""
        await self.bus.connected.wait()
        self.accepting = True
        while True:
            # Cleared before the round, not after: a commit made while a round runs must start the next one at
            # once. (Cleared after, its wake-up was lost and its event waited for the next poll.)
            self._wake.clear()
            try:
                while self._mine:
                    await self._publish(self._take_mine(), swept=False)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Until the sweep gets a round through, new rows go to the sweep, which retries with a growing delay.
                self.accepting = False
                log.warning("outbox relay: %s; rows stay in the outbox and are retried", exc or type(exc).__name__)
                self.wake()
            await self._wake.wait()

    async def _sweep_forever(self) -> None:
        """The rows nobody holds. A task of its own: its claims wait for the write lock, the handed-over rows don't."""
        await self.bus.connected.wait()
        backoff = self.poll_s
        while True:
            self._sweep_now.clear()
            try:
                blocked = await self._sweep()
                self.accepting = True
                backoff = self.poll_s
                # Rows behind another instance's unsent row wait for its mark: look again soon, not at the poll.
                wait = min(0.02, self.poll_s) if blocked else self.poll_s
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.accepting = False
                log.warning("outbox relay: %s; rows stay in the outbox and are retried", exc or type(exc).__name__)
                backoff = wait = min(backoff * 2, 5.0)
            # asyncio.timeout, not wait_for: on Python 3.11 a cancel that arrives as the event is set is swallowed
            # by wait_for (cpython gh-86296), and a relay told to stop (or crash, in the tests) swept on forever.
            try:
                async with asyncio.timeout(wait):
                    await self._sweep_now.wait()
            except TimeoutError:
                pass

    def _take_mine(self) -> list[_Row]:
        batch, now = self._mine[:self.batch], time.time()
        del self._mine[:len(batch)]
        # A row whose lease is about to run out may be taken by another relay any moment: the sweep has it then.
        late = [r for r in batch if r.until - now < self.lease_s / 2]
        if late:
            self._held.difference_update(r.event_id for r in late)
            self.wake()
            return [r for r in batch if r not in late]
        return batch

    async def _sweep(self) -> bool:
        """Claim and publish the rows nobody holds, batch after batch. Returns whether rows were left unclaimed
        because an earlier row of their aggregate is claimed (by another relay: it will mark it soon)."""
        while True:
            ids, waiting = await self._claimable(self.engine.connect())  # a reader: no write lock when idle
            if not ids:
                return waiting
            async with transaction(self.engine) as conn:
                ids, _ = await self._claimable(nullcontext(conn))  # again, as the one writer
                if not ids:
                    continue
                now = time.time()
                until = now + self.lease_s
                statements = _Statements.of(self.outbox)
                await conn.execute(statements.claim, {"ids": ids, "now": now, "until": until})
                rows = [_Row.of(r, until) for r in (await conn.execute(
                    statements.claimed, {"ids": ids, "until": until})).all()]
            self._swept.update(r.event_id for r in rows)
            await self._publish(rows, swept=True)
            if len(rows) < self.batch:
                return False

    async def _claimable(self, connection: Any) -> tuple[list[int], bool]:
        statements, now = _Statements.of(self.outbox), time.time()
        async with connection as conn:
            ids = (await conn.execute(statements.claimable, {"now": now, "batch": self.batch})).scalars().all()
            waiting = not ids and (await conn.execute(statements.waiting, {"now": now})).scalar_one()
        return list(ids), bool(waiting)

    async def _publish(self, rows: list[_Row], *, swept: bool) -> None:
        if not rows:
            return
        # Publish the batch with confirms in flight together (DESIGN §7: ~4x the rate of one confirm at a time).
        results = await asyncio.gather(
            *(self.bus.publish(r.envelope, r.event_id, r.event_type, json.loads(r.trace)) for r in rows),
            return_exceptions=True)
        first_failure = next((i for i, res in enumerate(results) if isinstance(res, BaseException)), len(rows))
        if first_failure:
            self._sent.append(([r.event_id for r in rows[:first_failure]], time.time()))
            PUBLISHED.inc(first_failure)
        if first_failure < len(rows):
            # Retried by the sweep, in order (a success among them may repeat). What was handed over meanwhile
            # goes with them: published now, it could overtake an earlier row of its aggregate.
            failed = [r.event_id for r in rows[first_failure:]]
            if swept:
                self._swept.difference_update(failed)
            else:
                failed += [r.event_id for r in self._mine]
                self._mine.clear()
                self._held.difference_update(failed)
                self.epoch += 1
            self._released += failed
        self._marks.set()
        if first_failure < len(rows):
            first = results[first_failure]
            raise RuntimeError(f"{len(rows) - first_failure} of {len(rows)} events not confirmed "
                               f"({type(first).__name__}: {first})")

    async def _mark_forever(self) -> None:
        """Marks confirmed rows sent (and gives failed ones back to the sweep): one transaction for whatever was
        confirmed while the previous one waited for the write lock. Off the events' path: a publish never waits
        for it."""
        delay = 0.05
        while True:
            await self._marks.wait()
            self._marks.clear()
            try:
                await self._mark()
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox relay: marking rows sent failed (%s); retrying", exc or type(exc).__name__)
                self._marks.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _mark(self) -> None:
        sent, released = self._sent, self._released
        if not sent and not released:
            return
        self._sent, self._released = [], []
        statements = _Statements.of(self.outbox)
        try:
            async with transaction(self.engine) as conn:
                for ids, at in sent:
                    for chunk in _chunks(ids):
                        await conn.execute(statements.sent, {"ids": chunk, "at": at})
                for chunk in _chunks(released):
                    await conn.execute(statements.released, {"ids": chunk})
        except BaseException:
            self._sent[:0], self._released[:0] = sent, released
            raise
        for ids, _ in sent:
            self._held.difference_update(ids)
            self._swept.difference_update(ids)
        self._marked.set()

    async def stop(self) -> None:
        """Stop relaying; mark what was confirmed and give back to the sweep what was handed over but not
        published (another instance takes it at once, not after the lease); let go of the connection and lock."""
        self.accepting = False
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        self._released += [r.event_id for r in self._mine]
        self._held.difference_update(r.event_id for r in self._mine)
        self._mine.clear()
        try:
            await asyncio.wait_for(self._mark(), 2)
        except Exception as exc:  # the leases run out: the rows are taken over, published again at worst
            log.warning("outbox relay: could not mark rows at stop (%s)", exc or type(exc).__name__)


def _chunks(ids: list[str], size: int = 500) -> Iterator[list[str]]:
    for i in range(0, len(ids), size):
        yield ids[i:i + size]
