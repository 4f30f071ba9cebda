"""The console's "place orders" control: an open-loop load generator through the gateway, as `msa load` is, but
adjustable while it runs and bounded (at most `max_rate` orders/s, stopping by itself after `max_seconds`, at most
`max_in_flight` orders open at once). Each second's orders placed, failed and their latencies feed the page's
sparkline, so a learner sees what a fault does to users while it happens."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

WINDOW_SECONDS = 60  # the sparkline's width


@dataclass
class Second:
    at: int  # seconds since the epoch
    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)

    def document(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        failed = sum(self.failures.values())

        def pct(p: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 1) if ordered else 0.0

        return {"at": self.at, "ok": len(ordered) - failed, "failed": failed, "p50_ms": pct(0.5),
                "p95_ms": pct(0.95), "failures": dict(self.failures)}


class LoadGenerator:
    def __init__(self, gateway: Callable[[], Awaitable[str]], *, max_rate: float, max_seconds: float,
                 max_in_flight: int = 200, timeout_s: float = 5.0) -> None:
        self.gateway, self.max_rate, self.max_seconds = gateway, max_rate, max_seconds
        self.max_in_flight, self.timeout_s = max_in_flight, timeout_s
        self.rate = 0.0
        self.started_at = 0.0
        self.seconds: deque[Second] = deque(maxlen=WINDOW_SECONDS)
        self.totals: Counter[str] = Counter()
        self.error = ""  # why the generator could not start or stopped
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    def set_rate(self, rate: float) -> str:
        self.rate = min(max(0.0, rate), self.max_rate)
        if self.rate == 0:
            return "load stopped"
        self.started_at = time.monotonic()  # every change restarts the time limit
        self.error = ""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="console-load")
        return f"placing {self.rate:g} orders/s through the gateway (stops by itself after {self.max_seconds:g} s)"

    async def stop(self) -> None:
        self.rate = 0.0
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._in_flight):
            task.cancel()

    def document(self) -> dict[str, Any]:
        running = self._task is not None and not self._task.done()
        left = max(0.0, self.max_seconds - (time.monotonic() - self.started_at)) if running else 0.0
        return {"rate": self.rate if running else 0.0, "max_rate": self.max_rate, "running": running,
                "seconds_left": round(left), "error": self.error, "totals": dict(self.totals),
                # Whole seconds only: the one under way would draw as a drop at the sparkline's end.
                "seconds": [s.document() for s in self.seconds if s.at < int(time.time())]}

    def _record(self, latency_ms: float, failure: str | None) -> None:
        now = int(time.time())
        if not self.seconds or self.seconds[-1].at != now:
            self.seconds.append(Second(now))
        second = self.seconds[-1]
        second.latencies.append(latency_ms)
        self.totals["placed" if failure is None else "failed"] += 1
        if failure:
            second.failures[failure] += 1

    async def _run(self) -> None:
        try:
            async with httpx.AsyncClient(base_url=await self.gateway(), timeout=self.timeout_s,
                                         trust_env=False) as http:
                auth = await self._login(http)
                skus = [p["sku"] for p in (await http.get("/api/catalog/products")).raise_for_status().json()]
                if not skus:
                    raise RuntimeError("the catalog has no products")
                n, next_at = 0, time.perf_counter()
                while self.rate > 0 and time.monotonic() - self.started_at < self.max_seconds:
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                    next_at += 1.0 / self.rate if self.rate > 0 else 0
                    if len(self._in_flight) >= self.max_in_flight:
                        self._record(0.0, "shed (too many open)")
                        continue
                    task = asyncio.create_task(self._place(http, auth, skus[n % len(skus)]))
                    self._in_flight.add(task)
                    task.add_done_callback(self._in_flight.discard)
                    n += 1
                if self._in_flight:
                    await asyncio.wait(self._in_flight, timeout=self.timeout_s)
        except (httpx.HTTPError, RuntimeError, ValueError, KeyError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            self.rate = 0.0

    async def _login(self, http: httpx.AsyncClient) -> dict[str, str]:
        name, password = f"console-load-{uuid.uuid4().hex[:8]}", f"Load-{uuid.uuid4().hex}"
        (await http.post("/api/users", json={"username": name, "password": password})).raise_for_status()
        r = (await http.post("/api/auth/token", data={"username": name, "password": password})).raise_for_status()
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    async def _place(self, http: httpx.AsyncClient, auth: dict[str, str], sku: str) -> None:
        t0 = time.perf_counter()
        failure = None
        try:
            r = await http.post("/api/orders", headers={**auth, "Idempotency-Key": uuid.uuid4().hex},
                                json={"items": [{"sku": sku, "quantity": 1}]})
            if r.status_code != 201:
                failure = str(r.status_code)
        except httpx.HTTPError as exc:
            failure = type(exc).__name__
        self._record((time.perf_counter() - t0) * 1000, failure)
