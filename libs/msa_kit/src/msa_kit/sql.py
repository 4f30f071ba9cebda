"""The database adapter every service shares: its engine, its transactions, its tables' creation — on SQLite or
PostgreSQL, chosen by `DATABASE_URL`; the difference between the two lives here and nowhere else.

Each service owns one database (SQLite under var/ by default; `postgresql+asyncpg://…` in docker compose, or
wherever DATABASE_URL says); its instances share it, and no other service ever opens it.

One promise on both: **writers take turns.** A write transaction (`begin()`, `transaction()`, a unit of work that
is not read-only) holds the database's writer lock from its first statement to its end, so the services' handlers
may read, decide and write (stock, an order's status, an idempotency key) without a lost update between two
instances. SQLite has one writer by nature: BEGIN IMMEDIATE takes its write lock up front. On PostgreSQL a
transaction-level advisory lock (`pg_advisory_xact_lock`, one key per database) gives the same turn-taking, while
readers (read-only units of work, the relay's look for work) never wait: PostgreSQL's MVCC, SQLite's WAL. Inside a
process, writers queue on an asyncio lock first, so at most one of its connections waits on the database's lock.
Row-level locks (SELECT … FOR UPDATE) would let PostgreSQL run more writers at once; every handler would then have
to know which rows it must lock, and SQLite could not check it: not worth it at this size.

The outbox, the inbox and the unit of work that writes both are in outbox.py and inbox.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
import weakref
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Generator

import aiosqlite
import sqlalchemy as sa
from sqlalchemy import event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .runtime import Runtime

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


# The advisory lock PostgreSQL writers take turns on; advisory locks are per database, so one key serves every
# service (each has a database of its own). "msa" in ASCII.
PG_WRITER_LOCK = 0x6D7361
_PG_TAKE_TURN = sa.text(f"SELECT set_config('lock_timeout', '{int(LOCK_WAIT_S * 1000)}ms', true), "
                        f"pg_advisory_xact_lock({PG_WRITER_LOCK})")


def database_url(rt: Runtime) -> URL:
    """The service's database: DATABASE_URL, or a SQLite file under the var dir. `postgresql://` means asyncpg."""
    url = make_url(rt.database_url or f"sqlite+aiosqlite:///{rt.path('data', f'{rt.service}.db')}")
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+asyncpg")
    if url.drivername not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        raise ValueError(f"DATABASE_URL: {url.drivername!r} is not supported; use sqlite+aiosqlite:///<file> or "
                         "postgresql+asyncpg://<user>:<password>@<host>/<database>")
    return url


def database_engine(rt: Runtime) -> AsyncEngine:
    url = database_url(rt)
    if url.drivername == "postgresql+asyncpg":
        # The same durability as the SQLite files (WAL, synchronous=NORMAL): a commit survives the program's crash
        # at once, and the machine's within PostgreSQL's WAL writer delay (~0.2 s). With a flush to disk on every
        # commit (synchronous_commit=on), each of the ~7 commits an order costs waits for the disk while the
        # writers of its database queue behind it: measured here (bench/backends_bench.py --quick, 4 clients), 20
        # orders/s on PostgreSQL beside 62 on SQLite; with it off, 48 beside 43 in the same run.
        # A database that must not lose the last fraction of a second sets it back: ?synchronous_commit=on.
        synchronous = url.query.get("synchronous_commit", "off")
        url = url.difference_update_query(["synchronous_commit"])
        # A small pool: writers take turns (one connection each process waits with), readers are short.
        return create_async_engine(url, pool_size=5, max_overflow=10,
                                   connect_args={"server_settings": {"synchronous_commit": str(synchronous)}})
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
    """A connection in a new transaction; a writer's holds the database's writer lock. On SQLite a writer whose
    BEGIN IMMEDIATE finds the write lock taken by another process (the other instance of the service) sleeps in
    asyncio and tries again, up to LOCK_WAIT_S; on PostgreSQL it waits for the advisory lock in the server, as long."""
    delay, deadline = 0.0005, asyncio.get_running_loop().time() + LOCK_WAIT_S
    while True:
        conn = await engine.connect()
        try:
            await conn.execution_options(msa_writer=not read_only)
            await conn.begin()
            if not read_only and engine.dialect.name == "postgresql":
                await conn.execute(_PG_TAKE_TURN)  # one round trip: the wait's bound, then the turn itself
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

    async with transaction(engine) as conn:  # a writer: two instances starting together create the tables once
        missing = await conn.run_sync(create_and_check)
    if missing:
        raise SchemaOutdated(f"the database at {engine.url.database or engine.url} was made by an older version "
                             f"(missing {', '.join(missing)}): `make clean-data` removes the local databases")


# Keyed by the engine itself, weakly: keyed by id(), a new engine could inherit a dead one's lock (and its state).
_WRITE_LOCKS: weakref.WeakKeyDictionary[AsyncEngine, asyncio.Lock] = weakref.WeakKeyDictionary()


def write_lock(engine: AsyncEngine) -> asyncio.Lock:
    """This process's queue for the database's writer lock (one per engine)."""
    lock = _WRITE_LOCKS.get(engine)
    if lock is None:
        lock = _WRITE_LOCKS[engine] = asyncio.Lock()
    return lock


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A write transaction, committed at the end of the block (rolled back on an exception)."""
    lock = write_lock(engine)
    await lock.acquire()
    try:
        conn = await begin(engine)
        try:
            yield conn
            await conn.commit()
        finally:
            await asyncio.shield(conn.close())  # rolls back what was not committed
    finally:
        lock.release()


