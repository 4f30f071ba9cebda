"""SQLite through the kit: what one unit of work costs, on the kit's driver and on stock aiosqlite.

The kit runs SQLite calls on the event loop's thread (`msa_kit.sql.InlineSqlite`); stock aiosqlite hands each call
to a worker thread and back. Both run the same units of work — a write (BEGIN IMMEDIATE, a SELECT, an INSERT,
COMMIT, as the inbox does) and a read (BEGIN, a SELECT) — on a WAL database in a temporary directory, one after
another; the figure is CPU time per unit of work (process time, so the machine's other load counts less).

Usage: .venv/bin/python bench/sql_bench.py [--quick]   (no network; leaves nothing behind)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def stock_aiosqlite_engine(path: Path) -> AsyncEngine:
    """The kit's settings on SQLAlchemy's stock aiosqlite driver (a worker thread per connection)."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}", connect_args={"isolation_level": None})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        cur = dbapi_conn.cursor()
        for pragma in ("PRAGMA journal_mode=WAL", "PRAGMA busy_timeout=1000", "PRAGMA synchronous=NORMAL"):
            cur.execute(pragma)
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("msa_writer") else "BEGIN")
    return engine


async def cpu_per_unit_of_work(engine: AsyncEngine, n: int) -> tuple[float, float]:
    from msa_kit.outbox import SqlUnitOfWork, add_messaging_tables
    from msa_kit.sql import create_schema

    metadata = sa.MetaData()
    outbox, inbox = add_messaging_tables(metadata)
    await create_schema(engine, metadata)
    figures = []
    for read_only in (False, True):
        started = time.process_time()
        for i in range(n):
            async with SqlUnitOfWork(engine, outbox, inbox, "/bench", read_only=read_only) as uow:
                await uow.processed([f"event-{i}"])
                if not read_only:
                    await uow.mark_processed([(f"event-{i}", "bench.done")])
                    await uow.commit()
        figures.append((time.process_time() - started) / n * 1000)
    await engine.dispose()
    return figures[0], figures[1]


def one_run(n: int) -> dict[str, tuple[float, float]]:
    from msa_kit.runtime import Runtime
    from msa_kit.sql import database_engine

    with tempfile.TemporaryDirectory() as tmp:
        rt = Runtime.for_service("bench")
        rt.database_url = f"sqlite+aiosqlite:///{Path(tmp) / 'kit.db'}"
        kit = asyncio.run(cpu_per_unit_of_work(database_engine(rt), n))
        stock = asyncio.run(cpu_per_unit_of_work(stock_aiosqlite_engine(Path(tmp) / "stock.db"), n))
    return {"kit": kit, "stock": stock}


def figures(quick: bool) -> list[dict]:
    """For bench/harness.py: CPU ms per write and per read unit of work, beside stock aiosqlite's."""
    n, runs = (300, 1) if quick else (1000, 3)
    results = [one_run(n) for _ in range(runs)]
    return [
        {"key": "sql.write_cpu_ms", "label": "SQLite write unit of work, CPU (kit's inline driver)", "unit": "ms",
         "runs": [r["kit"][0] for r in results], "reference": [r["stock"][0] for r in results],
         "reference_label": "stock aiosqlite (worker thread)",
         "note": f"{n} units of work per run: BEGIN IMMEDIATE, SELECT, INSERT, COMMIT on a WAL file"},
        {"key": "sql.read_cpu_ms", "label": "SQLite read unit of work, CPU (kit's inline driver)", "unit": "ms",
         "runs": [r["kit"][1] for r in results], "reference": [r["stock"][1] for r in results],
         "reference_label": "stock aiosqlite (worker thread)"},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run")
    args = parser.parse_args()
    for f in figures(args.quick):
        print(f"{f['label']}: {statistics.median(f['runs']):.2f} ms per unit of work; "
              f"{f['reference_label']}: {statistics.median(f['reference']):.2f} ms")


if __name__ == "__main__":
    main()
