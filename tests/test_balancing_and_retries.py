"""Client-side load balancing and retries on the real topology: an even round robin, a strategy switched live from
config-repo, and no retry storm however hard a dependency fails."""

from __future__ import annotations

import math
import re
import time
import uuid
from collections import Counter

import httpx
import pytest

from support import Api, Stack, metric
from test_config_refresh import edited, refresh, wait_for
from test_workshop_01_kill_an_instance import ADMIN, resilience
from test_workshop_02_slow_dependency import CATALOG, heal_faults, inject

pytestmark = pytest.mark.integration


def routed(stack: Stack, since: int) -> Counter[str]:
    """Which catalog instance the gateway sent each catalog request to, from its access log after byte `since`."""
    text = stack.topology.log_path("gateway").read_bytes()[since:].decode(errors="replace")
    return Counter(m.group(1) for m in re.finditer(r'"upstream": "(catalog-\d)"', text))


def log_size(stack: Stack) -> int:
    return stack.topology.log_path("gateway").stat().st_size


def test_round_robin_splits_evenly_and_a_strategy_switch_applies_live(stack: Stack, api: Api):
    mark = log_size(stack)
    for _ in range(200):
        assert api.http.get("/api/catalog/products").status_code == 200
    time.sleep(0.3)
    split = routed(stack, mark)
    print(f"\nround robin over 200 catalog reads: {dict(split)}")
    assert sum(split.values()) == 200 and abs(split["catalog-1"] - split["catalog-2"]) <= 20  # within 10% of even
    with edited(stack, "gateway.yml", "loadbalancing: {services: {catalog: least_outstanding}}\n"):
        refresh(stack, "gateway")
        wait_for(lambda: resilience(stack, "gateway").get("catalog", {}).get("strategy") == "least_outstanding",
                 what="the gateway to switch strategy")
        mark = log_size(stack)
        for _ in range(100):
            assert api.http.get("/api/catalog/products").status_code == 200
        time.sleep(0.3)
        print(f"least outstanding over 100 sequential reads: {dict(routed(stack, mark))}")
        assert sum(routed(stack, mark).values()) == 100
    wait_for(lambda: resilience(stack, "gateway")["catalog"]["strategy"] == "round_robin", what="round robin back")


def test_a_failing_dependency_never_sees_a_retry_storm(stack: Stack, api: Api):
    fresh = f"STORM-{uuid.uuid4().hex[:6]}"  # no order instance has a price for it: no fallback, every call counts
    httpx.put(stack.topology.url("catalog-1") + f"/admin/products/{fresh}", headers=ADMIN,
              json={"name": fresh, "price_cents": 1, "stock": 10}).raise_for_status()
    orders = ("order-1", "order-2")
    # 0 before an instance's first call to catalog: its counters do not exist yet.
    before = {p: (metric(stack, p, "msa_client_attempts_total", 0, service="catalog"),
                  metric(stack, p, "msa_client_retries_total", 0, service="catalog")) for p in orders}
    inject(stack, CATALOG, {"kind": "error", "status": 503, "route": "/products"})  # 503: retryable, not a breaker failure
    requests = 100
    started = time.monotonic()
    try:
        statuses = Counter(api.place([{"sku": fresh, "quantity": 1}]).status_code for _ in range(requests))
    finally:
        heal_faults(stack, CATALOG)
    # The budget is a sliding window (10 s). A run that takes longer (a busy machine) gets each window's allowance,
    # and a request can count in two windows.
    windows = math.ceil((time.monotonic() - started) / 10.0)
    attempts = sum(metric(stack, p, "msa_client_attempts_total", service="catalog") - before[p][0] for p in orders)
    retries = sum(metric(stack, p, "msa_client_retries_total", service="catalog") - before[p][1] for p in orders)
    settings = stack.admin("order-1")["settings"]["retry"]
    budget = (settings["budget_ratio"] * requests * min(windows, 2)
              + settings["min_retries_per_s"] * 10 * windows * len(orders))
    print(f"\n{requests} placements against a catalog answering 503: {dict(statuses)}; {attempts:.0f} attempts at "
          f"catalog, {retries:.0f} retries (budget {budget:.0f}; without one: up to "
          f"{requests * settings['max_retries']:.0f})")
    assert statuses == Counter({503: requests})
    assert attempts <= requests * (1 + settings["max_retries"])  # never more than the per-call limit
    assert retries <= budget  # and the budget caps them across calls
