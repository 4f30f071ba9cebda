"""Resilience: what one sick instance or one sick service costs the callers. Prints figures; never asserts on time.

1. Failover: steady traffic through the gateway (catalog reads + order placements); kill -9 one of the two catalog
   instances. Client-visible errors, and the time from the kill until every caller has ejected the dead instance
   (from the kit's "ejected" log line in each caller).
2. Breaker: every catalog call fails; once the order service's breakers are open, placing an order that needs a
   price it has never seen fails fast (503). Its p99, beside the same placement with catalog healthy.
3. A slow dependency: catalog answers 2 s late; an unrelated route's p50 beside its p50 with catalog healthy.

Usage: .venv/bin/python bench/resilience_bench.py [--quick]   (its own topology on free ports; only 127.0.0.1)
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli" / "src"))
from msa_cli.namespace import scratch_topology  # noqa: E402
from msa_cli.runner import Topology  # noqa: E402
from msa_cli.spec import admin_token  # noqa: E402

ADMIN = {"Authorization": f"Bearer {admin_token()}"}
CATALOG = ("catalog-1", "catalog-2")
CALLERS = ("gateway", "order-1", "order-2")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def log_times(path: Path, needle: str) -> list[float]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if needle in line:
            ts = json.loads(line)["ts"]
            out.append(calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + int(ts[20:23]) / 1000)
    return out


class Client:
    def __init__(self, gateway: str) -> None:
        self.http = httpx.AsyncClient(base_url=gateway, timeout=10, limits=httpx.Limits(max_connections=100))
        self.auth: dict[str, str] = {}

    async def log_in(self) -> None:
        name, password = f"bench{uuid.uuid4().hex[:8]}", "bench-Passw0rd"
        await self.http.post("/api/users", json={"username": name, "password": password})
        token = (await self.http.post("/api/auth/token", data={"username": name, "password": password})).json()
        self.auth = {"Authorization": f"Bearer {token['access_token']}"}

    async def place(self, sku: str) -> tuple[int, float]:
        started = time.perf_counter()
        r = await self.http.post("/api/orders", json={"items": [{"sku": sku, "quantity": 1}]}, headers=self.auth)
        return r.status_code, (time.perf_counter() - started) * 1000

    async def timed_get(self, path: str) -> tuple[int, float]:
        started = time.perf_counter()
        r = await self.http.get(path, headers=self.auth)
        return r.status_code, (time.perf_counter() - started) * 1000


def put_product(topology: Topology, sku: str, stock: int = 100_000) -> None:
    httpx.put(f"{topology.url('catalog-1')}/admin/products/{sku}", headers=ADMIN,
              json={"name": sku, "price_cents": 100, "stock": stock}).raise_for_status()


def faults(topology: Topology, fault: dict | None) -> None:
    for p in CATALOG:
        if fault is None:
            httpx.delete(topology.url(p) + "/admin/faults", headers=ADMIN)
        else:
            httpx.post(topology.url(p) + "/admin/faults", json=fault, headers=ADMIN).raise_for_status()


async def failover(topology: Topology, client: Client, sku: str, seconds: float) -> tuple[int, float, int]:
    """Returns (client errors, seconds until every caller ejected the victim, calls made)."""
    victim = "catalog-2"
    results: list[int] = []

    async def traffic() -> None:
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            i += 1
            if i % 2:
                results.append((await client.timed_get("/api/catalog/products"))[0])
            else:
                results.append((await client.place(sku))[0])
            await asyncio.sleep(0.01)

    async def kill_midway() -> float:
        await asyncio.sleep(seconds / 3)
        killed = time.time()
        topology.kill(victim)
        return killed

    killed, _ = await asyncio.gather(kill_midway(), asyncio.gather(*(traffic() for _ in range(4))))
    ejected = [max((t for t in log_times(topology.log_path(c), f"instance {victim} ejected") if t >= killed),
                   default=float("nan")) for c in CALLERS]
    eject_s = max(t - killed for t in ejected)
    topology.wait_passing("catalog", 2, timeout=30)
    return sum(s not in (200, 201) for s in results), eject_s, len(results)


async def breaker(topology: Topology, client: Client, n: int) -> tuple[list[float], list[float]]:
    """(fail-fast latencies with the breakers open, the same placement's latencies with catalog healthy)."""
    healthy_sku = f"BENCH-H-{uuid.uuid4().hex[:6]}"
    put_product(topology, healthy_sku)
    healthy = [ms for _, ms in [await client.place(healthy_sku) for _ in range(n)]]
    fresh = f"BENCH-F-{uuid.uuid4().hex[:6]}"  # never priced by an order instance: no fallback for it
    put_product(topology, fresh)
    faults(topology, {"kind": "error", "status": 500, "route": "/products"})
    try:
        for _ in range(40):  # until both order instances' breakers are open
            await client.place(fresh)
            states = [httpx.get(topology.url(p) + "/admin/resilience", headers=ADMIN).json()["targets"]
                      .get("catalog", {}).get("breaker", {}).get("state") for p in ("order-1", "order-2")]
            if states == ["open", "open"]:
                break
        fast = [ms for status, ms in [await client.place(fresh) for _ in range(n)] if status == 503]
    finally:
        faults(topology, None)
    return fast, healthy


async def slow_dependency(topology: Topology, client: Client, n: int) -> tuple[list[float], list[float]]:
    baseline = [ms for _, ms in [await client.timed_get("/api/users/me") for _ in range(n)]]
    faults(topology, {"kind": "latency", "latency_ms": 2000, "route": "/products"})
    try:
        slow_reads = [asyncio.create_task(client.timed_get("/api/catalog/products")) for _ in range(10)]
        during = [ms for _, ms in [await client.timed_get("/api/users/me") for _ in range(n)]]
        await asyncio.gather(*slow_reads)
    finally:
        faults(topology, None)
    return during, baseline


async def one_run(topology: Topology, quick: bool) -> dict[str, tuple[float, float | None]]:
    client = Client(topology.spec.program("gateway").url)
    await client.log_in()
    sku = f"BENCH-{uuid.uuid4().hex[:6]}"
    put_product(topology, sku)
    errors, eject_s, calls = await failover(topology, client, sku, 4.0 if quick else 9.0)
    await asyncio.sleep(0.5)
    fast, healthy = await breaker(topology, client, 50 if quick else 200)
    during, baseline = await slow_dependency(topology, client, 20 if quick else 100)  # /api/users/me: no catalog
    await client.http.aclose()
    return {"failover.errors": (errors, None), "failover.eject_s": (eject_s, None), "failover.calls": (calls, None),
            "breaker.failfast_p99_ms": (pct(fast, 99) if fast else float("nan"), pct(healthy, 99)),
            "slow.unrelated_p50_ms": (statistics.median(during), statistics.median(baseline))}


def figures(quick: bool) -> list[dict]:
    runs = 1 if quick else 3
    results: list[dict[str, tuple[float, float | None]]] = []
    for _ in range(runs):  # a fresh topology each run: no breaker, ejection or cache carries over between runs
        with scratch_topology() as topology:
            results.append(asyncio.run(one_run(topology, quick)))
    meta = {
        "failover.errors": ("errors", "client errors while one of two catalog instances is killed under load", None),
        "failover.eject_s": ("s", "kill -9 → every caller has ejected the instance", None),
        "failover.calls": ("calls", "calls made through the failover window", None),
        "breaker.failfast_p99_ms": ("ms", "breaker open: a placement that needs catalog, p99",
                                    "the same placement, catalog healthy"),
        "slow.unrelated_p50_ms": ("ms", "catalog 2 s slow: /api/users/me p50", "the same, catalog healthy"),
    }
    out = []
    for key, (unit, label, ref_label) in meta.items():
        fig = {"key": key, "label": label, "unit": unit, "runs": [r[key][0] for r in results]}
        if ref_label:
            fig["reference"] = [r[key][1] for r in results]
            fig["reference_label"] = ref_label
        out.append(fig)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    for fig in figures(args.quick):
        ref = f"   (reference: {statistics.median(fig['reference']):.1f} — {fig['reference_label']})" \
            if "reference" in fig else ""
        print(f"{fig['label']:<75} {statistics.median(fig['runs']):10.2f} {fig['unit']}{ref}")


if __name__ == "__main__":
    main()
