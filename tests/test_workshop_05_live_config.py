"""Workshop 05, change configuration live (workshop/05-live-config.md), step by step: switch the load-balancing
strategy and add a feature flag in config-repo's application.yml, `POST /actuator/busrefresh`, and see every
instance report it in `/admin/config` within 2 s, with no restart; the order service's client uses the new strategy
on its very next call (`/admin/resilience`). Then put the file back and refresh again."""

from __future__ import annotations

import time

import httpx
import pytest

from support import ADMIN_TOKEN, Api, Stack, assert_healed, msa
from test_config_refresh import edited, refresh, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CHANGE = "loadbalancing: {strategy: least_outstanding}\nfeatures: {workshop_banner: true}\n"


def catalog_strategy(stack: Stack, program: str) -> str:
    r = httpx.get(stack.topology.url(program) + "/admin/resilience",
                  headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5)
    r.raise_for_status()
    return r.json()["targets"]["catalog"]["strategy"]


def test_workshop_05_a_config_change_reaches_every_instance_live_within_2_s(stack: Stack, api: Api):
    products = api.products()
    sku = max(products, key=lambda s: products[s]["stock"])  # other tests take stock: an order must confirm
    assert api.place([{"sku": sku, "quantity": 1}]).status_code == 201  # order has called catalog: a target
    before = {p: stack.admin(p) for p in stack.instances}
    pids = {p: stack.topology.pid(p) for p in stack.instances}
    assert all(doc["settings"]["loadbalancing"]["strategy"] == "round_robin" for doc in before.values())
    assert catalog_strategy(stack, "order-1") == "round_robin"
    try:
        with edited(stack, "application.yml", CHANGE):
            started = time.monotonic()
            refresh(stack)  # curl -X POST localhost:8888/actuator/busrefresh
            seen: dict[str, float] = {}

            def everyone_has_it() -> bool:
                for p in stack.instances:
                    if p not in seen:
                        s = stack.admin(p)["settings"]
                        if s["loadbalancing"]["strategy"] == "least_outstanding" and s["features"].get("workshop_banner"):
                            seen[p] = time.monotonic() - started
                return len(seen) == len(stack.instances)

            took = wait_for(everyone_has_it, timeout=10, what="every instance to show the new settings")
            print(f"\n[05] new settings in /admin/config of all {len(seen)} instances {took * 1000:.0f} ms after "
                  f"busrefresh; per instance (ms): "
                  + ", ".join(f"{p} {s * 1000:.0f}" for p, s in sorted(seen.items(), key=lambda kv: kv[1])))
            assert took < 2.0
            for p in stack.instances:
                doc = stack.admin(p)
                assert doc["refreshes"] == before[p]["refreshes"] + 1 and doc["version"] != before[p]["version"], p
            assert catalog_strategy(stack, "order-1") == "least_outstanding"  # the client reads it on every call
            r = api.place([{"sku": sku, "quantity": 1}])
            assert r.status_code == 201 and api.wait_final(r.json()["id"])["status"] == "CONFIRMED"
            assert {p: stack.topology.pid(p) for p in stack.instances} == pids, "an instance was restarted"
        # `edited` put application.yml back and refreshed: every instance is on the original settings again
        restored = {p: stack.admin(p)["settings"] for p in stack.instances}
        assert all(s["loadbalancing"]["strategy"] == "round_robin" and "workshop_banner" not in s["features"]
                   for s in restored.values())
        assert catalog_strategy(stack, "order-1") == "round_robin"
        assert {p: stack.topology.pid(p) for p in stack.instances} == pids
    finally:
        msa(stack, "chaos", "heal")
        assert_healed(stack)
