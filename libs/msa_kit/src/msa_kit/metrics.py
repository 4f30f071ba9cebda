"""What an instance reports to Prometheus on GET /metrics (names after Prometheus' naming guide).

- RED: `msa_http_requests_total{method, route, status}` and `msa_http_request_duration_seconds{method, route}`,
  recorded by `RequestMetrics` (ASGI middleware, for the FastAPI services) or `observe_request` (the gateway's
  proxy, which has no ASGI routing). `route` is a template or a gateway route id, never a raw path: a path
  would make a series per order id.
- Scrape-time gauges, read from live state by `exposition` right before the text is generated: the resilient
  client per target service, the discovery cache, the outbox, this service's queues, the config version.

The counters of one mechanism stay beside it: the client's in resilience.py, the consumer's in events.py, the
relay's in outbox.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .resilience import BREAKER_STATE, BREAKER_STATES

BREAKER_STATE_NAMES = {number: name for name, number in BREAKER_STATES.items()}  # msa_breaker_state's values
Samples = dict[str, list[tuple[dict[str, str], float]]]


def samples(text: str) -> Samples:
    """Exposition text (an instance's /metrics) → sample name → [(labels, value)], with prometheus_client's own
    parser: what `msa status` and the console read, as Prometheus would."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out

if TYPE_CHECKING:
    from .events import EventBus
    from .outbox import OutboxRelay
    from .platform import Platform
    from .resilience import ResilientStack

try:  # FastAPI >= 0.137.2 nests an included router's routes; this flattens them, each with its full path
    from fastapi.routing import iter_route_contexts
except ImportError:  # an older FastAPI: the app's routes are flat already
    def iter_route_contexts(routes: Iterable[BaseRoute]) -> Iterator[Any]:  # type: ignore[misc]
        return iter(routes)

log = logging.getLogger(__name__)

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
HTTP_REQUESTS = Counter("msa_http_requests", "HTTP requests answered", ["method", "route", "status"])
HTTP_DURATION = Histogram("msa_http_request_duration_seconds", "Time to answer an HTTP request",
                          ["method", "route"], buckets=BUCKETS)

RETRY_BUDGET_USED = Gauge("msa_retry_budget_used_ratio", "Retries in the budget's window over the retries it allows",
                          ["service"])
BULKHEAD_IN_FLIGHT = Gauge("msa_bulkhead_in_flight", "Calls in flight to a target service", ["service"])
DISCOVERY_INSTANCES = Gauge("msa_discovery_instances", "Instances in the discovery cache", ["service"])
DISCOVERY_STALE = Gauge("msa_discovery_stale", "1 while the discovery cache serves instances the registry did not "
                        "just confirm (registry unreachable, or the recovery grace)", ["service"])
DISCOVERY_CACHE_AGE = Gauge("msa_discovery_cache_age_seconds", "Seconds since the registry last confirmed the "
                            "cached instances; 0 while it does", ["service"])
QUEUE_MESSAGES = Gauge("msa_queue_messages", "Messages waiting in this service's queues", ["queue"])
# `config_version`, not `version`: the scrape target has a `version` label already (the instance's code version).
CONFIG = Info("msa_config", "The configuration this instance runs: its version and where it came from")
# One series per fault in force (value 1), so a dashboard or the console shows what is broken without the admin API.
FAULTS = Gauge("msa_fault_active", "A fault injected into this instance and in force (config or admin API)",
               ["id", "kind", "description"])

# Polled by supervisors and Prometheus: counted, they would drown the traffic the dashboards are about.
UNCOUNTED = frozenset({"/health", "/ready", "/metrics"})
UNMATCHED = "unmatched"
# A client may send any token as a method: one series per made-up method would be a cardinality leak.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})
SCRAPE_TIMEOUT_S = 1.0  # per live source (database, broker): a scrape answers even when one of them hangs

_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """One answered request. The label children are cached: `labels()` takes a lock and builds the key each call
    (measured ~3 µs for the pair, ~1 µs cached), and this runs on every request."""
    pair = _children.get((method, route, status))
    if pair is None:
        pair = _child(method, route, status)
    pair[0].inc()
    pair[1].observe(seconds)


def _child(method: str, route: str, status: int) -> tuple[Any, Any]:
    if method not in METHODS:
        method = "OTHER"
    key = (method, route, status)
    pair = _children.get(key)
    if pair is None:
        pair = _children[key] = (HTTP_REQUESTS.labels(method, route, str(status)), HTTP_DURATION.labels(method, route))
    return pair


class RequestMetrics:
    """RED for a FastAPI (or Starlette) app: counts and times every request but the operations endpoints, by route
    template. Put outside the fault injection, so an injected delay or error shows as the client saw it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._templates: dict[int, str] = {}  # id(route in the scope) → its template, prefixes included
        self._routes: list[tuple[Any, str]] = []  # (route, template): the app's routes, flattened, in order

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNCOUNTED:
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500  # what the server answers when the app raised before starting a response

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            observe_request(scope["method"], self.route_template(scope), status, time.perf_counter() - started)

    def route_template(self, scope: Scope) -> str:
        """The template of the route that answered (`/orders/{order_id}`), or `unmatched`. The router put the route
        in the scope, but an included router's own: its path lacks the router's prefix, so the template comes from
        the app's flattened routes (indexed once). A request answered before routing (an injected fault) has no
        route in its scope: the routes are asked, as the router would have — only then, and for a 404."""
        route = scope.get("route")
        if route is not None:
            template = self._templates.get(id(route))
            if template is None:
                self._index(scope)
                template = self._templates.setdefault(
                    id(route), getattr(route, "path_format", None) or getattr(route, "path", None) or UNMATCHED)
            return template
        if not self._routes:
            self._index(scope)
        partial = UNMATCHED
        for candidate, template in self._routes:
            match, _ = candidate.matches(scope)
            if match is Match.FULL:
                return template
            if match is Match.PARTIAL and partial is UNMATCHED:
                partial = template  # the method is not allowed (405): still this route's
        return partial

    def _index(self, scope: Scope) -> None:
        router = getattr(scope.get("app"), "router", None)
        self._routes = []
        for route in iter_route_contexts(getattr(router, "routes", ())):
            template = getattr(route, "path_format", None) or getattr(route, "path", None) or UNMATCHED
            self._routes.append((route, template))
            self._templates[id(getattr(route, "original_route", route))] = template


async def exposition(platform: Platform, stack: ResilientStack | None = None) -> bytes:
    """The /metrics text, with the scrape-time gauges refreshed first. `stack`: the resilient client to report on
    (default: the platform's; the gateway's proxy path has one of its own)."""
    stack = stack if stack is not None else getattr(platform, "resilience", None)  # None until the platform starts
    if stack is not None:
        client_gauges(stack)
    CONFIG.info({"config_version": platform.config.version or "", "source": platform.config.source})
    FAULTS.clear()
    for fault in platform.faults.active():
        FAULTS.labels(fault.id, fault.kind, fault.describe()).set(1)
    if platform.relay is not None:
        await outbox_gauges(platform.relay)
    if platform.bus.subscriptions:
        await queue_gauges(platform.bus)
    return generate_latest()


def client_gauges(stack: ResilientStack) -> None:
    for service, target in stack.snapshot().items():
        budget = target["retry_budget"]
        allowed = budget.get("retries_allowed", 0)
        RETRY_BUDGET_USED.labels(service).set(budget.get("retries_in_window", 0) / allowed if allowed else 0)
        BULKHEAD_IN_FLIGHT.labels(service).set(target["bulkhead"]["in_flight"])
        # Set here too: the listener sets it on a transition of any breaker of the process, this is the stack's.
        BREAKER_STATE.labels(service).set(BREAKER_STATES.get(target["breaker"]["state"], 0))
    for service, watcher in stack.discovery.watchers.items():
        DISCOVERY_INSTANCES.labels(service).set(len(watcher.instances))
        DISCOVERY_STALE.labels(service).set(1 if watcher.stale else 0)
        DISCOVERY_CACHE_AGE.labels(service).set(watcher.cache_age_s())


_outbox: tuple[Gauge, Gauge] | None = None


def _outbox_gauges() -> tuple[Gauge, Gauge]:
    """Made on the first scrape of a process that has an outbox, not at import: unlabelled gauges made at import
    would show a backlog of 0 on the gateway and the probe, which have no outbox at all."""
    global _outbox
    if _outbox is None:
        _outbox = (Gauge("msa_outbox_backlog", "Events committed in the outbox and not yet confirmed by the broker"),
                   Gauge("msa_outbox_oldest_age_seconds",
                         "Age of the oldest event not yet confirmed by the broker; 0 when none"))
    return _outbox


async def outbox_gauges(relay: OutboxRelay) -> None:
    try:
        async with asyncio.timeout(SCRAPE_TIMEOUT_S):
            count, oldest = await relay.unsent()
    except Exception as exc:  # the database away or slow: keep the last values, answer the scrape
        log.debug("metrics: outbox not read (%s)", exc or type(exc).__name__)
        return
    backlog, oldest_age = _outbox_gauges()
    backlog.set(count)
    oldest_age.set(max(0.0, time.time() - oldest) if oldest is not None else 0)


async def queue_gauges(bus: EventBus) -> None:
    depths = await bus.queue_depths(timeout_s=SCRAPE_TIMEOUT_S)
    # Left out while the broker does not answer: a last value would claim to know the depth through an outage.
    QUEUE_MESSAGES.clear()
    for queue, messages in depths.items():
        QUEUE_MESSAGES.labels(queue).set(messages)
