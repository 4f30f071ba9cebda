"""Rate limiting: one token bucket per (route, caller), in this process's memory or shared in Redis.

A bucket holds up to `capacity` tokens and refills at `rate` tokens a second; a request takes one or is refused
with 429. Memory is exact for one gateway instance; with several instances each would grant the full rate, so
`gateway.rate_limits.redis_url` moves the buckets into Redis, where a Lua script does read-refill-take in one
atomic step (no race between two gateways reading the same bucket).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Limit:
    capacity: int
    rate: float  # tokens per second


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # until the bucket is full again (RateLimit-Reset)
    retry_after_s: int  # until the next token (Retry-After), 0 when allowed

    def headers(self) -> list[tuple[bytes, bytes]]:
        # draft-ietf-httpapi-ratelimit-headers, the widely deployed form of the draft.
        out = [(b"ratelimit-limit", str(self.limit).encode()), (b"ratelimit-remaining", str(self.remaining).encode()),
               (b"ratelimit-reset", str(self.reset_s).encode())]
        if not self.allowed:
            out.append((b"retry-after", str(self.retry_after_s).encode()))
        return out


def decide(limit: Limit, tokens_after: float, allowed: bool) -> Decision:
    """The headers' view of a bucket that holds `tokens_after` tokens once this request was counted."""
    reset = math.ceil((limit.capacity - tokens_after) / limit.rate)
    retry = 0 if allowed else max(1, math.ceil((1 - tokens_after) / limit.rate))
    return Decision(allowed, limit.capacity, int(tokens_after), reset, retry)


class Buckets(Protocol):
    async def take(self, key: str, limit: Limit) -> Decision: ...

    async def close(self) -> None: ...


class MemoryBuckets:
    def __init__(self, max_keys: int = 100_000, clock=time.monotonic) -> None:  # type: ignore[no-untyped-def]
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, updated_at]
        self.max_keys, self.clock = max_keys, clock

    async def take(self, key: str, limit: Limit) -> Decision:
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._sweep(now, limit)
            bucket = self._buckets[key] = [float(limit.capacity), now]
        tokens = min(limit.capacity, bucket[0] + (now - bucket[1]) * limit.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        bucket[0], bucket[1] = tokens, now
        return decide(limit, tokens, allowed)

    def _sweep(self, now: float, limit: Limit) -> None:
        # A bucket idle long enough to be full again is the same as no bucket: forget it (bounded memory).
        idle = limit.capacity / limit.rate
        for key in [k for k, (_, at) in self._buckets.items() if now - at >= idle]:
            del self._buckets[key]
        if len(self._buckets) >= self.max_keys:  # still full of busy callers: drop the oldest half
            for key in sorted(self._buckets, key=lambda k: self._buckets[k][1])[: self.max_keys // 2]:
                del self._buckets[key]

    async def close(self) -> None:
        self._buckets.clear()


# KEYS[1] bucket; ARGV capacity, rate (tokens/s). Redis's own clock, so gateways with skewed clocks agree.
# Floats come back as strings: Redis would truncate a Lua number reply to an integer.
TOKEN_BUCKET_LUA = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or capacity
local ts = tonumber(b[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return {allowed, tostring(tokens)}
"""


class RedisBuckets:
    """Buckets in Redis. If Redis is unreachable the request is let through (fail open) and a warning logged at
    most every 10 s: a limiter outage must not become an API outage."""

    def __init__(self, url: str, prefix: str = "msa:ratelimit:") -> None:
        import redis.asyncio as redis  # only a gateway configured for Redis needs the client

        self.url, self.prefix = url, prefix
        self.client = redis.Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25)
        self.script = self.client.register_script(TOKEN_BUCKET_LUA)
        self._warned_at = 0.0

    async def take(self, key: str, limit: Limit) -> Decision:
        try:
            allowed, tokens = await self.script(keys=[self.prefix + key], args=[limit.capacity, limit.rate])
        except Exception as exc:  # redis.RedisError, OSError, timeouts: all mean "no verdict"
            if time.monotonic() - self._warned_at > 10:
                self._warned_at = time.monotonic()
                log.warning("rate limiter: Redis at %s unavailable (%s); letting requests through", self.url,
                            exc or type(exc).__name__)
            return Decision(True, limit.capacity, limit.capacity, 0, 0)
        return decide(limit, float(tokens), bool(allowed))

    async def close(self) -> None:
        await self.client.aclose()


def buckets(redis_url: str | None, namespace: str = "") -> Buckets:
    return RedisBuckets(redis_url, prefix=f"{namespace}msa:ratelimit:") if redis_url else MemoryBuckets()
