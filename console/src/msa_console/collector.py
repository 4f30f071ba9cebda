"""What the console shows, gathered once a tick: every registered instance with its health (the registry's checks
and the console's own GET /health), what the instance reports on /metrics (breakers, outbox, queues, config
version, faults in force, requests and errors, calls to other services, events consumed), and the rates between
two ticks. Only /health and /metrics, which are neither counted nor traced: watching changes no figure it shows.
One snapshot feeds every open page over server-sent events.

It runs only while a page is open (a subscriber, or a snapshot asked for in the last `idle_s`): a closed console
costs the instances nothing. After a crash the console asks that instance's /health every 20 ms for a while and
publishes a change at once: supervisord has a crashed instance answering again within about 200 ms (measured:
160–220 ms from the crash's exit; compose takes seconds), far faster than the registry's TTL check notices, and a
learner should see it go down and come back, not miss it between two ticks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from msa_kit.discovery import Instance
from msa_kit.metrics import BREAKER_STATE_NAMES, Samples, samples

log = logging.getLogger(__name__)

HEALTH_ORDER = {"passing": 0, "warning": 1, "critical": 2}
WATCH_PERIOD_S = 0.02  # a crashed instance is back within ~200 ms (supervisord forks it from a preloaded parent)
RATE_WINDOW_S = 5.0  # rates are over the last few seconds: steady enough to read, recent enough to see a fault
HIDDEN_SERVICES = {"consul"}  # Consul registers itself; it is the registry, drawn as such, not a service
# Who publishes an event type: its first segment names the service (order.placed, stock.reserved → catalog).
PUBLISHER_OF_PREFIX = {"order": "order", "stock": "catalog", "user": "user"}

Registry = Callable[[], Awaitable[dict[str, list[dict[str, Any]]]]]  # service → Consul health entries


def total(found: Samples, name: str, **labels: str) -> float:
    return sum(v for lb, v in found.get(name, []) if all(lb.get(k) == want for k, want in labels.items()))


@dataclass
class Observed:
    """One instance as seen at one tick."""

    service: str
    id: str
    url: str
    registry: str  # passing | warning | critical: the worst of its checks in the registry
    check_output: str
    version: str
    answering: bool = False  # its /health answered 200 to the console
    samples: Samples = field(default_factory=dict)

    @property
    def health(self) -> str:
        return self.registry if self.answering else "critical"


def worst_check(entry: dict[str, Any]) -> tuple[str, str]:
    checks = entry.get("Checks") or []
    # Among equals the service's own check speaks, not the node's serfHealth ("Agent alive and reachable").
    worst = max(checks, key=lambda c: (HEALTH_ORDER.get(c.get("Status", "critical"), 2), bool(c.get("ServiceID"))),
                default=None)
    if worst is None:
        return "passing", ""
    return worst.get("Status", "critical"), str(worst.get("Output", ""))[:200]


class Collector:
    def __init__(self, registry: Registry, http: httpx.AsyncClient, *,
                 extras: Callable[[], Awaitable[dict[str, Any]]] | None = None, interval_s: float = 1.0,
                 idle_s: float = 10.0, timeout_s: float = 1.0) -> None:
        self.registry, self.http = registry, http
        self.extras = extras  # more of the snapshot from elsewhere: the broker link, the load generator
        self.interval_s, self.idle_s, self.timeout_s = interval_s, idle_s, timeout_s
        self.snapshot: dict[str, Any] = {}
        self.events: deque[dict[str, str]] = deque(maxlen=50)  # what changed, newest first
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._last_asked = 0.0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._watched: dict[str, float] = {}  # instance → until when its /health is asked every WATCH_PERIOD_S
        # instance → (when, samples) of the full ticks of the last RATE_WINDOW_S, oldest first
        self._history: dict[str, deque[tuple[float, Samples]]] = {}
        self._health: dict[str, str] = {}
        self._started: dict[str, float] = {}  # instance → process start time (a change is a restart)
        self.restarts: dict[str, int] = {}
        self._restarted_at: dict[str, float] = {}

    # -- who is looking ------------------------------------------------------------------------------------------
    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=5)
        self._subscribers.add(queue)
        self._ensure_running()
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(queue)

    async def current(self) -> dict[str, Any]:
        """The latest snapshot, made now if the collector was idle."""
        self._last_asked = time.monotonic()
        if not self.snapshot or self._task is None or self._task.done():
            await self.tick()
        self._ensure_running()
        return self.snapshot

    def watch_closely(self, instance: str, seconds: float = 10.0) -> None:
        """Ask `instance`'s /health every WATCH_PERIOD_S for a while, between the ticks: it was just crashed on
        purpose, and it is back within a few hundred ms; a change is published at once."""
        self._watched[instance] = time.monotonic() + seconds
        self._wake.set()

    def look_again(self) -> None:
        """A full tick now, not at the next second: something was just changed (a fault added, the broker cut)."""
        self._wake.set()

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="console-collector")

    def _wanted(self) -> bool:
        return bool(self._subscribers) or time.monotonic() - self._last_asked < self.idle_s

    async def _run(self) -> None:
        while self._wanted():
            try:
                await self.tick()
            except Exception:  # one bad tick (a registry outage, a malformed answer) must not end the console
                log.exception("console tick failed")
            deadline = time.monotonic() + self.interval_s
            while (left := deadline - time.monotonic()) > 0:
                self._wake.clear()
                if watched := self._watched_now():
                    await self.glance(watched)
                    await asyncio.sleep(min(left, WATCH_PERIOD_S))
                    continue
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except TimeoutError:
                    break
                if not self._watched_now():
                    break  # look_again: the full tick now

    def _watched_now(self) -> list[str]:
        now = time.monotonic()
        self._watched = {i: until for i, until in self._watched.items() if until > now}
        return list(self._watched)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- one tick ------------------------------------------------------------------------------------------------
    async def tick(self) -> None:
        """Ask the registry and every instance; build and publish the snapshot."""
        now = time.monotonic()
        registry_error = ""
        try:
            entries = await self.registry()
        except Exception as exc:  # the registry is down: no instances to show, and why
            registry_error = f"{type(exc).__name__}: {exc}"[:200]
            entries = {}
        observed = [Observed(service, (i := Instance.from_health_entry(e)).id, i.url, *worst_check(e),
                             version=i.meta.get("version", ""))
                    for service, es in sorted(entries.items()) if service not in HIDDEN_SERVICES for e in es]
        await asyncio.gather(*(self._look_at(o) for o in observed))
        self._note_changes(observed)
        self.snapshot = self._build(observed, now, registry_error) | (await self.extras() if self.extras else {})
        for o in observed:
            history = self._history.setdefault(o.id, deque())
            history.append((now, o.samples))
            while len(history) > 1 and now - history[1][0] >= RATE_WINDOW_S:
                history.popleft()
        self._publish()

    async def glance(self, instances: list[str]) -> None:
        """/health of these instances only (of the last snapshot); a change of health is published at once."""
        items = {i["id"]: i for s in self.snapshot.get("services", []) for i in s["instances"] if i["id"] in instances}

        async def answering(url: str) -> bool:
            try:
                return (await self.http.get(url + "/health", timeout=WATCH_PERIOD_S * 10)).status_code == 200
            except httpx.HTTPError:
                return False

        found = await asyncio.gather(*(answering(item["url"]) for item in items.values()))
        changed = False
        for item, ok in zip(items.values(), found):
            health = item["registry"] if ok else "critical"
            if health != item["health"]:
                self._note(item["id"], item["health"], health, ok)
                self._health[item["id"]] = health
                item.update(health=health, answering=ok)
                changed = True
        if changed:
            self.snapshot["changes"] = list(self.events)
            self.snapshot["at"] = datetime.now(UTC).isoformat(timespec="milliseconds")
            self._publish()

    async def _look_at(self, o: Observed) -> None:
        try:
            health, metrics = await asyncio.gather(self.http.get(o.url + "/health", timeout=self.timeout_s),
                                                   self.http.get(o.url + "/metrics", timeout=self.timeout_s))
        except httpx.HTTPError:
            return  # not answering: critical, whatever the registry still says
        o.answering = health.status_code == 200
        if metrics.status_code == 200:
            with contextlib.suppress(ValueError):
                o.samples = samples(metrics.text)

    def _note(self, instance: str, before: str, after: str, answering: bool) -> None:
        why = "" if answering else " (not answering)"
        stamp = datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]
        self.events.appendleft({"at": stamp, "text": f"{instance}: {before} → {after}{why}"})

    def _note_changes(self, observed: list[Observed]) -> None:
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        for o in observed:
            before = self._health.get(o.id)
            if before is not None and before != o.health:
                self._note(o.id, before, o.health, o.answering)
            self._health[o.id] = o.health
            started = total(o.samples, "process_start_time_seconds")
            if started:
                if self._started.get(o.id, started) != started:
                    self.restarts[o.id] = self.restarts.get(o.id, 0) + 1
                    self._restarted_at[o.id] = time.monotonic()
                    self.events.appendleft({"at": stamp, "text": f"{o.id}: restarted"})
                self._started[o.id] = started

    def _rate(self, o: Observed, now: float, name: str, **labels: str) -> float:
        """Per second over the last RATE_WINDOW_S; a counter that went down (the instance restarted) counts from 0."""
        history = self._history.get(o.id)
        if not history or not o.samples:
            return 0.0
        when, before = history[0]
        dt = now - when
        if dt <= 0:
            return 0.0
        now_v, before_v = total(o.samples, name, **labels), total(before, name, **labels)
        return max(0.0, (now_v - before_v if now_v >= before_v else now_v) / dt)

    def _build(self, observed: list[Observed], now: float, registry_error: str) -> dict[str, Any]:
        services: dict[str, list[dict[str, Any]]] = {}
        server: dict[str, tuple[float, float]] = {}  # service → (requests/s, 5xx/s)
        calls: dict[tuple[str, str], float] = {}
        flows: dict[tuple[str, str, str], tuple[float, float]] = {}  # → (deliveries/s, retried or dead-lettered/s)
        for o in observed:
            s = o.samples
            rps = self._rate(o, now, "msa_http_requests_total")
            errors = sum(self._rate(o, now, "msa_http_requests_total", status=st)
                         for st in {lb.get("status", "") for lb, _ in s.get("msa_http_requests_total", [])}
                         if st.startswith("5"))
            r, e = server.get(o.service, (0.0, 0.0))
            server[o.service] = (r + rps, e + errors)
            targets = {lb["service"] for lb, _ in s.get("msa_client_attempts_total", []) if "service" in lb}
            for target in sorted(targets):
                calls[(o.service, target)] = calls.get((o.service, target), 0.0) + \
                    self._rate(o, now, "msa_client_attempts_total", service=target)
            for event_type in sorted({lb["event_type"] for lb, _ in s.get("msa_consumer_deliveries_total", [])
                                      if "event_type" in lb}):
                publisher = PUBLISHER_OF_PREFIX.get(event_type.split(".")[0], event_type.split(".")[0])
                key = (publisher, o.service, event_type)
                rate, failed = flows.get(key, (0.0, 0.0))
                flows[key] = (rate + self._rate(o, now, "msa_consumer_deliveries_total", event_type=event_type),
                              failed + sum(self._rate(o, now, "msa_consumer_deliveries_total", event_type=event_type,
                                                      outcome=outcome) for outcome in ("retry", "dead_letter")))
            queues = {lb.get("queue", "?"): int(v) for lb, v in s.get("msa_queue_messages", [])}
            info = [lb for lb, _ in s.get("msa_config_info", [])]
            config_version = info[0].get("config_version", "") if info else ""
            faults = sorted(lb.get("description", "?") for lb, v in s.get("msa_fault_active", []) if v)
            services.setdefault(o.service, []).append({
                "id": o.id, "url": o.url, "health": o.health, "registry": o.registry, "answering": o.answering,
                "check_output": o.check_output, "version": o.version,
                "config_version": config_version[:8] if config_version not in ("", "None") else "",
                "breakers": {lb.get("service", "?"): BREAKER_STATE_NAMES.get(int(v), str(v))
                             for lb, v in s.get("msa_breaker_state", [])},
                "outbox": int(total(s, "msa_outbox_backlog")) if "msa_outbox_backlog" in s else None,
                "queues": queues, "faults": faults, "rps": round(rps, 2),
                "error_share": round(errors / rps, 3) if rps else 0.0, "restarts": self.restarts.get(o.id, 0),
                "restarted_ago_s": round(now - self._restarted_at[o.id]) if o.id in self._restarted_at else None,
                # A program of the platform (config version, fault API), and not the console itself: has buttons.
                "breakable": bool(info) and o.service != "console",
            })
        return {
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "registry_error": registry_error,
            "services": [{"name": name, "instances": sorted(items, key=lambda i: i["id"])}
                         for name, items in sorted(services.items())],
            "calls": [{"from": a, "to": b, "rate": round(rate, 2),
                       "error_share": round(server.get(b, (0, 0))[1] / server[b][0], 3)
                       if server.get(b, (0, 0))[0] else 0.0}
                      for (a, b), rate in sorted(calls.items())],
            "flows": [{"from": a, "to": b, "event_type": t, "rate": round(rate, 2),
                       "error_share": round(failed / rate, 3) if rate else 0.0}
                      for (a, b, t), (rate, failed) in sorted(flows.items())],
            "changes": list(self.events),
        }

    def _publish(self) -> None:
        for queue in list(self._subscribers):
            if queue.full():  # a slow page misses a snapshot, never blocks the others
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(self.snapshot)
