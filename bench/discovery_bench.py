"""Discovery: how fast a change reaches a watcher, and what the registry sustains. Prints figures; never asserts.

1. Change-to-notification latency of a blocking query: a watcher parked on
   `GET /v1/health/service/x?index=N&wait=30s`, then a change (register, TTL pass→fail, deregister, fail→pass);
   the time from sending the change until the watcher has its answer.
2. Under load: 1,000 registered instances (100 services × 10), each heartbeating its TTL check once a second,
   100 watchers parked on blocking queries (one per service) woken by a trickle of real changes (one more
   instance per service flips between passing and critical every 50 ms, somewhere), and closed-loop readers of
   `GET /v1/health/service/<name>?passing`, for a bounded time. Requests/s and p50/p99 of each.

The registry runs as `python -m msa_discovery` on a free 127.0.0.1 port with a temporary data dir (persistence
on, as under `make up`; `--in-memory` turns it off), and is stopped at the end. Client and server share this
machine's cores: the figures are what one box does, printed with both processes' CPU use.

Usage: .venv/bin/python bench/discovery_bench.py [--quick] [--in-memory]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp


@dataclass(frozen=True)
class Sizes:
    notifications: int  # changes measured in part 1
    services: int  # part 2: service names ...
    per_service: int  # ... × instances of each
    watchers: int
    readers: int  # closed-loop readers (concurrent GETs)
    seconds: float
    churn_every_s: float  # one real change (an instance's check flips) this often, to wake watchers


FULL = Sizes(notifications=200, services=100, per_service=10, watchers=100, readers=32, seconds=10.0,
             churn_every_s=0.05)
QUICK = Sizes(notifications=30, services=10, per_service=10, watchers=10, readers=8, seconds=2.0, churn_every_s=0.05)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


# ---- the registry under test ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def discovery(in_memory: bool) -> Iterator[tuple[str, int]]:
    """`python -m msa_discovery` on a free port; yields (base url, pid); always stopped on the way out."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="discovery-bench-") as tmp:
        env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "LOG_LEVEL": "WARNING",
               "DATA_DIR": "" if in_memory else str(Path(tmp) / "data")}
        log = open(Path(tmp) / "discovery.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "msa_discovery"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 15
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"msa_discovery did not start:\n{(Path(tmp) / 'discovery.log').read_text()}")
                time.sleep(0.05)
            yield f"http://127.0.0.1:{port}", proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), to tell a busy server from a busy client."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def registration(service: str, instance: str, port: int, ttl: str = "60s") -> dict[str, object]:
    return {"Name": service, "ID": instance, "Address": "127.0.0.1", "Port": port, "Check": {"TTL": ttl}}


async def put(session: aiohttp.ClientSession, url: str, json: object = None) -> None:
    async with session.put(url, json=json) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"PUT {url}: {r.status} {await r.text()}")


# ---- 1. change → notification -----------------------------------------------------------------------------------

async def notification_latency(base: str, n: int) -> dict[str, list[float]]:
    by_kind: dict[str, list[float]] = {}
    async with aiohttp.ClientSession(base) as watcher, aiohttp.ClientSession(base) as writer:
        await put(writer, "/v1/agent/service/register", registration("x", "x-1", 9001))
        await put(writer, "/v1/agent/check/pass/service:x-1")
        changes = [
            ("register an instance", lambda: put(writer, "/v1/agent/service/register", registration("x", "x-2", 9002))),
            ("TTL pass → fail", lambda: put(writer, "/v1/agent/check/fail/service:x-1")),
            ("TTL fail → pass", lambda: put(writer, "/v1/agent/check/pass/service:x-1")),
            ("deregister an instance", lambda: put(writer, "/v1/agent/service/deregister/x-2")),
        ]
        for i in range(n):
            kind, change = changes[i % len(changes)]
            async with watcher.get("/v1/health/service/x") as r:
                await r.read()
                index = r.headers["X-Consul-Index"]

            async def watch() -> float:
                async with watcher.get(f"/v1/health/service/x?index={index}&wait=30s") as r:
                    await r.read()
                return time.perf_counter()

            task = asyncio.create_task(watch())
            await asyncio.sleep(0.01)  # let it park (were it not parked yet, it would return at once: same figure)
            sent = time.perf_counter()
            await change()
            by_kind.setdefault(kind, []).append(await asyncio.wait_for(task, 10) - sent)
    return by_kind


# ---- 2. under load ----------------------------------------------------------------------------------------------

@dataclass
class Load:
    reads: list[float] = field(default_factory=list)
    passes: list[float] = field(default_factory=list)
    wakes: list[float] = field(default_factory=list)  # change sent → that service's watcher answered
    wakeups: int = 0
    changes: int = 0
    errors: int = 0


async def under_load(base: str, sizes: Sizes, server_pid: int) -> tuple[Load, float, float, float]:
    services = [f"svc-{i:03d}" for i in range(sizes.services)]
    instances = [(s, f"{s}-{j}") for s in services for j in range(sizes.per_service)]
    out = Load()
    pending: dict[str, float] = {}  # service -> when its latest change was sent
    connector = aiohttp.TCPConnector(limit=128)
    async with aiohttp.ClientSession(base, connector=connector) as http, \
            aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(limit=0)) as parked:
        sem = asyncio.Semaphore(64)

        async def setup(service: str, instance: str, port: int) -> None:
            async with sem:
                await put(http, "/v1/agent/service/register", registration(service, instance, port, ttl="30s"))
                await put(http, f"/v1/agent/check/pass/service:{instance}")

        # One more instance per service that does not heartbeat: the churn flips its check (TTL 30 s outlasts the run).
        flippers = {s: f"{s}-flip" for s in services}
        started = time.perf_counter()
        await asyncio.gather(*(setup(s, i, 10000 + n) for n, (s, i) in enumerate(instances)),
                             *(setup(s, i, 20000 + n) for n, (s, i) in enumerate(flippers.items())))
        setup_s = time.perf_counter() - started
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + sizes.seconds

        async def heartbeat(instance: str) -> None:
            # Every instance once a second, as the kit does with TTL 3 s; random phase, like real processes.
            await asyncio.sleep(random.random())
            while loop.time() < deadline:
                t = time.perf_counter()
                try:
                    await put(http, f"/v1/agent/check/pass/service:{instance}")
                    out.passes.append(time.perf_counter() - t)
                except (aiohttp.ClientError, RuntimeError):
                    out.errors += 1
                await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - t)))

        async def reader() -> None:
            while loop.time() < deadline:
                t = time.perf_counter()
                try:
                    async with http.get(f"/v1/health/service/{random.choice(services)}?passing") as r:
                        await r.read()
                    out.reads.append(time.perf_counter() - t)
                except aiohttp.ClientError:
                    out.errors += 1

        async def watcher(service: str) -> None:
            index = "0"
            while not stop.is_set():
                try:
                    async with parked.get(f"/v1/health/service/{service}?passing&index={index}&wait=30s") as r:
                        await r.read()
                        new = r.headers["X-Consul-Index"]
                except aiohttp.ClientError:
                    out.errors += 1
                    continue
                if new != index and index != "0":
                    out.wakeups += 1
                    if service in pending:
                        out.wakes.append(time.perf_counter() - pending.pop(service))
                index = new

        async def churn() -> None:
            # A trickle of real changes, so parked watchers have something to wake for: each one flips a service's
            # extra instance between passing and critical, which changes that service's ?passing answer.
            passing = dict.fromkeys(services, True)
            while loop.time() < deadline:
                service = random.choice(services)
                passing[service] = not passing[service]
                pending[service] = time.perf_counter()
                op = "pass" if passing[service] else "fail"
                try:
                    await put(http, f"/v1/agent/check/{op}/service:{flippers[service]}")
                    out.changes += 1
                except (aiohttp.ClientError, RuntimeError):
                    out.errors += 1
                await asyncio.sleep(sizes.churn_every_s)

        watchers = [asyncio.create_task(watcher(services[i % len(services)])) for i in range(sizes.watchers)]
        await asyncio.sleep(0.5)  # every watcher parked before the clock starts
        cpu0, client0, t0 = cpu_seconds(server_pid), time.process_time(), time.perf_counter()
        await asyncio.gather(*(heartbeat(i) for _, i in instances), *(reader() for _ in range(sizes.readers)),
                             churn())
        elapsed = time.perf_counter() - t0
        server_cpu, client_cpu = cpu_seconds(server_pid) - cpu0, time.process_time() - client0
        stop.set()
        for w in watchers:
            w.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
    print(f"  (registered {len(instances) + len(flippers)} instances with a passing TTL check in {setup_s:.1f} s)")
    return out, elapsed, server_cpu / elapsed, client_cpu / elapsed


# ---- report -----------------------------------------------------------------------------------------------------

def row(name: str, samples: list[float], seconds: float | None) -> str:
    rate = f"{len(samples) / seconds:8.0f}" if seconds else f"{'':>8}"
    return f"  {name:<46} {len(samples):>7} {rate} {ms(pct(samples, 50)):>8} {ms(pct(samples, 99)):>8}"


def header() -> str:
    return f"  {'':<46} {'count':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}"


async def main(sizes: Sizes, in_memory: bool) -> None:
    with discovery(in_memory) as (base, pid):
        print(f"msa_discovery at {base} ({'in memory' if in_memory else 'persisting to a temporary data dir'}), "
              f"{os.cpu_count()} cores")
        print(f"\n1. change → blocking-query notification ({sizes.notifications} changes, one watcher)")
        by_kind = await notification_latency(base, sizes.notifications)
        print(header())
        for kind, samples in by_kind.items():
            print(row(kind, samples, None))
        everything = [x for samples in by_kind.values() for x in samples]
        print(row("all changes", everything, None))

        total = sizes.services * sizes.per_service
        print(f"\n2. under load for {sizes.seconds:.0f} s: {total} instances heartbeating every 1 s, "
              f"{sizes.watchers} parked watchers, {sizes.readers} closed-loop readers, a change every "
              f"{sizes.churn_every_s * 1000:.0f} ms (one more instance per service flips passing/critical)")
        load, elapsed, server_cpu, client_cpu = await under_load(base, sizes, pid)
        print(header())
        print(row(f"GET /v1/health/service/<name>?passing ({sizes.per_service} inst.)", load.reads, elapsed))
        print(row("PUT /v1/agent/check/pass/<id> (heartbeat)", load.passes, elapsed))
        print(row("change → parked watcher answered", load.wakes, elapsed))
        print(f"  watcher wake-ups: {load.wakeups} for {load.changes} changes; errors: {load.errors}; "
              f"CPU: registry {server_cpu:.0%} of a core, load generator {client_cpu:.0%}")


async def one_run(sizes: Sizes, in_memory: bool) -> tuple[list[float], Load]:
    with discovery(in_memory) as (base, pid):
        by_kind = await notification_latency(base, sizes.notifications)
        load, _, _, _ = await under_load(base, sizes, pid)
    return [x for samples in by_kind.values() for x in samples], load


def figures(quick: bool) -> list[dict]:
    """For bench/harness.py: change → notification p50/p99, idle and under load; a fresh registry per run."""
    sizes = QUICK if quick else FULL
    runs = [asyncio.run(one_run(sizes, in_memory=False)) for _ in range(1 if quick else 3)]
    idle = [r[0] for r in runs]
    loaded = [r[1].wakes for r in runs]
    errors = sum(r[1].errors for r in runs)
    return [
        {"key": "discovery.notify.p50_ms", "unit": "ms", "runs": [pct(x, 50) * 1000 for x in idle]},
        {"key": "discovery.notify.p99_ms", "unit": "ms", "runs": [pct(x, 99) * 1000 for x in idle],
         "note": f"{sizes.notifications} changes per run (register, TTL pass→fail, fail→pass, deregister), one "
                 f"parked watcher; msa_discovery persisting to a data dir, as under `make up`"},
        {"key": "discovery.loaded.notify.p50_ms", "unit": "ms", "runs": [pct(x, 50) * 1000 for x in loaded]},
        {"key": "discovery.loaded.notify.p99_ms", "unit": "ms", "runs": [pct(x, 99) * 1000 for x in loaded],
         "note": f"{sizes.services * sizes.per_service} instances heartbeating every 1 s, {sizes.watchers} parked "
                 f"watchers, {sizes.readers} closed-loop readers, a change every {sizes.churn_every_s * 1000:.0f} "
                 f"ms, {sizes.seconds:g} s per run; errors: {errors}"},
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a much smaller run, a few seconds (CI)")
    parser.add_argument("--in-memory", action="store_true", help="run the registry without a data dir")
    args = parser.parse_args()
    asyncio.run(main(QUICK if args.quick else FULL, args.in_memory))
