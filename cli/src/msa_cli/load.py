"""`msa load`: realistic traffic through the gateway, bounded in rate and time, reported live — the thing to
watch while breaking things. Each tick is one user step: browse the catalog, place an order (with an
Idempotency-Key), read it back. Open loop: the rate holds whatever the answers take, as real users would."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import httpx
from msa_kit.http1 import Http1Transport  # the kit's client: fast, and a refused connection is a ConnectError
from rich.live import Live
from rich.table import Table

MAX_RATE, MAX_SECONDS = 500.0, 600.0


@dataclass
class Window:
    """What happened in one second (or in the whole run)."""

    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def requests(self) -> int:
        return len(self.latencies)

    def ok(self) -> int:
        return self.requests - sum(self.failures.values())

    def pct(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def row(self, label: str) -> list[str]:
        rate = f"{100 * self.ok() / self.requests:.1f}%" if self.requests else "–"
        failures = ", ".join(f"{k}×{v}" for k, v in self.failures.most_common(3)) or "–"
        return [label, str(self.requests), rate, f"{self.pct(50):.0f}", f"{self.pct(99):.0f}", failures]


@dataclass
class Report:
    seconds: list[Window] = field(default_factory=list)
    total: Window = field(default_factory=Window)

    def record(self, second: int, latency_ms: float, failure: str | None) -> None:
        while len(self.seconds) <= second:
            self.seconds.append(Window())
        for w in (self.seconds[second], self.total):
            w.latencies.append(latency_ms)
            if failure:
                w.failures[failure] += 1

    def table(self, last: int = 10) -> Table:
        table = Table(title="msa load — through the gateway", title_justify="left")
        for col in ("second", "requests", "success", "p50 ms", "p99 ms", "failures"):
            table.add_column(col, justify="right" if col != "failures" else "left")
        start = max(0, len(self.seconds) - last)
        for i, w in enumerate(self.seconds[start:], start):
            table.add_row(*w.row(str(i + 1)))
        table.add_row(*self.total.row("total"), style="bold")
        return table


async def _user(http: httpx.AsyncClient) -> dict[str, str]:
    name, password = f"load-{uuid.uuid4().hex[:8]}", "load-Passw0rd"
    r = await http.post("/api/users", json={"username": name, "password": password})
    r.raise_for_status()
    r = await http.post("/api/auth/token", data={"username": name, "password": password})
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def run(gateway: str, rate: float, seconds: float, live: bool = True) -> Report:
    rate, seconds = min(rate, MAX_RATE), min(seconds, MAX_SECONDS)
    report = Report()
    async with httpx.AsyncClient(base_url=gateway, timeout=10, transport=Http1Transport()) as http:
        auth = await _user(http)
        skus = [p["sku"] for p in (await http.get("/api/catalog/products")).json()]
        started = time.perf_counter()

        async def timed(i: int, method: str, path: str, **kw: object) -> httpx.Response | None:
            t0 = time.perf_counter()
            failure = None
            response = None
            try:
                response = await http.request(method, path, **kw)
                if response.status_code >= 500 or response.status_code in (401, 403, 429):
                    failure = str(response.status_code)
            except httpx.HTTPError as exc:
                failure = type(exc).__name__
            report.record(int(t0 - started), (time.perf_counter() - t0) * 1000, failure)
            return response

        async def step(i: int) -> None:
            await timed(i, "GET", "/api/catalog/products")
            r = await timed(i, "POST", "/api/orders", headers={**auth, "Idempotency-Key": uuid.uuid4().hex},
                            json={"items": [{"sku": skus[i % len(skus)], "quantity": 1}]})
            if r is not None and r.status_code == 201:
                await timed(i, "GET", f"/api/orders/{r.json()['id']}", headers=auth)

        tasks: list[asyncio.Task[None]] = []
        display = Live(report.table(), refresh_per_second=2, transient=False) if live else None
        if display:
            display.start()
        try:
            for i in range(int(rate * seconds)):
                await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
                tasks.append(asyncio.create_task(step(i)))
                if display and i % max(1, int(rate / 2)) == 0:
                    display.update(report.table())
            await asyncio.gather(*tasks)
        finally:
            if display:
                display.update(report.table())
                display.stop()
    return report
