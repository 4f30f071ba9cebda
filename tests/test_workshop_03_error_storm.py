"""Workshop 3 — an error storm (the breaker opens, the fallback answers, one half-open probe recovers).

The twin of workshop/03-error-storm.md: every catalog call fails. After `breaker.fail_max` failures the order
service stops calling catalog: placing an order with a recently seen price still works (fallback), one with no
known price is refused at once with a clear 503, and user endpoints and order reads are unaffected. Once catalog
heals, a single probe closes the breaker and orders flow as before.
"""

from __future__ import annotations

import statistics
import time
import uuid

import httpx
import pytest

from support import Api, Stack, assert_healed, metric, msa
from test_config_refresh import edited, refresh, wait_for
from test_workshop_01_kill_an_instance import ADMIN, resilience
from test_workshop_02_slow_dependency import close_breakers, priced_everywhere, timed

pytestmark = pytest.mark.integration


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def test_an_error_storm_opens_the_breaker_fails_fast_and_one_probe_recovers(stack: Stack, api: Api):
    known = sorted(api.products())[0]
    priced_everywhere(api, known)
    fresh = f"FRESH-{uuid.uuid4().hex[:6]}"  # a product no order instance has priced yet
    r = httpx.put(stack.topology.url("catalog-1") + f"/admin/products/{fresh}", headers=ADMIN,
                  json={"name": fresh, "price_cents": 500, "stock": 100})
    assert r.status_code == 200
    order_id = api.orders()[0]["id"]
    healthy_reads = [timed(lambda: api.http.get(f"/api/orders/{order_id}", headers=api.auth))[1] for _ in range(10)]
    with edited(stack, "order.yml", "breaker: {fail_max: 3, reset_timeout_s: 2}\n"):
        refresh(stack, "order")
        wait_for(lambda: all(stack.admin(p)["settings"]["breaker"]["reset_timeout_s"] == 2 for p in
                             ("order-1", "order-2")), what="the breaker settings")
        msa(stack, "chaos", "errors", "catalog", "--status", "500", "--route", "/products")  # the page's command
        try:
            # Until both order instances' breakers open, a fresh SKU's placement still goes to catalog and fails.
            wait_for(lambda: all(resilience(stack, p)["catalog"]["breaker"]["state"] == "open"
                                 for p in ("order-1", "order-2"))
                     if api.place([{"sku": fresh, "quantity": 1}]).status_code == 503 else False,
                     timeout=10, what="both breakers to open")
            fast = [timed(lambda: api.place([{"sku": fresh, "quantity": 1}])) for _ in range(20)]
            fallback = [timed(lambda: api.place([{"sku": known, "quantity": 1}])) for _ in range(10)]
            reads = [timed(lambda: api.http.get(f"/api/orders/{order_id}", headers=api.auth)) for _ in range(10)]
            me = [timed(lambda: api.http.get("/api/users/me", headers=api.auth)) for _ in range(10)]
            problem = api.place([{"sku": fresh, "quantity": 1}])
            metric_open = [metric(stack, p, "msa_breaker_state", service="catalog") for p in ("order-1", "order-2")]
        finally:
            msa(stack, "chaos", "heal")
        healed_at = time.monotonic()
        # After reset_timeout one probe goes through, succeeds, and the breaker closes.
        wait_for(lambda: api.place([{"sku": fresh, "quantity": 1}]).status_code == 201, timeout=15,
                 what="orders for a fresh SKU to flow again")
        recovered_s = time.monotonic() - healed_at
        close_breakers(stack, api, known)
        states = [resilience(stack, p)["catalog"]["breaker"]["state"] for p in ("order-1", "order-2")]
        metric_closed = [metric(stack, p, "msa_breaker_state", service="catalog") for p in ("order-1", "order-2")]
    assert_healed(stack)
    print(f"\nbreaker open: fresh-SKU placements {[s for s, _ in fast][:3]}… p50 {statistics.median(m for _, m in fast):.1f}"
          f" ms p99 {pct([m for _, m in fast], 99):.1f} ms; fallback placements {[s for s, _ in fallback][:3]}…; "
          f"order reads p50 {statistics.median(m for _, m in reads):.1f} ms (healthy "
          f"{statistics.median(healthy_reads):.1f} ms); user reads {[s for s, _ in me][:3]}…; "
          f"recovered {recovered_s:.1f} s after healing; breakers now {states}")
    assert all(status == 503 for status, _ in fast)
    assert problem.headers["content-type"].startswith("application/problem+json")
    assert "no recent price" in problem.json()["detail"] and fresh in problem.json()["detail"]
    assert pct([m for _, m in fast], 99) < 200  # fails fast (the bench measures the figure the issue names)
    assert all(status == 201 for status, _ in fallback)  # last-known prices
    assert all(status == 200 for status, _ in reads + me)
    assert states == ["closed", "closed"]
    # What Prometheus and the resilience dashboard see: order → catalog open (2) during the storm, closed (0) after.
    assert metric_open == [2, 2] and metric_closed == [0, 0], (metric_open, metric_closed)
