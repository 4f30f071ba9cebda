"""Client-side load balancing: the caller picks an instance from its own cache of the registry's passing set."""

from __future__ import annotations

import itertools
import random
from typing import Protocol, Sequence

from .discovery import Instance


class Strategy(Protocol):
    def choose(self, instances: Sequence[Instance]) -> Instance: ...


class RoundRobin:
    """Each call takes the next instance; over n calls every instance gets n/len(instances)."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def choose(self, instances: Sequence[Instance]) -> Instance:
        return instances[next(self._counter) % len(instances)]


class Random:
    def choose(self, instances: Sequence[Instance]) -> Instance:
        return random.choice(instances)


class LeastOutstanding:
    """Power of two choices: of two instances picked at random, the one with fewer calls in flight. Nearly as good
    as scanning them all for the least loaded, without every caller piling onto the same "best" instance."""

    def __init__(self, in_flight: dict[str, int]) -> None:
        self.in_flight = in_flight  # instance id → calls in flight, kept by the balancer

    def choose(self, instances: Sequence[Instance]) -> Instance:
        if len(instances) == 1:
            return instances[0]
        a, b = random.sample(list(instances), 2)
        return a if self.in_flight.get(a.id, 0) <= self.in_flight.get(b.id, 0) else b


STRATEGIES = {"round_robin": RoundRobin, "random": Random, "least_outstanding": LeastOutstanding}


class WeightedVersions:
    """Canary / blue-green: splits calls between instance versions (registry meta `version`) by weight.

    Smooth weighted round robin (nginx's): with {v1: 90, v2: 10} every run of 100 calls sends exactly 10 to v2,
    spread out rather than in a burst, so a small canary sees steady traffic. Only versions that have a passing
    instance take part: with no v2 registered, v1 takes everything instead of failing a tenth of the calls.
    """

    def __init__(self, weights: dict[str, int]) -> None:
        self.weights = {v: w for v, w in weights.items() if w > 0}
        self._current = dict.fromkeys(self.weights, 0)

    def pick(self, instances: Sequence[Instance]) -> list[Instance]:
        by_version: dict[str, list[Instance]] = {}
        for i in instances:
            by_version.setdefault(i.meta.get("version", "v1"), []).append(i)
        live = [v for v in self.weights if v in by_version]
        if not live:
            return list(instances)  # no weighted version is up: better any instance than none
        total = sum(self.weights[v] for v in live)
        for v in live:
            self._current[v] += self.weights[v]
        best = max(live, key=self._current.__getitem__)
        self._current[best] -= total
        return by_version[best]


def strategy(name: str, in_flight: dict[str, int] | None = None) -> Strategy:
    try:
        if name == "least_outstanding":
            return LeastOutstanding(in_flight if in_flight is not None else {})
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"unknown load-balancing strategy {name!r}; one of {sorted(STRATEGIES)}") from None
