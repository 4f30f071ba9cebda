"""The whole stack: how long `make up` takes, how much memory the stack holds, and how fast orders are placed
through the gateway. Prints figures; never passes or fails on time.

Each run, on free 127.0.0.1 ports with a temporary var dir and a broker namespace of its own:
1. Reference: the same programs started by the same runner (supervisord, the same readiness polling and
   `startsecs`), each replaced by a stand-in that only imports what the real program's `__main__` imports and then
   binds its port and answers 200 — the floor for `make up`: interpreter start, imports, supervision.
2. `make up` as `msa up` does it (`Topology.up()`): from start until discovery lists every instance as passing.
3. Memory: the sum of PSS over supervisord and every process under it (/proc/<pid>/smaps_rollup), idle after
   start-up and again after the order load. PSS, because supervisord imports the programs' shared modules once and
   forks them (msa_cli.supervise): their pages are shared, and a sum of RSS counts a page shared by n processes n
   times. The RSS sum is printed beside it.
4. Order placement: `POST /api/orders` (one line, a fresh Idempotency-Key each) through the gateway, closed loop
   at a fixed concurrency for a bounded time, by an aiohttp load generator on the same machine. Stock is topped
   up first so that every order can be confirmed.
5. CPU per confirmed order: a fixed number of orders placed the same way, then waited for until the order
   instances count them confirmed; the CPU time (/proc/<pid>/stat utime + stime) each program — and the broker —
   spent meanwhile, divided by the orders confirmed. The load generator (this process) is not counted; what runs
   anyway (heartbeats, the probe's synthetic orders, the console) is, as it would be on a user's machine. Far
   steadier than a rate on a shared machine: it does not depend on what else the cores were doing.

Usage: .venv/bin/python bench/stack_bench.py [--quick] [--runs N] [--seconds S] [--concurrency C]
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import dataclasses
import importlib
import importlib.util
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

# Nothing heavy at the top: this file is also the reference's stand-in program, whose imports are the measurement.
if TYPE_CHECKING:
    from msa_cli.runner import Topology
    from msa_cli.spec import TopologySpec

FULL = {"runs": 3, "seconds": 10.0, "concurrency": 16, "budget_orders": 1500}
QUICK = {"runs": 1, "seconds": 2.0, "concurrency": 8, "budget_orders": 200}


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


# ---- the reference: stand-ins that import and bind, nothing else ----------------------------------------------------

def entry_imports(module: str) -> list[str]:
    """The modules `python -m <module>` imports at its top level (read from its __main__.py, not run)."""
    spec = importlib.util.find_spec(f"{module}.__main__")
    assert spec and spec.origin, module
    tree = ast.parse(Path(spec.origin).read_text())
    names = [module]
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), module) if node.level \
                else node.module
            names.append(base)
    return names


def stand_in(module: str) -> None:
    """A program that imports what `python -m <module>` imports, binds $PORT and answers 200 to anything."""
    for name in entry_imports(module):
        importlib.import_module(name)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
            await writer.drain()
        finally:
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(answer, os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"]))
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def reference_spec(real: TopologySpec, var_dir: Path) -> TopologySpec:
    programs = []
    for p in real.programs:
        module = p.command[p.command.index("-m") + 1]
        programs.append(dataclasses.replace(p, command=(sys.executable, str(Path(__file__).resolve()), "--stand-in",
                                                        module), registers=(), health_path="/health"))
    return dataclasses.replace(real, programs=tuple(programs), discovery=None, var_dir=var_dir)


# ---- memory ---------------------------------------------------------------------------------------------------------

def _status_kb(pid: int, field: str, file: str = "status") -> int:
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def stack_memory(topology: Topology) -> tuple[float, float, dict[str, float]]:
    """(RSS MB, PSS MB, PSS MB per program) over supervisord and everything under it."""
    supervisord = int(topology.pidfile.read_text().strip())
    pids = descendants(supervisord)
    by_pid = {s.pid: s.name for s in topology.status() if s.pid}
    per_program: dict[str, float] = {"supervisord": _status_kb(supervisord, "Pss", "smaps_rollup") / 1024}
    for name_pid, name in by_pid.items():
        per_program[name] = sum(_status_kb(p, "Pss", "smaps_rollup") for p in descendants(name_pid)) / 1024
    rss = sum(_status_kb(p, "VmRSS") for p in pids) / 1024
    pss = sum(_status_kb(p, "Pss", "smaps_rollup") for p in pids) / 1024
    return rss, pss, per_program


# ---- order placement ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Placement:
    latencies_ms: list[float]
    seconds: float
    failures: Counter[str]

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.seconds


async def top_up_stock(gateway: str, catalog: str) -> list[str]:
    import aiohttp

    from msa_cli.spec import admin_token

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway}/api/catalog/products") as r:
            products = await r.json()
        headers = {"Authorization": f"Bearer {admin_token()}"}
        for p in products:
            body = {"name": p["name"], "price_cents": p["price_cents"], "stock": 10_000_000}
            async with http.put(f"{catalog}/admin/products/{p['sku']}", json=body, headers=headers) as r:
                if r.status != 200:
                    raise RuntimeError(f"stock top-up: {r.status} {await r.text()}")
    return [p["sku"] for p in products]


async def customer_token(gateway: str) -> str:
    """A new customer's access token (sign-up and log-in: two scrypt hashes, ~0.2 s of the user service's CPU)."""
    import aiohttp

    async with aiohttp.ClientSession(gateway) as http:
        name, password = f"bench-{uuid.uuid4().hex[:8]}", "bench-Passw0rd"
        async with http.post("/api/users", json={"username": name, "password": password}) as r:
            assert r.status == 201, (r.status, await r.text())
        async with http.post("/api/auth/token", data={"username": name, "password": password}) as r:
            return str((await r.json())["access_token"])


async def place_orders(gateway: str, skus: list[str], concurrency: int, seconds: float, warmup: float = 1.0,
                       max_orders: int = 50_000, token: str | None = None) -> Placement:
    """Closed loop: `concurrency` clients, each placing one order after another, for `seconds` after a warm-up."""
    import aiohttp

    auth = f"Bearer {token or await customer_token(gateway)}"
    async with aiohttp.ClientSession(gateway, connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        latencies: list[float] = []
        failures: Counter[str] = Counter()
        loop = asyncio.get_running_loop()
        measure_from = loop.time() + warmup
        deadline = measure_from + seconds
        sent = 0

        async def client(i: int) -> None:
            nonlocal sent
            while loop.time() < deadline and sent < max_orders:
                sent += 1
                body = {"items": [{"sku": skus[sent % len(skus)], "quantity": 1}]}
                headers = {"Authorization": auth, "Idempotency-Key": uuid.uuid4().hex}
                t = loop.time()
                try:
                    async with http.post("/api/orders", json=body, headers=headers) as r:
                        await r.read()
                        failure = None if r.status == 201 else str(r.status)
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    failure = type(exc).__name__
                if t >= measure_from and loop.time() <= deadline:
                    if failure:
                        failures[failure] += 1
                    else:
                        latencies.append((loop.time() - t) * 1000)

        await asyncio.gather(*(client(i) for i in range(concurrency)))
        return Placement(latencies, seconds, failures)


# ---- CPU per confirmed order ---------------------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (/proc/<pid>/stat fields 14 and 15)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def broker_pids() -> list[int]:
    """The RabbitMQ node's Erlang VM (the machine's broker, which the stack uses under a namespace of its own)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if (entry / "comm").read_text().strip().startswith("beam"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def program_cpu(topology: "Topology") -> dict[str, float]:
    """CPU seconds so far per program (instances summed: order-1 + order-2 → order), supervisord and the broker."""
    out: Counter[str] = Counter()
    for status in topology.status():
        if status.pid:
            out[status.name.rsplit("-", 1)[0] if status.name[-1].isdigit() else status.name] += sum(
                cpu_s(p) for p in descendants(status.pid))
    out["supervisord"] += cpu_s(int(topology.pidfile.read_text().strip()))
    out["broker"] += sum(cpu_s(p) for p in broker_pids())
    return dict(out)


async def confirmed_orders(order_urls: list[str]) -> float:
    """Orders the order instances counted confirmed (msa_saga_outcomes_total, customers' orders only)."""
    import aiohttp

    total = 0.0
    async with aiohttp.ClientSession() as http:
        for url in order_urls:
            async with http.get(f"{url}/metrics") as r:
                for line in (await r.text()).splitlines():
                    if line.startswith('msa_saga_outcomes_total{outcome="confirmed",synthetic="false"}'):
                        total += float(line.rsplit(" ", 1)[1])
    return total


@dataclasses.dataclass
class Budget:
    orders: int  # confirmed during the measurement
    cpu_ms: dict[str, float]  # per program, per confirmed order
    failures: Counter[str]

    @property
    def total_ms(self) -> float:
        return sum(self.cpu_ms.values())


def cpu_budget(topology: "Topology", gateway: str, order_urls: list[str], skus: list[str], orders: int,
               concurrency: int, timeout_s: float = 120.0) -> Budget:
    token = asyncio.run(customer_token(gateway))  # before the measurement: logging in is not placing an order
    before_confirmed = asyncio.run(confirmed_orders(order_urls))
    before = program_cpu(topology)
    placed = asyncio.run(place_orders(gateway, skus, concurrency, timeout_s, warmup=0.0, max_orders=orders,
                                      token=token))
    deadline = time.monotonic() + 60
    confirmed = 0.0
    while time.monotonic() < deadline:
        confirmed = asyncio.run(confirmed_orders(order_urls)) - before_confirmed
        if confirmed >= len(placed.latencies_ms):
            break
        time.sleep(0.05)
    after = program_cpu(topology)
    n = max(confirmed, 1.0)
    return Budget(int(confirmed), {k: (after[k] - before.get(k, 0.0)) * 1000 / n for k in after}, placed.failures)


# ---- one run, several runs ------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
    reference_up_s: float
    up_s: float
    rss_mb: float
    pss_mb: float
    rss_loaded_mb: float
    pss_loaded_mb: float
    per_program_mb: dict[str, float]
    placement: Placement
    budget: Budget


def one_run(tmp: Path, seconds: float, concurrency: int, budget_orders: int) -> Run:
    from msa_cli.namespace import drop_namespace
    from msa_cli.runner import Topology
    from msa_cli.spec import Ports, default_spec

    namespace = f"bench-{uuid.uuid4().hex[:8]}."
    real = default_spec(Ports.free(), var_dir=tmp / "stack", namespace=namespace)
    reference = Topology(reference_spec(real, tmp / "reference"))
    try:
        reference_up = reference.up(timeout=60)
    finally:
        reference.down()
    topology = Topology(real)
    try:
        up = topology.up(timeout=60)
        time.sleep(0.5)  # what a person sees right after `make up` returns: settled, no load
        rss, pss, per_program = stack_memory(topology)
        gateway = real.program("gateway").url
        skus = asyncio.run(top_up_stock(gateway, real.program("catalog-1").url))
        placement = asyncio.run(place_orders(gateway, skus, concurrency, seconds))
        rss_loaded, pss_loaded, _ = stack_memory(topology)
        order_urls = [p.url for p in real.programs if "order" in p.registers]
        budget = cpu_budget(topology, gateway, order_urls, skus, budget_orders, concurrency)
    finally:
        topology.down()
        drop_namespace(real.amqp_url, namespace)
    return Run(reference_up, up, rss, pss, rss_loaded, pss_loaded, per_program, placement, budget)


def measure(runs: int, seconds: float, concurrency: int, budget_orders: int, progress: bool = True) -> list[Run]:
    out = []
    for i in range(runs):
        with tempfile.TemporaryDirectory(prefix="stack-bench-") as tmp:
            run = one_run(Path(tmp), seconds, concurrency, budget_orders)
        out.append(run)
        if progress:
            p = run.placement
            print(f"  run {i + 1}/{runs}: up {run.up_s:.2f} s (stand-ins {run.reference_up_s:.2f} s), "
                  f"PSS {run.pss_mb:.0f} MB idle / {run.pss_loaded_mb:.0f} MB loaded (RSS summed {run.rss_mb:.0f} / "
                  f"{run.rss_loaded_mb:.0f}), "
                  f"orders {p.rps:.0f}/s p50 {pct(p.latencies_ms, 50):.1f} ms p99 {pct(p.latencies_ms, 99):.1f} ms"
                  + (f", failures {dict(p.failures)}" if p.failures else "")
                  + f"; CPU {run.budget.total_ms:.1f} ms per confirmed order ({run.budget.orders}: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in sorted(run.budget.cpu_ms.items(), key=lambda kv: -kv[1]))
                  + ")", flush=True)
    return out


def figures(quick: bool) -> list[dict]:
    size = QUICK if quick else FULL
    runs = measure(size["runs"], size["seconds"], size["concurrency"], size["budget_orders"])
    last = runs[-1]
    biggest = sorted(last.per_program_mb.items(), key=lambda kv: -kv[1])
    failures = sum(sum(r.placement.failures.values()) for r in runs)
    return [
        {"key": "up.seconds", "unit": "s", "runs": [r.up_s for r in runs],
         "reference": [r.reference_up_s for r in runs], "reference_label": "stand-ins (import + bind)",
         "note": "Topology.up() on free ports, as `make up` calls it (without the `msa` CLI's own start), supervisord "
                 "importing the programs' shared modules once and forking them; the reference runs each program's "
                 "imports in an interpreter of its own under the same runner and readiness polling"},
        {"key": "stack.memory_mb", "unit": "MB", "runs": [r.pss_mb for r in runs],
         "also": {"RSS summed": [r.rss_mb for r in runs]},
         "note": f"sum of PSS (a page shared by n processes counts 1/n in each; the programs share what supervisord "
                 f"imported before forking them) over {len(last.per_program_mb) - 1} programs + supervisord; "
                 "largest: " + ", ".join(f"{n} {mb:.0f}" for n, mb in biggest[:4]) + " MB"},
        {"key": "stack.memory_mb_loaded", "unit": "MB", "runs": [r.pss_loaded_mb for r in runs],
         "also": {"RSS summed": [r.rss_loaded_mb for r in runs]}},
        {"key": "orders.place.rps", "unit": "req/s", "runs": [r.placement.rps for r in runs],
         "note": f"closed loop, {size['concurrency']} concurrent clients, {size['seconds']:g} s after a 1 s warm-up, "
                 f"aiohttp load generator on the same cores; non-201 answers: {failures}"},
        {"key": "orders.place.p50_ms", "unit": "ms", "runs": [pct(r.placement.latencies_ms, 50) for r in runs]},
        {"key": "orders.place.p99_ms", "unit": "ms", "runs": [pct(r.placement.latencies_ms, 99) for r in runs]},
        {"key": "orders.cpu_ms", "unit": "ms", "runs": [r.budget.total_ms for r in runs],
         "note": f"CPU per confirmed order, every process summed: {size['budget_orders']} orders "
                 f"(c={size['concurrency']}), /proc/<pid>/stat, the load generator excluded; per program below"},
        *({"key": f"orders.cpu_ms.{name}", "unit": "ms", "runs": [r.budget.cpu_ms.get(name, 0.0) for r in runs],
           "label": f"… of which {name}"}
          for name in sorted(last.budget.cpu_ms, key=lambda k: -last.budget.cpu_ms[k])),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one short run (CI)")
    ap.add_argument("--runs", type=int)
    ap.add_argument("--seconds", type=float, help="order load per run")
    ap.add_argument("--concurrency", type=int)
    ap.add_argument("--stand-in", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stand_in:
        stand_in(args.stand_in)
        return
    size = dict(QUICK if args.quick else FULL)
    size |= {k: v for k, v in (("runs", args.runs), ("seconds", args.seconds), ("concurrency", args.concurrency))
             if v}
    print(f"stack: {size['runs']} run(s); {os.cpu_count()} cores shared by everything", flush=True)
    runs = measure(size["runs"], size["seconds"], size["concurrency"], size["budget_orders"])

    def line(name: str, values: list[float], unit: str, fmt: str = "{:.2f}") -> None:
        med = fmt.format(statistics.median(values))
        spread = f"  ({fmt.format(min(values))}–{fmt.format(max(values))})" if len(values) > 1 else ""
        print(f"  {name:<44} {med:>9} {unit}{spread}")

    print(f"\nmedian of {len(runs)} run(s) (min–max)")
    line("`make up` → all passing", [r.up_s for r in runs], "s")
    line("  reference: stand-ins (import + bind)", [r.reference_up_s for r in runs], "s")
    line("stack memory (PSS), idle after up", [r.pss_mb for r in runs], "MB", "{:.0f}")
    line("  RSS summed", [r.rss_mb for r in runs], "MB", "{:.0f}")
    line("stack memory (PSS), after the order load", [r.pss_loaded_mb for r in runs], "MB", "{:.0f}")
    line("  RSS summed", [r.rss_loaded_mb for r in runs], "MB", "{:.0f}")
    line(f"orders placed through the gateway (c={size['concurrency']})", [r.placement.rps for r in runs], "req/s",
         "{:.0f}")
    line("  p50", [pct(r.placement.latencies_ms, 50) for r in runs], "ms", "{:.1f}")
    line("  p99", [pct(r.placement.latencies_ms, 99) for r in runs], "ms", "{:.1f}")
    line("CPU per confirmed order, all processes", [r.budget.total_ms for r in runs], "ms")
    for name in sorted(runs[-1].budget.cpu_ms, key=lambda k: -runs[-1].budget.cpu_ms[k]):
        line(f"  {name}", [r.budget.cpu_ms.get(name, 0.0) for r in runs], "ms")
    print("\nPSS by program (last run, idle): " + ", ".join(
        f"{n} {mb:.0f}" for n, mb in sorted(runs[-1].per_program_mb.items(), key=lambda kv: -kv[1])) + " MB")


if __name__ == "__main__":
    main()
