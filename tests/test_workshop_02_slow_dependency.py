"""Workshop 2 — a slow dependency (timeouts, bulkhead, breaker, fallback).

The twin of workshop/02-slow-dependency.md: catalog answers 2 s late. The order service's calls time out per its
config (order.yml `http.timeout_s`), its bulkhead caps how many wait at once, its breaker opens, and it places
orders on last-known prices; routes that don't touch catalog keep their latency.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx
import pytest

from support import Api, Stack, assert_healed, msa
from test_config_refresh import edited, refresh, wait_for
from test_workshop_01_kill_an_instance import ADMIN, resilience

pytestmark = pytest.mark.integration
CATALOG = ("catalog-1", "catalog-2")


def timed(call) -> tuple[int, float]:
    started = time.perf_counter()
    status = call().status_code
    return status, (time.perf_counter() - started) * 1000


def inject(stack: Stack, programs: tuple[str, ...], fault: dict) -> None:
    for p in programs:
        r = httpx.post(stack.topology.url(p) + "/admin/faults", json=fault, headers=ADMIN)
        assert r.status_code == 201, r.text


def heal_faults(stack: Stack, programs: tuple[str, ...]) -> None:
    for p in programs:
        httpx.delete(stack.topology.url(p) + "/admin/faults", headers=ADMIN)


def p50(samples: list[float]) -> float:
    return statistics.median(samples)


def priced_everywhere(api: Api, sku: str) -> None:
    """Place orders until both order instances have seen the SKU's price (the gateway alternates between them)."""
    for _ in range(4):
        assert api.place([{"sku": sku, "quantity": 1}]).status_code == 201


def close_breakers(stack: Stack, api: Api, sku: str, timeout: float = 20.0) -> None:
    """Heal: a breaker closes only when a call probes it after reset_timeout, so keep placing orders until both
    order instances' breakers for catalog are closed again."""
    wait_for(lambda: api.place([{"sku": sku, "quantity": 1}]) is not None and all(
        resilience(stack, p).get("catalog", {}).get("breaker", {}).get("state", "closed") == "closed"
        for p in ("order-1", "order-2")), timeout=timeout, what="both order breakers for catalog to close")


def test_a_slow_catalog_times_out_is_bulkheaded_and_leaves_other_routes_fast(stack: Stack, api: Api):
    sku = sorted(api.products())[0]
    priced_everywhere(api, sku)
    me = lambda: api.http.get("/api/users/me", headers=api.auth)  # noqa: E731 - never touches catalog
    baseline = [timed(me)[1] for _ in range(20)]
    with edited(stack, "order.yml", "bulkhead: {services: {catalog: 4}}\nbreaker: {fail_max: 5, reset_timeout_s: 5}\n"):
        refresh(stack, "order")
        wait_for(lambda: all(stack.admin(p)["settings"]["bulkhead"]["services"] == {"catalog": 4}
                             for p in ("order-1", "order-2")), what="the bulkhead setting")
        msa(stack, "chaos", "latency", "catalog", "--ms", "2000", "--route", "/products")  # the page's command
        try:
            async def burst() -> list[tuple[int, float]]:  # 30 at once: far more than the bulkheads admit
                async with httpx.AsyncClient(base_url=api.http.base_url, timeout=15) as http:
                    async def one() -> tuple[int, float]:
                        started = time.perf_counter()
                        r = await http.post("/api/orders", json={"items": [{"sku": sku, "quantity": 1}]},
                                            headers=api.auth)
                        return r.status_code, (time.perf_counter() - started) * 1000
                    return await asyncio.gather(*(one() for _ in range(30)))

            burst_results = asyncio.run(burst())
            during = [timed(me)[1] for _ in range(20)]
            # The timed-out calls have opened the breakers: placing now skips catalog at once (last-known price).
            after = [timed(lambda: api.place([{"sku": sku, "quantity": 1}])) for _ in range(6)]
            guards = {p: resilience(stack, p)["catalog"] for p in ("order-1", "order-2")}
        finally:
            msa(stack, "chaos", "heal")
        close_breakers(stack, api, sku)
    assert_healed(stack)
    slowest = max(ms for _, ms in burst_results)
    rejected = [g["bulkhead"]["rejected"] for g in guards.values()]
    print(f"\n/api/users/me p50 {p50(baseline):.1f} ms before, {p50(during):.1f} ms with catalog 2 s slow; burst of "
          f"30 placements: {sum(s == 201 for s, _ in burst_results)} placed, slowest {slowest:.0f} ms, bulkhead "
          f"rejections {rejected} (catalog limit 4 per order instance); then breakers {[g['breaker']['state'] for g in guards.values()]}"
          f" and placements took {[f'{ms:.0f}ms' for _, ms in after]}")
    assert p50(during) < p50(baseline) + 50  # the unrelated route keeps its latency
    assert all(status == 201 for status, _ in burst_results + after)  # on last-known prices when catalog can't answer
    assert sum(rejected) > 0  # the bulkhead turned calls away rather than let them all wait
    assert slowest < 4000  # each call waits for its timeout (1 s, one retry) at most, never the full 2 s twice
    assert all(g["breaker"]["state"] == "open" for g in guards.values())
    assert statistics.median(ms for _, ms in after) < 500  # the open breaker fails fast into the fallback
