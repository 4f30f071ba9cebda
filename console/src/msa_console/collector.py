"""What the console shows, gathered once a tick: every registered instance with its health (the registry's checks
and the console's own GET /health), what the instance reports on /metrics (breakers, outbox, queues, config
version, faults in force, requests and errors, calls to other services, events consumed), and the rates between
two ticks. Only /health and /metrics, which are neither counted nor traced: watching changes no figure it shows.
One snapshot feeds every open page over server-sent events.

It runs only while a page is open (a subscriber, or a snapshot asked for in the last `idle_s`): a closed console
costs the instances nothing. After a chaos action the console watches closely for a while (every 100 ms, /health
only): a supervisor restarts a crashed instance in about a second, faster than the registry's TTL check notices,
and a learner should see the instance go down and come back, not miss it between two ticks.
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
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

BREAKER_STATES = {0: "closed", 1: "half-open", 2: "open"}
HEALTH_ORDER = {"passing": 0, "warning": 1, "critical": 2}
RATE_WINDOW_S = 5.0  # rates are over the last few seconds: steady enough to read, recent enough to see a fault
HIDDEN_SERVICES = {"consul"}  # Consul registers itself; it is the registry, drawn as such, not a service
# Who publishes an event type: its first segment names the service (order.placed, stock.reserved → catalog).
PUBLISHER_OF_PREFIX = {"order": "order", "stock": "catalog", "user": "user"}

Samples = dict[str, list[tuple[dict[str, str], float]]]
Registry = Callable[[], Awaitable[dict[str, list[dict[str, Any]]]]]  # service → Consul health entries


def parse_metrics(text: str) -> Samples:
    """Exposition text → sample name → [(labels, value)], with prometheus_client's own parser."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for lb, v in samples.get(name, []) if all(lb.get(k) == want for k, want in labels.items()))


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
        self._watch_until = 0.0  # tick fast until then (an instance was asked to crash)
        self._full_at = 0.0  # the last tick that read /metrics too
        # instance → (when, samples) of the full ticks of the last RATE_WINDOW_S, oldest first
        self._history: dict[str, deque[tuple[float, Samples]]] = {}
        self._health: dict[str, str] = {}
        self._started: dict[str, float] = {}  # instance → process start time (a change is a restart)
        self.restarts: dict[str, int] = {}

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

    def watch_closely(self, seconds: float = 15.0) -> None:
        """Tick every 100 ms for a while: something was just broken on purpose, show its effect as it happens."""
        self._watch_until = time.monotonic() + seconds
        self._wake.set()

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="console-collector")

    def _wanted(self) -> bool:
        return bool(self._subscribers) or time.monotonic() - self._last_asked < self.idle_s

    async def _run(self) -> None:
        while self._wanted():
            fast = time.monotonic() < self._watch_until
            try:
                await self.tick(full=not fast or time.monotonic() - self._full_at >= self.interval_s)
            except Exception:  # one bad tick (a registry outage, a malformed answer) must not end the console
                log.exception("console tick failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1 if fast else self.interval_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- one tick ------------------------------------------------------------------------------------------------
    async def tick(self, full: bool = True) -> None:
        """Ask the registry and every instance; `full=False`: only /health, the figures stay the last full tick's."""
        now = time.monotonic()
        registry_error = ""
        try:
            entries = await self.registry()
        except Exception as exc:  # the registry is down: show what was last known, say why
            registry_error = f"{type(exc).__name__}: {exc}"[:200]
            entries = {}
        observed = [Observed(service, e["Service"]["ID"],
                             f"http://{e['Service'].get('Address') or '127.0.0.1'}:{e['Service']['Port']}",
                             *worst_check(e), version=str((e["Service"].get("Meta") or {}).get("version", "")))
                    for service, es in sorted(entries.items()) if service not in HIDDEN_SERVICES for e in es]
        await asyncio.gather(*((self._look_at if full else self._glance_at)(o) for o in observed))
        self._note_changes(observed)
        if full:
            self.snapshot = self._build(observed, now, registry_error) | (await self.extras() if self.extras else {})
            for o in observed:
                history = self._history.setdefault(o.id, deque())
                history.append((now, o.samples))
                while len(history) > 1 and now - history[1][0] >= RATE_WINDOW_S:
                    history.popleft()
            self._full_at = now
        else:
            self._update_health(observed)
        self._publish()

    async def _glance_at(self, o: Observed) -> None:
        try:
            o.answering = (await self.http.get(o.url + "/health", timeout=self.timeout_s)).status_code == 200
        except httpx.HTTPError:
            o.answering = False

    def _update_health(self, observed: list[Observed]) -> None:
        """A fast tick: the last full snapshot with each instance's health of now (and instances come and gone)."""
        health = {o.id: o for o in observed}
        for service in self.snapshot.get("services", []):
            for item in service["instances"]:
                if (o := health.get(item["id"])) is not None:
                    item.update(health=o.health, registry=o.registry, answering=o.answering,
                                check_output=o.check_output, restarts=self.restarts.get(o.id, 0))
        self.snapshot["changes"] = list(self.events)
        self.snapshot["at"] = datetime.now(UTC).isoformat(timespec="milliseconds")

    async def _look_at(self, o: Observed) -> None:
        try:
            health, metrics = await asyncio.gather(self.http.get(o.url + "/health", timeout=self.timeout_s),
                                                   self.http.get(o.url + "/metrics", timeout=self.timeout_s))
        except httpx.HTTPError:
            return  # not answering: critical, whatever the registry still says
        o.answering = health.status_code == 200
        if metrics.status_code == 200:
            with contextlib.suppress(ValueError):
                o.samples = parse_metrics(metrics.text)

    def _note_changes(self, observed: list[Observed]) -> None:
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        for o in observed:
            before = self._health.get(o.id)
            if before is not None and before != o.health:
                why = "" if o.answering else " (not answering)"
                self.events.appendleft({"at": stamp, "text": f"{o.id}: {before} → {o.health}{why}"})
            self._health[o.id] = o.health
            started = total(o.samples, "process_start_time_seconds")
            if started:
                if self._started.get(o.id, started) != started:
                    self.restarts[o.id] = self.restarts.get(o.id, 0) + 1
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
        flows: dict[tuple[str, str, str], float] = {}
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
                flows[key] = flows.get(key, 0.0) + self._rate(o, now, "msa_consumer_deliveries_total",
                                                              event_type=event_type)
            queues = {lb.get("queue", "?"): int(v) for lb, v in s.get("msa_queue_messages", [])}
            info = [lb for lb, _ in s.get("msa_config_info", [])]
            config_version = info[0].get("config_version", "") if info else ""
            faults = sorted(lb.get("description", "?") for lb, v in s.get("msa_fault_active", []) if v)
            services.setdefault(o.service, []).append({
                "id": o.id, "url": o.url, "health": o.health, "registry": o.registry, "answering": o.answering,
                "check_output": o.check_output, "version": o.version,
                "config_version": config_version[:8] if config_version not in ("", "None") else "",
                "breakers": {lb.get("service", "?"): BREAKER_STATES.get(int(v), str(v))
                             for lb, v in s.get("msa_breaker_state", [])},
                "outbox": int(total(s, "msa_outbox_backlog")) if "msa_outbox_backlog" in s else None,
                "queues": queues, "faults": faults, "rps": round(rps, 2),
                "error_share": round(errors / rps, 3) if rps else 0.0, "restarts": self.restarts.get(o.id, 0),
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
            "flows": [{"from": a, "to": b, "event_type": t, "rate": round(rate, 2)}
                      for (a, b, t), rate in sorted(flows.items())],
            "changes": list(self.events),
        }

    def _publish(self) -> None:
        for queue in list(self._subscribers):
            if queue.full():  # a slow page misses a snapshot, never blocks the others
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(self.snapshot)
