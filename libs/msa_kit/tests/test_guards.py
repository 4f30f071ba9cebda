import asyncio

import pytest

from msa_kit.discovery import Instance
from msa_kit.guards import Bulkhead, BulkheadFull, OutlierDetector, OutlierPolicy, RetryBudget, RetryPolicy

A, B = Instance("a", "127.0.0.1", 1), Instance("b", "127.0.0.1", 2)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_consecutive_failures_eject_an_instance_for_a_period_then_it_returns():
    clock = Clock()
    d = OutlierDetector(lambda _s: OutlierPolicy(consecutive_failures=3, ejection_s=10), clock)
    assert not d.failure("svc", A, [A, B]) and not d.failure("svc", A, [A, B])
    assert d.failure("svc", A, [A, B])  # the third in a row ejects
    assert d.available("svc", [A, B]) == [B]
    clock.now += 10.1
    assert d.available("svc", [A, B]) == [A, B]


def test_a_success_resets_the_count():
    d = OutlierDetector(lambda _s: OutlierPolicy(consecutive_failures=2), Clock())
    d.failure("svc", A, [A, B])
    d.success("svc", A)
    assert not d.failure("svc", A, [A, B])


def test_the_last_instance_is_never_ejected():
    d = OutlierDetector(lambda _s: OutlierPolicy(consecutive_failures=1), Clock())
    assert d.failure("svc", A, [A, B])
    assert not d.failure("svc", B, [A, B])  # B is the last one standing
    assert d.available("svc", [A, B]) == [B]


def test_retries_stay_within_the_budget_however_many_requests_fail():
    clock = Clock()
    budget = RetryBudget(lambda: RetryPolicy(budget_ratio=0.2, min_retries_per_s=0.1), window_s=10, clock=clock)
    granted = 0
    for _ in range(1000):
        budget.request()
        granted += budget.try_retry()
    assert granted == 201  # 20% of 1,000 plus the floor of 0.1/s over 10 s: never one retry per request


async def test_a_full_bulkhead_rejects_at_once():
    bulkhead = Bulkhead(lambda: 2)
    gate = asyncio.Event()

    async def call() -> None:
        async with bulkhead:
            await gate.wait()

    running = [asyncio.create_task(call()) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(BulkheadFull):
        async with bulkhead:
            pass
    gate.set()
    await asyncio.gather(*running)
    assert bulkhead.in_flight == 0 and bulkhead.rejected == 1


def test_a_refused_connection_ejects_at_once():
    d = OutlierDetector(lambda _s: OutlierPolicy(consecutive_failures=3), Clock())
    assert d.failure("svc", A, [A, B], definitive=True)
    assert d.available("svc", [A, B]) == [B]


def test_the_budget_window_stays_bounded_when_nothing_retries():
    clock = Clock()
    budget = RetryBudget(lambda: RetryPolicy(), window_s=10, clock=clock)
    for _ in range(10_000):
        budget.request()
        clock.now += 0.01  # 100 calls a second, for 100 s
    assert len(budget._requests) <= 1001  # what is held in memory, not a trimmed count
