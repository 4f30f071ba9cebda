"""The kit's SQLite driver: calls run on the event loop's thread, so waiting for another process's write lock
must happen in asyncio — the loop keeps serving while a writer waits, and the writer gets the lock when it frees."""

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from msa_kit import sql
from msa_kit.runtime import Runtime

metadata = sa.MetaData()
outbox, inbox_table = sql.add_messaging_tables(metadata)


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
    async with sql.SqlUnitOfWork(engine, outbox, inbox_table, "/test") as uow:
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
        async with sql.SqlUnitOfWork(engine, outbox, inbox_table, "/test"):
            pass
    holder.join()
    async with sql.SqlUnitOfWork(engine, outbox, inbox_table, "/test") as uow:  # and works once it is free
        await uow.commit()


async def test_readers_never_wait_for_a_writer(engine):
    taken = threading.Event()
    holder = threading.Thread(target=hold_write_lock, args=(engine.url.database, 0.5, taken))
    holder.start()
    await asyncio.to_thread(taken.wait)
    started = time.perf_counter()
    async with sql.SqlUnitOfWork(engine, outbox, inbox_table, "/test", read_only=True) as uow:
        assert await uow.processed(["nope"]) == set()
    assert time.perf_counter() - started < 0.3
    holder.join()
