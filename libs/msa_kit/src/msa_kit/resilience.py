"""Calls to other services, as layers of httpx transports (the encode/httpx way), composed in `ResilientStack`:

    Tracing → Bulkhead → Breaker → Retry → Balancing (+ outlier ejection, timeout) → HTTP/1.1 (msa_kit.http1)

A request names the *service*, not an address: `GET http://catalog/products/X`. The balancer resolves it from
the discovery cache, fails over to another instance on a refused connection and ejects instances that keep
failing; retries stay within a budget; the breaker stops calling a service that keeps failing; the bulkhead caps
concurrent calls. Failures surface as `ServiceUnavailable` (→ 503) or `UpstreamTimeout` (→ 504).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol, TypeVar

import httpx
import pybreaker
from opentelemetry.instrumentation.httpx import AsyncOpenTelemetryTransport
from prometheus_client import Counter, Gauge

from .balancing import Strategy, WeightedVersions, strategy
from .discovery import Discovery, Instance
from .guards import (Bulkhead, BulkheadFull, OutlierDetector, OutlierPolicy, RetryBudget, RetryPolicy,
                     full_jitter_sleep)
from .http1 import Http1Transport

log = logging.getLogger(__name__)

# What counts against an instance (outlier) and a service (breaker): it failed or hung. Not 503: a service that
# answers "unavailable" at once is saying its own dependency is down (order, when catalog is), and counting that
# would spread one outage to every caller of the messenger — the cascade breakers exist to prevent.
FAILURE_STATUSES = frozenset({500, 502, 504})

# `instance`: the one the balancer picked, so the counter shows how calls spread over a service's instances.
ATTEMPTS = Counter("msa_client_attempts", "Calls sent to an instance of a service (retries and failovers included)",
                   ["service", "instance"])
RETRIES = Counter("msa_client_retries", "Calls retried within the retry budget", ["service"])
RETRIES_REFUSED = Counter("msa_client_retries_refused", "Retries the retry budget refused", ["service"])
EJECTIONS = Counter("msa_outlier_ejections", "Instances ejected after consecutive failures", ["service", "instance"])
BULKHEAD_REJECTIONS = Counter("msa_bulkhead_rejections", "Calls refused at once by a full bulkhead", ["service"])
BREAKER_TRANSITIONS = Counter("msa_breaker_transitions", "Circuit breaker state changes", ["service", "to"])
BREAKER_STATE = Gauge("msa_breaker_state", "Circuit breaker per service: 0 closed, 1 half-open, 2 open", ["service"])
BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}

class HasStatus(Protocol):
    @property
    def status_code(self) -> int: ...


R = TypeVar("R", bound=HasStatus)
Call = Callable[[], Awaitable[R]]

__all__ = ["ServiceUnavailable", "UpstreamTimeout", "BalancingTransport", "BreakerTransport",
           "BreakerPolicy", "RetryTransport", "BulkheadTransport", "Policies", "ResilientStack", "service_client"]


class ServiceUnavailable(httpx.TransportError):
    """No healthy instance could take the call (none registered, all refused, or the breaker is open)."""

    def __init__(self, service: str, reason: str) -> None:
        super().__init__(f"{service} unavailable: {reason}")
        self.service, self.reason = service, reason


class UpstreamTimeout(httpx.TimeoutException):
    def __init__(self, service: str, detail: str, instance: str = "") -> None:
        super().__init__(f"{service} did not answer in time: {detail}")
        self.service, self.instance = service, instance


class BalancingTransport(httpx.AsyncBaseTransport):
    """Picks an instance of the service the URL names. A request may carry `extensions["msa.weights"]`
    ({version: weight}) to split calls between instance versions (canary) before the strategy picks."""

    def __init__(self, discovery: Discovery, inner: httpx.AsyncBaseTransport,
                 strategy_for: Callable[[str], str] | None = None, outliers: OutlierDetector | None = None,
                 weights_for: Callable[[str], dict[str, int] | None] = lambda _s: None) -> None:
        self.discovery, self.inner, self.weights_for = discovery, inner, weights_for
        self.outliers = outliers or OutlierDetector(lambda _s: OutlierPolicy())
        self._strategies: dict[tuple[str, str, str], Strategy] = {}
        self._strategy_for = strategy_for or (lambda _service: "round_robin")
        self._weighted: dict[tuple[str, tuple[tuple[str, int], ...]], WeightedVersions] = {}
        self.in_flight: dict[str, int] = {}  # instance id → calls in flight (least_outstanding reads it)
        self._attempts: dict[tuple[str, str], Any] = {}

    def _strategy(self, service: str, version: str = "") -> Strategy:
        # Asked on every call, so a strategy changed in config applies to the very next request. One per version
        # when weights split by version: a shared round-robin counter would skew the split within a version.
        key = (service, self._strategy_for(service), version)
        if key not in self._strategies:
            self._strategies[key] = strategy(key[1], self.in_flight)
        return self._strategies[key]

    def _versions(self, service: str, weights: dict[str, int]) -> WeightedVersions:
        key = (service, tuple(sorted(weights.items())))
        picker = self._weighted.get(key)
        if picker is None:
            picker = self._weighted[key] = WeightedVersions(weights)
        return picker

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        service = request.url.host
        picked: list[Instance] = []

        async def send(instance: Instance) -> httpx.Response:
            picked.append(instance)
            request.url = request.url.copy_with(host=instance.address, port=instance.port)
            request.headers["Host"] = f"{instance.address}:{instance.port}"
            return await self.inner.handle_async_request(request)

        timeout = request.extensions.get("msa.total_timeout") or request.extensions.get("timeout", {}).get("read")
        response = await self.balance(service, send, avoid=request.extensions.get("msa.avoid", frozenset()),
                                      weights=request.extensions.get("msa.weights"), timeout=timeout)
        response.extensions["msa.instance"] = picked[-1].id
        return response

    async def balance(self, service: str, send: Callable[[Instance], Awaitable[R]], *,
                      avoid: frozenset[str] = frozenset(), weights: dict[str, int] | None = None,
                      timeout: float | None = None) -> R:
        """The balancer without httpx: `send(instance)` makes the call (the gateway's proxy path has a client of
        its own). Fails over refused connections, ejects outliers, times out each attempt after `timeout`."""
        instances = await self.discovery.instances(service)
        if not instances:
            raise ServiceUnavailable(service, "no passing instance in discovery")
        # Ejected outliers sit out (unless that leaves none), and so do instances a retry is avoiding.
        available = self.outliers.available(service, instances)
        candidates = [i for i in available if i.id not in avoid] if avoid else available
        if not candidates:
            candidates = available
        # Canary weights: a gateway route's own, else the service's from config (loadbalancing.weights).
        weights = weights or self.weights_for(service)
        counted = self._attempts
        last: Exception | None = None
        # A refused connection never reached the service, so trying the next instance is safe for any method.
        while candidates:
            pool = self._versions(service, weights).pick(candidates) if weights else candidates
            version = pool[0].meta.get("version", "v1") if weights else ""
            instance = self._strategy(service, version).choose(pool)
            attempts = counted.get((service, instance.id))
            if attempts is None:  # labels() takes a lock and hashes: once per instance, not per call
                attempts = counted[(service, instance.id)] = ATTEMPTS.labels(service, instance.id)
                # The counters of what may happen to it start at 0, so a dashboard has a series (and rate() a
                # first point) before the first ejection or retry, as Prometheus' instrumentation guide asks.
                EJECTIONS.labels(service, instance.id)
                RETRIES.labels(service)
                RETRIES_REFUSED.labels(service)
            attempts.inc()
            in_flight = self.in_flight
            in_flight[instance.id] = in_flight.get(instance.id, 0) + 1
            try:
                if timeout is None:  # the caller's client keeps the time (the gateway's does)
                    response = await send(instance)
                else:  # asyncio.timeout, not wait_for: the same deadline without a task per call (3.11's
                    async with asyncio.timeout(timeout):  # wait_for wraps the coroutine in one)
                        response = await send(instance)
            except httpx.ConnectError as exc:
                log.warning("%s instance %s refused the connection; trying another", service, instance.id)
                self._failed(service, instance, instances, definitive=True)
                candidates = [c for c in candidates if c is not instance]
                last = exc
                continue
            except (httpx.TimeoutException, asyncio.TimeoutError) as exc:
                self._failed(service, instance, instances)
                raise UpstreamTimeout(service, f"{instance.id}: {type(exc).__name__}", instance.id) from exc
            finally:
                # Until the headers are in: a streamed body is the caller's business, and cheap to ignore here.
                in_flight[instance.id] -= 1
            if response.status_code in FAILURE_STATUSES:
                self._failed(service, instance, instances)
            else:
                self.outliers.success(service, instance)
            return response
        raise ServiceUnavailable(service, f"every instance refused the connection ({last})")

    def _failed(self, service: str, instance: Instance, instances: list[Instance], definitive: bool = False) -> None:
        if self.outliers.failure(service, instance, instances, definitive=definitive):
            EJECTIONS.labels(service, instance.id).inc()
            log.warning("%s instance %s ejected for %.0f s (refused, or consecutive failures)", service, instance.id,
                        self.outliers.policy(service).ejection_s)

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class BreakerPolicy:
    fail_max: int = 5
    reset_timeout_s: float = 10.0


class _ServerError(Exception):
    """A failure status counts for the breaker, but the caller still receives the response."""


def _raiser(exc: BaseException) -> Callable[[], None]:
    def fail() -> None:
        raise exc
    return fail


class _LogListener(pybreaker.CircuitBreakerListener):
    def state_change(self, cb: pybreaker.CircuitBreaker, old_state, new_state) -> None:  # type: ignore[no-untyped-def]
        log.warning("circuit breaker %s: %s -> %s", cb.name, old_state.name if old_state else None, new_state.name)
        BREAKER_STATE.labels(cb.name).set(BREAKER_STATES.get(new_state.name, 0))
        BREAKER_TRANSITIONS.labels(cb.name, new_state.name).inc()


class BreakerTransport(httpx.AsyncBaseTransport):
    """One pybreaker breaker per target service.

    pybreaker is synchronous: `call()` on a coroutine function would count success before the coroutine runs,
    so we use its `calling()` context around the awaited call. Its half-open state would let every concurrent
    caller through; we admit a single probe and fail the rest fast.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, policy: Callable[[str], BreakerPolicy]) -> None:
        self.inner, self.policy = inner, policy
        self.breakers: dict[str, pybreaker.CircuitBreaker] = {}
        self._probing: set[str] = set()

    def breaker(self, service: str) -> pybreaker.CircuitBreaker:
        cb = self.breakers.get(service)
        if cb is None:
            p = self.policy(service)
            # "No passing instance" is discovery's news, not the service failing: it must not open the breaker
            # (a registry blip would otherwise keep a healthy service cut off for reset_timeout).
            cb = self.breakers[service] = pybreaker.CircuitBreaker(
                fail_max=p.fail_max, reset_timeout=p.reset_timeout_s, name=service, listeners=[_LogListener()],
                exclude=[lambda e: isinstance(e, ServiceUnavailable) and e.reason.startswith("no passing")])
            # Before its first transition too: "closed" is worth a series, or a dashboard cannot tell it from absent.
            BREAKER_STATE.labels(service).set(BREAKER_STATES.get(cb.current_state, 0))
        return cb

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.guard(request.url.host, lambda: self.inner.handle_async_request(request))

    async def guard(self, service: str, call: Call[R]) -> R:
        """The breaker without httpx: `call()` makes the call; its result's status_code is judged."""
        cb = self.breaker(service)
        policy = self.policy(service)  # thresholds are live: config refreshes apply to the next call
        cb.fail_max, cb.reset_timeout = policy.fail_max, policy.reset_timeout_s
        if cb.current_state == pybreaker.STATE_CLOSED and not cb.fail_counter:
            return await self._closed(service, cb, call)
        probe = cb.current_state != pybreaker.STATE_CLOSED
        if probe:
            if service in self._probing:
                raise ServiceUnavailable(service, "circuit breaker open (a probe is in flight)")
            self._probing.add(service)
        response: R | None = None
        try:
            with cb.calling():
                response = await call()
                if response.status_code in FAILURE_STATUSES:
                    raise _ServerError()
        except pybreaker.CircuitBreakerError:
            if response is not None:  # this very failure tripped the breaker: still hand back the 5xx
                return response
            raise ServiceUnavailable(service, "circuit breaker open") from None
        except _ServerError:
            assert response is not None
            return response
        finally:
            if probe:
                self._probing.discard(service)
        return response

    async def _closed(self, service: str, cb: pybreaker.CircuitBreaker, call: Call[R]) -> R:
        """The healthy case without pybreaker's per-call machinery (a lock, a generator context, listeners: ~6 µs a
        call): a success in a closed breaker with no failure counted changes nothing, so only a failure goes through
        pybreaker — counted, and maybe tripping the breaker, with the same outcome as under `calling()`."""
        try:
            response = await call()
        except BaseException as exc:
            try:
                cb.call(_raiser(exc))  # counts it (or resets, for an excluded one) and raises it again
            except pybreaker.CircuitBreakerError:
                raise ServiceUnavailable(service, "circuit breaker open") from None
            raise
        if response.status_code in FAILURE_STATUSES:
            try:
                cb.call(_raiser(_ServerError()))
            except (_ServerError, pybreaker.CircuitBreakerError):
                pass  # counted; the caller still receives the 5xx, even the one that tripped the breaker
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class RetryTransport(httpx.AsyncBaseTransport):
    """Retries an idempotent call on another instance after a timeout, a dropped connection or a 502/503/504,
    with full-jitter backoff, within the service's retry budget (a retry storm is impossible by construction).
    Refused connections never get here: the balancer already moved on to another instance for those."""

    IDEMPOTENT = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}

    def __init__(self, inner: httpx.AsyncBaseTransport, policy: Callable[[str], RetryPolicy]) -> None:
        self.inner, self.policy = inner, policy
        self.budgets: dict[str, RetryBudget] = {}

    def budget(self, service: str) -> RetryBudget:
        if service not in self.budgets:
            self.budgets[service] = RetryBudget(lambda: self.policy(service))
        return self.budgets[service]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        service, url = request.url.host, request.url
        budget, policy = self.budget(service), self.policy(service)
        budget.request()
        replayable = request.method in self.IDEMPOTENT and isinstance(request.stream, httpx.ByteStream)
        avoid: set[str] = set()
        attempt = 0
        while True:
            request.url, request.extensions["msa.avoid"] = url, frozenset(avoid)  # the balancer rewrote the URL
            retry_for = ""
            try:
                response = await self.inner.handle_async_request(request)
                if response.status_code not in (502, 503, 504):
                    return response
                retry_for, failed = str(response.status_code), response.extensions.get("msa.instance", "")
                if not self._may_retry(service, budget, policy, replayable, attempt):
                    return response
                await response.aclose()
            except (UpstreamTimeout, httpx.ReadError, httpx.RemoteProtocolError) as exc:
                failed = exc.instance if isinstance(exc, UpstreamTimeout) else ""
                if not self._may_retry(service, budget, policy, replayable, attempt):
                    raise
                retry_for = type(exc).__name__
            attempt += 1
            avoid.add(failed)
            RETRIES.labels(service).inc()
            log.info("retrying %s %s (%s), attempt %d", request.method, service, retry_for, attempt + 1)
            await full_jitter_sleep(attempt, policy.backoff_ms)

    @staticmethod
    def _may_retry(service: str, budget: RetryBudget, policy: RetryPolicy, replayable: bool, attempt: int) -> bool:
        if not (replayable and attempt < policy.max_retries):
            return False
        if budget.try_retry():
            return True
        RETRIES_REFUSED.labels(service).inc()  # the budget, not the policy, said no: a storm averted
        return False

    async def aclose(self) -> None:
        await self.inner.aclose()


class BulkheadTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, limit: Callable[[str], int]) -> None:
        self.inner, self.limit = inner, limit
        self.bulkheads: dict[str, Bulkhead] = {}

    def bulkhead(self, service: str) -> Bulkhead:
        bulkhead = self.bulkheads.get(service)
        if bulkhead is None:
            bulkhead = self.bulkheads[service] = Bulkhead(lambda: self.limit(service))
            BULKHEAD_REJECTIONS.labels(service)  # a series at 0 from the first call, not from the first rejection
        return bulkhead

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.admit(request.url.host, lambda: self.inner.handle_async_request(request))

    async def admit(self, service: str, call: Call[R]) -> R:
        """The bulkhead without httpx: `call()` runs if the service's limit allows, else ServiceUnavailable."""
        try:
            async with self.bulkhead(service):
                return await call()
        except BulkheadFull as exc:
            BULKHEAD_REJECTIONS.labels(service).inc()
            raise ServiceUnavailable(service, f"bulkhead full: {exc}") from None

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Policies:
    """Where each guard reads its knobs, per target service, on every call (so config refreshes apply live)."""

    breaker: Callable[[str], BreakerPolicy] = lambda _s: BreakerPolicy()
    outlier: Callable[[str], OutlierPolicy] = lambda _s: OutlierPolicy()
    retry: Callable[[str], RetryPolicy] = lambda _s: RetryPolicy()
    bulkhead: Callable[[str], int] = lambda _s: 100
    strategy: Callable[[str], str] = lambda _s: "round_robin"
    weights: Callable[[str], dict[str, int] | None] = lambda _s: None  # {version: weight}: canary / blue-green


class ResilientStack:
    """The one composition of the guards, outermost first:

        Bulkhead → Breaker → Retry → Balancing (+ outlier ejection, per-attempt timeout) → HTTP/1.1

    The bulkhead rejects before anything is spent; the breaker sees the outcome of a call after its retries; the
    balancer fails over refused connections and ejects outliers without waiting for discovery."""

    def __init__(self, discovery: Discovery, policies: Policies, *, max_connections: int = 200) -> None:
        self.discovery, self.policies = discovery, policies
        self.outliers = OutlierDetector(policies.outlier)
        self.balancing = BalancingTransport(discovery, Http1Transport(max_connections), policies.strategy,
                                            self.outliers, policies.weights)
        self.retry = RetryTransport(self.balancing, policies.retry)
        self.breaker = BreakerTransport(self.retry, policies.breaker)
        self.bulkhead = BulkheadTransport(self.breaker, policies.bulkhead)
        self.transport: httpx.AsyncBaseTransport = self.bulkhead

    async def call(self, service: str, send: Callable[[Instance], Awaitable[R]], *,
                   weights: dict[str, int] | None = None, timeout: float | None = None) -> R:
        """The same guards for a caller with a client of its own (the gateway's proxy path, which sends bytes, not
        httpx requests): Bulkhead → Breaker → Balancing, `send(instance)` making each attempt. No retry layer:
        such a caller retries on its own terms (the gateway's are per route)."""
        return await self.bulkhead.admit(service, lambda: self.breaker.guard(
            service, lambda: self.balancing.balance(service, send, weights=weights, timeout=timeout)))

    def snapshot(self) -> dict[str, Any]:
        """What /admin/resilience shows: per target service, every guard's state."""
        services = set(self.breaker.breakers) | set(self.retry.budgets) | set(self.transport.bulkheads)  # type: ignore[attr-defined]
        out: dict[str, Any] = {}
        for svc in sorted(services):
            cb = self.breaker.breakers.get(svc)
            bulkhead = self.transport.bulkheads.get(svc)  # type: ignore[attr-defined]
            watcher = self.discovery.watchers.get(svc)
            out[svc] = {
                "instances": [i.id for i in watcher.instances] if watcher else [],
                "discovery_stale": bool(watcher and watcher.stale),
                "strategy": self.policies.strategy(svc),
                "breaker": {"state": cb.current_state if cb else "closed", "failures": cb.fail_counter if cb else 0,
                            "fail_max": self.policies.breaker(svc).fail_max},
                "outliers": self.outliers.snapshot(svc),
                "retry_budget": self.retry.budgets[svc].snapshot() if svc in self.retry.budgets else {},
                "bulkhead": {"in_flight": bulkhead.in_flight if bulkhead else 0, "limit": self.policies.bulkhead(svc),
                             "rejected": bulkhead.rejected if bulkhead else 0},
            }
        return out


def service_client(stack: ResilientStack, *, timeout_s: float = 2.0) -> httpx.AsyncClient:
    """An httpx client whose URLs name services: `await client.get("http://catalog/products")`.

    Underneath is the kit's own HTTP/1.1 client (msa_kit.http1): httpx's default transport is several times slower
    under concurrency (DESIGN §7), and httpx-aiohttp's request and response objects cost more than the call itself.
    """
    return httpx.AsyncClient(transport=AsyncOpenTelemetryTransport(stack.transport),
                             timeout=httpx.Timeout(timeout_s, connect=min(1.0, timeout_s)))
