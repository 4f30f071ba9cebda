import socket
import uuid

import pytest

from msa_gateway.ratelimit import Limit, MemoryBuckets, RedisBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_bucket_allows_its_burst_then_refills_at_its_rate():
    clock = Clock()
    buckets = MemoryBuckets(clock=clock)
    limit = Limit(capacity=3, rate=1.0)
    decisions = [await buckets.take("r|ada", limit) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    refused = decisions[-1]
    assert refused.retry_after_s == 1 and refused.reset_s == 3
    assert dict(refused.headers())[b"retry-after"] == b"1"
    assert (await buckets.take("r|bob", limit)).allowed  # per caller
    clock.now += 1.0
    assert (await buckets.take("r|ada", limit)).allowed
    assert not (await buckets.take("r|ada", limit)).allowed


async def test_memory_stays_bounded():
    clock = Clock()
    buckets = MemoryBuckets(max_keys=100, clock=clock)
    limit = Limit(capacity=1, rate=1.0)
    for i in range(1000):
        clock.now += 0.01
        await buckets.take(f"r|{i}", limit)
    assert len(buckets._buckets) <= 100


def _redis_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=0.2).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _redis_up(), reason="no Redis at 127.0.0.1:6379 (apt-get install redis-server)")
async def test_redis_buckets_share_one_budget_between_gateways():
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    a, b = RedisBuckets("redis://127.0.0.1:6379/0", prefix), RedisBuckets("redis://127.0.0.1:6379/0", prefix)
    limit = Limit(capacity=4, rate=0.5)
    try:
        allowed = [(await (a if i % 2 else b).take("r|ada", limit)).allowed for i in range(6)]
        assert allowed == [True, True, True, True, False, False]  # two gateways, one bucket
        refused = await a.take("r|ada", limit)
        assert refused.retry_after_s == 2 and refused.remaining == 0
        assert (await a.take("r|bob", limit)).allowed
    finally:
        await a.client.delete(prefix + "r|ada", prefix + "r|bob")
        await a.close()
        await b.close()


async def test_redis_down_lets_requests_through():
    buckets = RedisBuckets("redis://127.0.0.1:1/0")  # nothing listens on port 1
    decision = await buckets.take("r|ada", Limit(1, 1.0))
    assert decision.allowed
    await buckets.close()
