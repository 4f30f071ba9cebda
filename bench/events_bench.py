"""Events: what the reliable path costs, and how fast the saga closes. Prints figures; never passes or fails on time.

1. events/s through the kit's outbox → RabbitMQ → idempotent consumer (SQLite on both ends), beside raw aio-pika
   (publish with 100 confirms in flight + consume with prefetch 100 and per-message ack) on the same broker.
2. order placed → CONFIRMED latency at 50 and 200 orders/s through the gateway of a real topology (free ports),
   measured from the order service's own outbox timestamps (order.placed row → order.confirmed row), so polling
   adds nothing to what is measured.

Usage: .venv/bin/python bench/events_bench.py [--quick]   (only 127.0.0.1; bounded; leaves nothing running)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import aio_pika
import httpx
import sqlalchemy as sa

from msa_cli.namespace import drop_namespace

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


# ---- 1. throughput -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pinged:
    type: ClassVar[str] = "bench.pinged"
    n: int


@dataclass
class Pinger:
    id: str
    n: int
    events: list[Any] = field(default_factory=list)

    def aggregate_id(self) -> str:
        return self.id


async def kit_throughput(n: int, tmp: Path) -> float:
    from pydantic import BaseModel

    from msa_kit.events import EventBus
    from msa_kit.inbox import Inbox, InboxDispatcher
    from msa_kit.runtime import Runtime
    from msa_kit.outbox import OutboxRelay, SqlUnitOfWork, add_messaging_tables
    from msa_kit.sql import create_schema, database_engine

    namespace = f"bench-{uuid.uuid4().hex[:6]}."
    os.environ.update(MSA_VAR_DIR=str(tmp), MSA_NAMESPACE=namespace, AMQP_URL=AMQP_URL)

    def runtime(service: str) -> Runtime:
        rt = Runtime.for_service(service)
        rt.instance_id = f"{service}-bench"
        return rt

    producer_rt, consumer_rt = runtime("producer"), runtime("consumer")
    meta_p, meta_c = sa.MetaData(), sa.MetaData()
    outbox, inbox = add_messaging_tables(meta_p)
    outbox_c, inbox_c = add_messaging_tables(meta_c)
    engine_p, engine_c = database_engine(producer_rt), database_engine(consumer_rt)
    await create_schema(engine_p, meta_p)
    await create_schema(engine_c, meta_c)

    done = asyncio.Event()
    consumed = 0

    class PingedV1(BaseModel):
        n: int

    async def on_ping(_payload: PingedV1, _uow: Any) -> None:
        nonlocal consumed
        consumed += 1
        if consumed == n:
            done.set()

    consumer_bus = EventBus(consumer_rt, prefetch=100)
    consumer_bus.subscribe(Pinged.type, InboxDispatcher(
        Inbox(lambda: SqlUnitOfWork(engine_c, outbox_c, inbox_c, "/consumer"), max_batch=100), PingedV1, on_ping))
    consumer_bus.start()
    await consumer_bus.connected.wait()
    producer_bus = EventBus(producer_rt)
    producer_bus.start()
    await producer_bus.connected.wait()
    relay = OutboxRelay(engine_p, outbox, producer_bus, batch=100)

    # The events are committed first (as requests would have); then the relay drains and the consumer applies.
    for start in range(0, n, 500):
        async with SqlUnitOfWork(engine_p, outbox, inbox, "/producer") as uow:
            for i in range(start, min(n, start + 500)):
                p = Pinger(str(i), i)
                p.events.append(Pinged(i))
                uow.seen.append(p)
            await uow.commit()
    started = time.perf_counter()
    relay.start()
    await asyncio.wait_for(done.wait(), timeout=120)
    took = time.perf_counter() - started
    await relay.stop()
    for bus in (producer_bus, consumer_bus):
        await bus.close()
    await asyncio.to_thread(drop_namespace, AMQP_URL, namespace)
    return n / took


async def raw_throughput(n: int) -> float:
    namespace = f"bench-{uuid.uuid4().hex[:6]}."
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=100)
        exchange = await channel.declare_exchange(f"{namespace}raw", aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(f"{namespace}raw.q", durable=True)
        await queue.bind(exchange, "bench.#")
        got = 0
        done = asyncio.Event()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal got
            await message.ack()
            got += 1
            if got == n:
                done.set()

        await queue.consume(on_message)
        body = b"x" * 100
        started = time.perf_counter()
        for start in range(0, n, 100):  # 100 confirms in flight at a time
            await asyncio.gather(*(exchange.publish(aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                                    routing_key="bench.pinged") for _ in range(start, min(n, start + 100))))
        await asyncio.wait_for(done.wait(), timeout=120)
        took = time.perf_counter() - started
        await queue.delete(if_unused=False, if_empty=False)
        await exchange.delete()
    return n / took


# ---- 2. saga latency -----------------------------------------------------------------------------------------

async def paced_orders(gateway: str, rate: float, seconds: float) -> tuple[int, int]:
    """Open-loop: one order every 1/rate s for `seconds`, whatever the answers take. Returns (sent, failed)."""
    async with httpx.AsyncClient(base_url=gateway, timeout=10,
                                 limits=httpx.Limits(max_connections=400)) as http:
        name, password = f"bench{uuid.uuid4().hex[:8]}", "bench-Passw0rd"
        await http.post("/api/users", json={"username": name, "password": password})
        token = (await http.post("/api/auth/token", data={"username": name, "password": password})).json()["access_token"]
        skus = [p["sku"] for p in (await http.get("/api/catalog/products")).json()]
        headers = {"Authorization": f"Bearer {token}"}
        failed = 0

        async def one(i: int) -> None:
            nonlocal failed
            try:
                r = await http.post("/api/orders", json={"items": [{"sku": skus[i % len(skus)], "quantity": 1}]},
                                    headers=headers)
                failed += r.status_code != 201
            except httpx.HTTPError:
                failed += 1

        tasks = []
        count = int(rate * seconds)
        started = time.perf_counter()
        for i in range(count):
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        return count, failed


def confirm_latencies(order_db: Path, since: float) -> tuple[list[float], int]:
    with sqlite3.connect(order_db) as db:
        rows = db.execute("SELECT subject, event_type, created_at FROM outbox WHERE created_at >= ?", (since,)).fetchall()
    placed = {s: t for s, ty, t in rows if ty == "order.placed"}
    confirmed = {s: t for s, ty, t in rows if ty == "order.confirmed"}
    return [(confirmed[s] - placed[s]) * 1000 for s in placed if s in confirmed], len(placed) - len(confirmed)


HOPS = ("order relay", "→ catalog applied", "catalog relay", "→ order applied")


def hop_latencies(var_dir: Path, since: float) -> dict[str, list[float]]:
    """Each hop of the saga (ms), from the two databases' own timestamps: order.placed written → sent (the order
    service's relay) → applied by the catalog (broker + inbox) → stock.reserved sent (the catalog's relay) →
    applied by the order service (broker + inbox)."""
    with sqlite3.connect(var_dir / "data" / "order.db") as db:
        placed = {s: (eid, c, t) for s, eid, c, t in db.execute(
            "SELECT subject, event_id, created_at, sent_at FROM outbox WHERE event_type = 'order.placed' "
            "AND created_at >= ?", (since,))}
        applied_o = dict(db.execute("SELECT event_id, processed_at FROM processed_events WHERE processed_at >= ?",
                                    (since,)).fetchall())
    with sqlite3.connect(var_dir / "data" / "catalog.db") as db:
        reserved = {s: (eid, t) for s, eid, t in db.execute(
            "SELECT subject, event_id, sent_at FROM outbox WHERE event_type = 'stock.reserved' AND created_at >= ?",
            (since,))}
        applied_c = dict(db.execute("SELECT event_id, processed_at FROM processed_events WHERE processed_at >= ?",
                                    (since,)).fetchall())
    hops: dict[str, list[float]] = {h: [] for h in HOPS}
    for subject, (eid, created, sent) in placed.items():
        if subject not in reserved or eid not in applied_c or sent is None:
            continue
        r_eid, r_sent = reserved[subject]
        if r_sent is None or r_eid not in applied_o:
            continue
        stamps = [created, sent, applied_c[eid], r_sent, applied_o[r_eid]]
        for h, a, b in zip(HOPS, stamps, stamps[1:]):
            hops[h].append((b - a) * 1000)
    return hops


def top_up_stock(gateway: str, catalog: str) -> None:
    """Enough stock that every order of the run can be confirmed (the seed has 25–500 of each)."""
    from msa_cli.spec import admin_token

    products = httpx.get(f"{gateway}/api/catalog/products", timeout=10).json()
    for p in products:
        r = httpx.put(f"{catalog}/admin/products/{p['sku']}", timeout=10,
                      headers={"Authorization": f"Bearer {admin_token()}"},
                      json={"name": p["name"], "price_cents": p["price_cents"], "stock": 10_000_000})
        r.raise_for_status()


def saga_latency(rates: list[float], seconds: float, runs: int = 1,
                 hops: list[tuple[float, dict[str, list[float]]]] | None = None,
                 ) -> list[tuple[float, int, int, list[float], int]]:
    """(rate, sent, failed, latencies ms, still open) for each run × rate, all on one fresh topology; `hops`, if
    given, receives (rate, hop latencies) for each run × rate."""
    from msa_cli.namespace import scratch_topology

    results = []
    with scratch_topology() as topology:
        spec = topology.spec
        gateway = spec.program("gateway").url
        top_up_stock(gateway, spec.program("catalog-1").url)
        for _ in range(runs):
            for rate in rates:
                since = time.time()
                sent, failed = asyncio.run(paced_orders(gateway, rate, seconds))
                time.sleep(2.0)  # let the last sagas close
                latencies, open_ = confirm_latencies(spec.var_dir / "data" / "order.db", since)
                if hops is not None:
                    hops.append((rate, hop_latencies(spec.var_dir, since)))
                results.append((rate, sent, failed, latencies, open_))
    return results


def throughput(n: int, runs: int) -> tuple[list[float], list[float]]:
    """(kit, raw) events/s, one of each per run, interleaved so that a noisy moment hits both."""
    kit, raw = [], []
    with tempfile.TemporaryDirectory(prefix="msa-bench-") as tmp:
        for i in range(runs):
            kit.append(asyncio.run(kit_throughput(n, Path(tmp) / f"run{i}")))
            raw.append(asyncio.run(raw_throughput(n)))
    return kit, raw


def figures(quick: bool) -> list[dict]:
    """For bench/harness.py: events/s beside raw aio-pika, and placed → CONFIRMED at 50 and 200 orders/s."""
    n, runs = (500, 1) if quick else (5000, 3)
    kit, raw = throughput(n, runs)
    rates, seconds = ([50.0], 2.0) if quick else ([50.0, 200.0], 5.0)
    saga = saga_latency(rates, seconds, runs)
    out = [{"key": "events.rps", "unit": "events/s", "runs": kit, "reference": raw,
            "reference_label": "raw aio-pika",
            "note": f"{n} persistent 100-byte events per run: SQLite outbox → relay (batched confirms) → RabbitMQ → "
                    f"idempotent consumer (inbox in SQLite); the reference publishes with 100 confirms in flight "
                    f"and consumes with prefetch 100, per-message ack, on the same broker"}]
    for rate in (50.0, 200.0):
        mine = [r for r in saga if r[0] == rate]
        if not mine:
            out += [{"key": f"saga.r{rate:.0f}.{q}", "skipped": "full run only"} for q in ("p50_ms", "p99_ms")]
            continue
        failed, open_ = sum(r[2] for r in mine), sum(r[4] for r in mine)
        out.append({"key": f"saga.r{rate:.0f}.p50_ms", "unit": "ms", "runs": [pct(r[3], 50) for r in mine if r[3]]})
        out.append({"key": f"saga.r{rate:.0f}.p99_ms", "unit": "ms", "runs": [pct(r[3], 99) for r in mine if r[3]],
                    "note": f"open loop, {seconds:g} s per run through the gateway; from the order service's own "
                            f"outbox timestamps (order.placed row → order.confirmed row); failed placements: "
                            f"{failed}, not confirmed 2 s after the last: {open_}"})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small run (CI keeps the harness from rotting)")
    ap.add_argument("--only", choices=("throughput", "saga"), help="one half of the benchmark")
    ap.add_argument("--rates", type=lambda v: [float(r) for r in v.split(",")], help="saga rates, e.g. 50,200")
    ap.add_argument("--seconds", type=float, help="saga: seconds per rate and run")
    ap.add_argument("--runs", type=int, help="runs of each half (the saga's all on one topology)")
    args = ap.parse_args()
    n = 500 if args.quick else 5000
    runs = args.runs or (1 if args.quick else 3)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.only != "saga":
        kit, raw = throughput(n, runs)
        print(f"\nevents/s, {n} events, median of {runs} (min–max)")
        print(f"  outbox → broker → idempotent consumer : {statistics.median(kit):8,.0f}  "
              f"({min(kit):,.0f}–{max(kit):,.0f})")
        print(f"  raw aio-pika, 100 confirms in flight  : {statistics.median(raw):8,.0f}  "
              f"({min(raw):,.0f}–{max(raw):,.0f})")
        print(f"  ratio                                 : {statistics.median(kit) / statistics.median(raw):8.0%}")
    if args.only == "throughput":
        return
    rates = args.rates or ([20.0] if args.quick else [50.0, 200.0])
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    saga_runs = args.runs or 1
    print(f"\norder placed → CONFIRMED, {seconds:g} s per rate, through the gateway of a fresh local topology")
    print(f"  {'orders/s':>8} {'sent':>6} {'failed':>6} {'open':>5} {'p50 ms':>8} {'p99 ms':>8}   "
          f"hops p50/p99 ms: {' | '.join(HOPS)}")
    hops: list[tuple[float, dict[str, list[float]]]] = []
    for (rate, sent, failed, lat, open_), (_, hop) in zip(saga_latency(rates, seconds, saga_runs, hops), hops):
        p50 = f"{pct(lat, 50):8.1f}" if lat else "       –"
        p99 = f"{pct(lat, 99):8.1f}" if lat else "       –"
        per_hop = " | ".join(f"{pct(v, 50):.1f}/{pct(v, 99):.1f}" if v else "–" for v in hop.values())
        print(f"  {rate:8.0f} {sent:6d} {failed:6d} {open_:5d} {p50} {p99}   {per_hop}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
