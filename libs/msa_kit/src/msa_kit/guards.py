"""The per-service guards of the resilient client, each plain Python and testable alone:

- `OutlierDetector`: Envoy's passive outlier detection — consecutive failures from one instance eject it for a
  while, without waiting for discovery; never the last instance; it comes back when the period ends.
- `RetryBudget`: Finagle's retry budget — retries may add at most `ratio` of the recent requests (plus a small
  floor), so a failing dependency never sees a retry storm whatever the per-request retry count says.
- `Bulkhead`: a concurrency limit per target service; a call that finds it full fails fast instead of queueing,
  so one slow dependency cannot hold every worker of the caller.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .discovery import Instance


@dataclass
class OutlierPolicy:
    consecutive_failures: int = 3
    ejection_s: float = 10.0


@dataclass
class _InstanceHealth:
    failures: int = 0
    ejected_until: float = 0.0
    ejections: int = 0


class OutlierDetector:
    def __init__(self, policy: Callable[[str], OutlierPolicy], clock: Callable[[], float] = time.monotonic) -> None:
        self.policy, self.clock = policy, clock
        self._health: dict[tuple[str, str], _InstanceHealth] = {}

    def _of(self, service: str, instance: Instance) -> _InstanceHealth:
        # get() first: setdefault() would build a throwaway _InstanceHealth on every call, and this runs per
        # instance on every request of the caller.
        key = (service, instance.id)
        health = self._health.get(key)
        if health is None:
            health = self._health[key] = _InstanceHealth()
        return health

    def available(self, service: str, instances: Sequence[Instance]) -> list[Instance]:
        now = self.clock()
        health = self._health
        live = [i for i in instances if (h := health.get((service, i.id))) is None or h.ejected_until <= now]
        return live or list(instances)  # every one ejected: better to try than to refuse (Envoy's panic mode)

    def success(self, service: str, instance: Instance) -> None:
        self._of(service, instance).failures = 0

    def failure(self, service: str, instance: Instance, instances: Sequence[Instance], *,
                definitive: bool = False) -> bool:
        """Record a failure (a timeout or a failure status; `definitive`: a refused connection, which says nothing
        listens there, so it ejects at once); returns True when this ejected the instance."""
        health = self._of(service, instance)
        health.failures += 1
        policy = self.policy(service)
        now = self.clock()
        if (health.failures < policy.consecutive_failures and not definitive) or health.ejected_until > now:
            return False
        others = [i for i in instances if i.id != instance.id and self._of(service, i).ejected_until <= now]
        if not others:
            return False  # never eject the last instance standing
        health.failures, health.ejections = 0, health.ejections + 1
        health.ejected_until = now + policy.ejection_s
        return True

    def snapshot(self, service: str) -> dict[str, dict[str, float | int]]:
        now = self.clock()
        return {iid: {"consecutive_failures": h.failures, "ejections": h.ejections,
                      "ejected_for_s": round(max(0.0, h.ejected_until - now), 1)}
                for (svc, iid), h in self._health.items() if svc == service}


@dataclass
class RetryPolicy:
    max_retries: int = 1  # per request, on top of the first attempt
    budget_ratio: float = 0.2  # retries may add this share of recent requests ...
    min_retries_per_s: float = 3.0  # ... plus this floor, so low traffic can still retry
    backoff_ms: float = 25.0  # base of the full-jitter exponential backoff


@dataclass
class RetryBudget:
    policy: Callable[[], RetryPolicy]
    window_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    _requests: deque[float] = field(default_factory=deque)
    _retries: deque[float] = field(default_factory=deque)

    def _trim(self, now: float) -> None:
        for q in (self._requests, self._retries):
            while q and q[0] < now - self.window_s:
                q.popleft()

    def request(self) -> None:
        # Trimmed here too, not only when a retry is asked for: on a healthy path nothing ever retries, and the
        # window would otherwise grow with every call for the life of the process.
        now = self.clock()
        self._trim(now)
        self._requests.append(now)

    def try_retry(self) -> bool:
        now = self.clock()
        self._trim(now)
        p = self.policy()
        allowed = p.budget_ratio * len(self._requests) + p.min_retries_per_s * self.window_s
        if len(self._retries) >= allowed:
            return False
        self._retries.append(now)
        return True

    def snapshot(self) -> dict[str, float]:
        self._trim(self.clock())
        p = self.policy()
        return {"requests_in_window": len(self._requests), "retries_in_window": len(self._retries),
                "retries_allowed": round(p.budget_ratio * len(self._requests) + p.min_retries_per_s * self.window_s)}


class BulkheadFull(Exception):
    pass


class Bulkhead:
    def __init__(self, limit: Callable[[], int]) -> None:
        self.limit, self.in_flight, self.rejected = limit, 0, 0

    async def __aenter__(self) -> "Bulkhead":
        if self.in_flight >= self.limit():
            self.rejected += 1
            raise BulkheadFull(f"{self.in_flight} calls in flight (limit {self.limit()})")
        self.in_flight += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.in_flight -= 1


async def full_jitter_sleep(attempt: int, base_ms: float) -> None:
    """AWS's "full jitter": sleep a random time up to base·2^attempt, so retries from many callers spread out."""
    import random

    await asyncio.sleep(random.uniform(0, base_ms * 2 ** attempt) / 1000)
