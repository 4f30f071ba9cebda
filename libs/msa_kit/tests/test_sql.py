"""The kit's database adapter. SQLite: calls run on the event loop's thread, so waiting for another process's write
lock must happen in asyncio. Both backends: writers of two instances take turns, readers never wait."""

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from msa_kit import sql
from msa_kit.outbox import SqlUnitOfWork, add_messaging_tables
from msa_kit.runtime import Runtime

metadata = sa.MetaData()
outbox, inbox_table = add_messaging_tables(metadata)


@pytest.fixture
async def engine(tmp_path: Path):
    rt = Runtime.for_service("test")
    rt.database_url = f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    engine = sql.database_engine(rt)
    await sql.create_schema(engine, metadata)
    yield engine
    await engine.dispose()


def hold_write_lock(path: str, seconds: float, taken: threading.Event) -> None:
    """Another process's writer, as far as SQLite can tell: its own connection, holding the write lock."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    taken.set()
    time.sleep(seconds)
    conn.execute("COMMIT")
    conn.close()


async def test_a_writer_waits_for_another_writer_in_asyncio_without_blocking_the_loop(engine):
    taken = threading.Event()
    holder = threading.Thread(target=hold_write_lock, args=(engine.url.database, 0.4, taken))
    holder.start()
    await asyncio.to_thread(taken.wait)
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(ticker())
    started = time.perf_counter()
    async with SqlUnitOfWork(engine, outbox, inbox_table, "/test") as uow:
        waited = time.perf_counter() - started
        await uow.mark_processed([("e-1", "test.happened")])
        await uow.commit()
    ticking.cancel()
    holder.join()
    assert waited >= 0.3, waited  # it did wait for the other writer...
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert len(ticks) >= 20 and max(gaps) < 0.2, (len(ticks), max(gaps))  # ...while the loop kept running
    async with engine.connect() as conn:
        assert (await conn.execute(sa.select(inbox_table.c.event_id))).scalars().all() == ["e-1"]


async def test_a_writer_gives_up_after_the_lock_wait_limit(engine, monkeypatch):
    monkeypatch.setattr(sql, "LOCK_WAIT_S", 0.2)
    taken = threading.Event()
    holder = threading.Thread(target=hold_write_lock, args=(engine.url.database, 0.6, taken))
    holder.start()
    await asyncio.to_thread(taken.wait)
    with pytest.raises(OperationalError, match="locked"):
        async with SqlUnitOfWork(engine, outbox, inbox_table, "/test"):
            pass
    holder.join()
    async with SqlUnitOfWork(engine, outbox, inbox_table, "/test") as uow:  # and works once it is free
        await uow.commit()


async def test_readers_never_wait_for_a_writer(engine):
    taken = threading.Event()
    holder = threading.Thread(target=hold_write_lock, args=(engine.url.database, 0.5, taken))
    holder.start()
    await asyncio.to_thread(taken.wait)
    started = time.perf_counter()
    async with SqlUnitOfWork(engine, outbox, inbox_table, "/test", read_only=True) as uow:
        assert await uow.processed(["nope"]) == set()
    assert time.perf_counter() - started < 0.3
    holder.join()


# ---- the same promise on both backends: writers of two instances take turns, readers never wait -------------------

counters = sa.Table("counters", metadata, sa.Column("name", sa.String(20), primary_key=True),
                    sa.Column("value", sa.Integer, nullable=False))


async def test_two_instances_read_modify_write_without_a_lost_update(new_database, engine_for):
    """What the services' handlers rely on (stock, an order's status, an idempotency key): a write unit of work
    reads, decides and writes while the other instance's writers wait, on SQLite and on PostgreSQL alike."""
    url = await new_database("counters")
    a, b = engine_for(url), engine_for(url)
    try:
        await sql.create_schema(a, metadata)
        async with sql.transaction(a) as conn:
            await conn.execute(counters.insert().values(name="stock", value=0))

        async def increment(engine) -> None:
            async with SqlUnitOfWork(engine, outbox, inbox_table, "/test") as uow:
                value = (await uow.conn.execute(sa.select(counters.c.value))).scalar_one()
                await asyncio.sleep(0)  # let the other instance's writer try to get in between
                await uow.conn.execute(counters.update().values(value=value + 1))
                await uow.commit()

        await asyncio.gather(*(increment(engine) for _ in range(25) for engine in (a, b)))
        async with SqlUnitOfWork(a, outbox, inbox_table, "/test", read_only=True) as uow:
            assert (await uow.conn.execute(sa.select(counters.c.value))).scalar_one() == 50
    finally:
        await a.dispose()
        await b.dispose()


async def test_a_reader_does_not_wait_for_the_other_instances_writer(new_database, engine_for):
    url = await new_database("readers")
    a, b = engine_for(url), engine_for(url)
    try:
        await sql.create_schema(a, metadata)
        async with SqlUnitOfWork(a, outbox, inbox_table, "/test"):  # holds the writer lock until the block ends
            async with asyncio.timeout(2):
                async with SqlUnitOfWork(b, outbox, inbox_table, "/test", read_only=True) as reader:
                    assert await reader.processed(["nope"]) == set()
            waiting = asyncio.create_task(_write_once(b))
            await asyncio.sleep(0.3)
            assert not waiting.done()  # the other instance's writer waits for its turn ...
        await asyncio.wait_for(waiting, 5)  # ... and gets it once the first ends
    finally:
        await a.dispose()
        await b.dispose()


async def _write_once(engine) -> None:
    async with SqlUnitOfWork(engine, outbox, inbox_table, "/test") as uow:
        await uow.mark_processed([("e-1", "test.happened")])
        await uow.commit()


def test_database_url_picks_a_supported_driver(tmp_path: Path):
    rt = Runtime.for_service("test")
    rt.database_url = "postgresql://u:p@db/catalog"
    assert sql.database_url(rt).drivername == "postgresql+asyncpg"  # plain postgresql:// means asyncpg
    rt.database_url = "mysql://u:p@db/catalog"
    with pytest.raises(ValueError, match="not supported"):
        sql.database_url(rt)
