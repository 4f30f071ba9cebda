"""Workshop 06, cut the broker (workshop/06-cut-the-broker.md), step by step: `msa chaos cut broker`, keep placing
orders (accepted, PENDING; the outbox backlog grows: `msa_outbox_backlog` in each order instance's /metrics),
`msa chaos heal`, and watch the backlog drain and every order confirm. Nothing lost, nothing twice.
(tests/test_broker_outage.py is the big version: 1,000 orders.)"""

from __future__ import annotations

import re
import time

import httpx
import pytest

from support import Api, Stack, assert_healed, msa
from test_config_refresh import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ORDERS = 20
ORDER_INSTANCES = ("order-1", "order-2")


def backlog(stack: Stack) -> int:
    """msa_outbox_backlog: order's events not yet confirmed by the broker (GET /metrics on an order instance).
    Both instances share the order database, so each reports the service's whole outbox: ask both, take the max
    (one of them may be busy or reconnecting)."""
    out = {}
    for p in ORDER_INSTANCES:
        text = httpx.get(stack.topology.url(p) + "/metrics", timeout=5).text
        m = re.search(r"^msa_outbox_backlog(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.M)
        assert m, f"{p}: no msa_outbox_backlog in /metrics"
        out[p] = int(float(m.group(1)))
    return max(out.values())


def refresh_accepted(stack: Stack) -> bool:
    """Does the config server's refresh bus publish? (A refresh addressed to no instance: harmless.)"""
    return httpx.post(f"{stack.config_server}/actuator/busrefresh/nobody-at-all", timeout=10).status_code == 204


def test_workshop_06_orders_wait_in_the_outbox_while_the_broker_is_cut_and_all_confirm_after(stack: Stack, api: Api):
    products = api.products()
    sku = max(products, key=lambda s: products[s]["stock"])
    stock = products[sku]["stock"]
    assert stock >= ORDERS, products
    assert backlog(stack) == 0
    try:
        msa(stack, "chaos", "cut", "broker")
        cut = time.monotonic()
        placed, latencies, peak = [], [], 0
        for _ in range(ORDERS):
            t0 = time.perf_counter()
            r = api.place([{"sku": sku, "quantity": 1}])
            latencies.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 201, r.text  # placing an order never needs the broker
            assert r.json()["status"] == "PENDING"
            placed.append(r.json()["id"])
            peak = max(peak, backlog(stack))
        time.sleep(0.5)
        statuses = [api.http.get(f"/api/orders/{o}", headers=api.auth).json()["status"] for o in placed]
        peak = max(peak, backlog(stack))
        assert statuses == ["PENDING"] * ORDERS, statuses  # no event can leave: the sagas wait
        assert peak == ORDERS, peak  # every order.placed event is in an outbox
        assert api.products()[sku]["stock"] == stock
        restoring = time.monotonic()
        msa(stack, "chaos", "heal")  # restores the link (the fault proxy's reset); waits until all are ready
        healed = time.monotonic() - restoring
        wait_for(lambda: backlog(stack) == 0, timeout=30, what="the outbox to drain")
        drained = time.monotonic() - restoring
        wait_for(lambda: all(api.wait_final(o, timeout=0)["status"] == "CONFIRMED" for o in placed),
                 timeout=30, what="every order to confirm")
        confirmed = time.monotonic() - restoring
        wait_for(lambda: refresh_accepted(stack), timeout=30, what="the config server's bus to publish")
        bus = time.monotonic() - restoring
        latencies.sort()
        print(f"\n[06] broker cut {restoring - cut:.1f} s: {ORDERS} orders placed, 0 failed, p50 "
              f"{latencies[len(latencies) // 2]:.0f} ms, max {latencies[-1]:.0f} ms; outbox backlog peak {peak}; "
              f"after the heal: every instance ready {healed:.2f} s, outbox drained {drained:.2f} s, all {ORDERS} "
              f"CONFIRMED {confirmed:.2f} s, busrefresh accepted {bus:.2f} s; "
              f"stock {stock} -> {api.products()[sku]['stock']}")
        assert api.products()[sku]["stock"] == stock - ORDERS  # nothing lost, nothing twice
    finally:
        msa(stack, "chaos", "heal")
        assert_healed(stack)
