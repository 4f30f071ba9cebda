"""SQLAlchemy adapters every service shares: its own database, the outbox and inbox tables, the unit of work.

Each service owns one database (SQLite under var/ by default, PostgreSQL via DATABASE_URL); its instances share
it, and no other service ever opens it. SQLite transactions start with BEGIN IMMEDIATE so two instances
serialise their writes instead of failing on a lock upgrade halfway through.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
import weakref
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Generator

import aiosqlite
import sqlalchemy as sa
from prometheus_client import Counter
from sqlalchemy import event, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .events import CloudEvent, EventBus
from .runtime import Runtime
from .tracing import carrier
from .uow import UnitOfWork

log = logging.getLogger(__name__)

PUBLISHED = Counter("msa_outbox_published", "Outbox events the broker confirmed")


def add_messaging_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
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
    inbox = sa.Table(
        "processed_events", metadata,
        sa.Column("event_id", sa.String(36), primary_key=True),
        sa.Column("event_type", sa.String(100), nullable=False),
        sa.Column("processed_at", sa.Float, nullable=False),
    )
    return outbox, inbox


class InlineSqlite(aiosqlite.Connection):
    """aiosqlite's interface without its worker thread: each call runs at once, on the event loop's thread.

    aiosqlite hands every call (cursor, execute, fetch, close, commit, ...: twelve for a small write transaction
    through SQLAlchemy) to a thread and back, and those hand-offs cost more CPU than everything else a transaction
    does (bench/sql_bench.py measures both drivers side by side); they were most of what a service spent on an
    order. SQLite on a local file in WAL mode answers in microseconds and readers never wait; the one call that can
    wait — a writer taking the write lock another process holds — is not allowed to block the loop: BEGIN IMMEDIATE
    runs with no busy timeout and `begin()` retries it after an asyncio sleep.
    """

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    def __await__(self) -> Generator[Any, None, "InlineSqlite"]:
        return self._connect().__await__()

    async def _connect(self) -> "InlineSqlite":
        if self._connection is None:
            self._connection = self._connector()
        return self

    def stop(self) -> None:
        self._running = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    @classmethod
    async def open(cls, path: str) -> "InlineSqlite":
        # isolation_level=None: SQLite's own autocommit; we emit BEGIN ourselves (SQLAlchemy's documented recipe)
        return await cls(lambda: sqlite3.connect(path, isolation_level=None), 64)


BUSY_TIMEOUT_MS = 1000  # the rare waits of a reader (another process opening or closing the WAL): bounded
LOCK_WAIT_S = 10.0  # how long a writer waits for another process's write transaction before giving up


def database_engine(rt: Runtime) -> AsyncEngine:
    url = make_url(rt.database_url or f"sqlite+aiosqlite:///{rt.path('data', f'{rt.service}.db')}")
    if url.drivername != "sqlite+aiosqlite":
        return create_async_engine(url)
    path = url.database or ":memory:"
    engine = create_async_engine(url, async_creator=lambda: InlineSqlite.open(path))

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A reader (WAL: never blocked by the writer) takes no lock; so does any plain engine.connect(). A writer
        # (`begin()`) takes the write lock up front, and fails at once if another process holds it: it then waits
        # in asyncio, not in SQLite's busy handler on the loop's thread.
        if not conn.get_execution_options().get("msa_writer"):
            conn.exec_driver_sql("BEGIN")
            return
        raw = conn.connection.driver_connection._conn
        raw.execute("PRAGMA busy_timeout=0")
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        finally:
            raw.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return engine


async def begin(engine: AsyncEngine, *, read_only: bool = False) -> AsyncConnection:
    """A connection in a new transaction. On SQLite a writer whose BEGIN IMMEDIATE finds the write lock taken by
    another process (the other instance of the service) sleeps in asyncio and tries again, up to LOCK_WAIT_S."""
    delay, deadline = 0.0005, asyncio.get_running_loop().time() + LOCK_WAIT_S
    while True:
        conn = await engine.connect()
        try:
            await conn.execution_options(msa_writer=not read_only)
            await conn.begin()
            return conn
        except OperationalError as exc:
            await asyncio.shield(conn.close())
            locked = "database is locked" in str(exc) or "database is busy" in str(exc)
            if not locked or asyncio.get_running_loop().time() > deadline:
                raise
        except BaseException:
            await asyncio.shield(conn.close())
            raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.01)


class SchemaOutdated(RuntimeError):
    pass


async def create_schema(engine: AsyncEngine, metadata: sa.MetaData) -> None:
    """Create missing tables; refuse to start on a database whose tables lack columns this code needs (one made
    by an older version): a clear stop at start beats a 500 on every request. There are no migrations yet."""
    def create_and_check(sync_conn: sa.Connection) -> list[str]:
        metadata.create_all(sync_conn)
        inspector = sa.inspect(sync_conn)
        missing = []
        for table in metadata.sorted_tables:
            have = {c["name"] for c in inspector.get_columns(table.name)}
            missing += [f"{table.name}.{c.name}" for c in table.columns if c.name not in have]
        return missing

    async with _transaction(engine) as conn:
        missing = await conn.run_sync(create_and_check)
    if missing:
        raise SchemaOutdated(f"the database at {engine.url.database or engine.url} was made by an older version "
                             f"(missing {', '.join(missing)}): `make clean-data` removes the local databases")


# Keyed by the engine itself, weakly: keyed by id(), a new engine could inherit a dead one's lock (and its state).
_WRITE_LOCKS: weakref.WeakKeyDictionary[AsyncEngine, asyncio.Lock] = weakref.WeakKeyDictionary()


def _write_lock(engine: AsyncEngine) -> asyncio.Lock | None:
    if engine.dialect.name != "sqlite":
        return None
    lock = _WRITE_LOCKS.get(engine)
    if lock is None:
        lock = _WRITE_LOCKS[engine] = asyncio.Lock()
    return lock


@asynccontextmanager
async def _transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    lock = _write_lock(engine)
    if lock:
        await lock.acquire()
    try:
        conn = await begin(engine)
        try:
            yield conn
            await conn.commit()
        finally:
            await asyncio.shield(conn.close())  # rolls back what was not committed
    finally:
        if lock:
            lock.release()


class SqlUnitOfWork(UnitOfWork):
    """A transaction on the service's database; `commit()` writes the collected domain events to the outbox."""

    def __init__(self, engine: AsyncEngine, outbox: sa.Table, inbox: sa.Table, source: str,
                 on_commit: Callable[[], None] = lambda: None, *, read_only: bool = False) -> None:
        super().__init__()
        self.engine, self.outbox, self.inbox, self.source, self.on_commit = engine, outbox, inbox, source, on_commit
        self.read_only = read_only
        self.conn: AsyncConnection
        self._staged: list[dict[str, Any]] = []

    async def __aenter__(self) -> "SqlUnitOfWork":
        # SQLite has one writer at a time. Queue this process's transactions here, in asyncio, instead of letting
        # them collide on the file lock, where SQLite's busy handler sleeps in growing steps (measured: ~10x slower).
        self._lock = None if self.read_only else _write_lock(self.engine)
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
        if rows:
            await self.conn.execute(self.outbox.insert(), rows)
        await self.conn.commit()
        if rows:
            self.on_commit()

    async def rollback(self) -> None:
        if self.conn.in_transaction():
            await self.conn.rollback()

    async def processed(self, event_ids: list[str]) -> set[str]:
        rows = await self.conn.execute(sa.select(self.inbox.c.event_id).where(self.inbox.c.event_id.in_(event_ids)))
        return set(rows.scalars())

    async def mark_processed(self, events: list[tuple[str, str]]) -> None:
        if events:
            now = time.time()
            await self.conn.execute(self.inbox.insert(), [
                {"event_id": event_id, "event_type": event_type, "processed_at": now} for event_id, event_type in events])


class OutboxRelay:
    """Moves committed outbox rows to the broker, oldest first, marking them sent only after the confirm.

    Every instance of a service runs one; a row is claimed for a lease so two relays rarely publish the same
    row, and a crashed relay's lease simply runs out. A duplicate is harmless anyway: consumers are idempotent.
    Per-aggregate order holds across relays: a row is claimable only when no earlier row of the same aggregate
    is still unsent, and after a failed publish nothing later in the batch counts as sent.
    """

    def __init__(self, engine: AsyncEngine, outbox: sa.Table, bus: EventBus, *, batch: int = 100,
                 lease_s: float = 10.0, poll_s: float = 0.5) -> None:
        self.engine, self.outbox, self.bus = engine, outbox, bus
        self.batch, self.lease_s, self.poll_s = batch, lease_s, poll_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def backlog(self) -> int:
        async with self.engine.connect() as conn:
            return (await conn.execute(
                sa.select(sa.func.count()).select_from(self.outbox).where(self.outbox.c.sent_at.is_(None)))).scalar_one()

    async def _run(self) -> None:
        await self.bus.connected.wait()
        backoff = self.poll_s
        while True:
            # Cleared before the round, not after: a commit made while a round runs must start the next one at
            # once. (Cleared after, its wake-up was lost and its event waited for the next poll — up to poll_s.)
            self._wake.clear()
            try:
                while await self._relay_batch():
                    pass
                backoff = self.poll_s
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox relay: %s; rows stay in the outbox and are retried", exc or type(exc).__name__)
                backoff = min(backoff * 2, 5.0)
            try:
                await asyncio.wait_for(self._wake.wait(), backoff)
            except asyncio.TimeoutError:
                pass

    async def _relay_batch(self) -> bool:
        o = self.outbox
        earlier = o.alias("earlier")
        now = time.time()
        async with _transaction(self.engine) as conn:
            blocked = sa.exists().where(earlier.c.subject == o.c.subject, earlier.c.seq < o.c.seq,
                                        earlier.c.sent_at.is_(None),
                                        earlier.c.claimed_until.is_not(None), earlier.c.claimed_until >= now)
            ids = (await conn.execute(
                sa.select(o.c.seq).where(o.c.sent_at.is_(None),
                                         sa.or_(o.c.claimed_until.is_(None), o.c.claimed_until < now),
                                         ~blocked)
                .order_by(o.c.seq).limit(self.batch))).scalars().all()
            if not ids:
                return False
            await conn.execute(o.update().where(o.c.seq.in_(ids)).values(claimed_until=now + self.lease_s))
            rows = (await conn.execute(sa.select(o.c.seq, o.c.envelope, o.c.trace)
                                       .where(o.c.seq.in_(ids)).order_by(o.c.seq))).all()
        # Publish the batch with confirms in flight together (DESIGN §7: ~4x the rate of one confirm at a time).
        results = await asyncio.gather(
            *(self.bus.publish(json.loads(r.envelope), json.loads(r.trace)) for r in rows), return_exceptions=True)
        first_failure = next((i for i, res in enumerate(results) if isinstance(res, BaseException)), len(rows))
        sent = [r.seq for r in rows[:first_failure]]
        failed = [r.seq for r in rows[first_failure:]]  # retried, in order (a success among them may repeat)
        async with _transaction(self.engine) as conn:
            if sent:
                await conn.execute(o.update().where(o.c.seq.in_(sent)).values(sent_at=time.time()))
            if failed:
                await conn.execute(o.update().where(o.c.seq.in_(failed)).values(claimed_until=None))
        PUBLISHED.inc(len(sent))
        if failed:
            first = results[first_failure]
            raise RuntimeError(f"{len(failed)} of {len(rows)} events not confirmed ({type(first).__name__}: {first})")
        return len(rows) == self.batch

    async def stop(self) -> None:
        """Cancel the relay and wait until it has let go of its connection and the write lock."""
        if self._task:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=5)
