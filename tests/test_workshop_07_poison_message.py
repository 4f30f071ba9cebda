"""Workshop 07, a poison message (workshop/07-poison-message.md), step by step: make the catalog's `order.placed`
handler fail (config-repo catalog.yml `faults: {failing_events: [order.placed]}` + a bus refresh), place an order:
it stays PENDING while the event is retried, then lands in `catalog.events.dlq` (`GET /admin/dlq`: reason,
attempts); fix it (remove the fault, refresh), replay the one message
(`POST /admin/dlq/replay?message_id=`): the order confirms, and the stock moves exactly once."""

from __future__ import annotations

import time

import httpx
import pytest

from support import ADMIN_TOKEN, Api, Stack, assert_healed, msa
from test_config_refresh import edited, refresh, wait_for
from test_events import dead_letters

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CATALOGS = ("catalog-1", "catalog-2")


def letter_for(stack: Stack, order_id: str) -> dict | None:
    return next((m for m in dead_letters(stack) if isinstance(m["body"], dict)
                 and m["body"].get("data", {}).get("order_id") == order_id), None)


def test_workshop_07_a_poison_message_is_dead_lettered_and_replayed_once_after_the_fix(stack: Stack, api: Api):
    products = api.products()
    sku = max(products, key=lambda s: products[s]["stock"])
    stock = products[sku]["stock"]
    try:
        with edited(stack, "catalog.yml", "faults: {failing_events: [order.placed]}\n"):
            refresh(stack, "catalog")  # curl -X POST localhost:8888/actuator/busrefresh/catalog
            wait_for(lambda: all(stack.admin(p)["settings"]["faults"]["failing_events"] == ["order.placed"]
                                 for p in CATALOGS), what="the fault to be switched on")
            started = time.monotonic()
            order = api.place([{"sku": sku, "quantity": 2}]).json()
            assert order["status"] == "PENDING"
            wait_for(lambda: letter_for(stack, order["id"]) is not None, timeout=20,
                     what="the failing event in catalog's DLQ")
            dead_after = time.monotonic() - started
            letter = letter_for(stack, order["id"])
            assert letter is not None
            print(f"\n[07] order.placed {letter['message_id']} dead-lettered {dead_after:.2f} s after the order: "
                  f"attempts {letter['attempts']}, reason {letter['reason']!r}, queue "
                  f"{stack.admin('catalog-1', '/admin/dlq')['queue']}")
            assert letter["attempts"] == 5 and "InjectedFault" in letter["reason"]
            assert api.wait_final(order["id"], timeout=0.3)["status"] == "PENDING"
            assert api.products()[sku]["stock"] == stock  # nothing reserved
        # the fix: `edited` restored catalog.yml and refreshed every instance
        assert all(stack.admin(p)["settings"]["faults"]["failing_events"] == [] for p in CATALOGS)
        replayed_at = time.monotonic()
        r = httpx.post(stack.topology.url("catalog-1") + "/admin/dlq/replay",
                       params={"message_id": letter["message_id"]}, headers=ADMIN, timeout=10)
        assert r.status_code == 200 and r.json() == {"replayed": 1}, r.text
        final = api.wait_final(order["id"], timeout=15)
        confirmed_after = time.monotonic() - replayed_at
        assert final["status"] == "CONFIRMED", final
        # replay once more by the same id: it is no longer in the DLQ, so nothing happens
        again = httpx.post(stack.topology.url("catalog-1") + "/admin/dlq/replay",
                           params={"message_id": letter["message_id"]}, headers=ADMIN, timeout=10)
        assert again.json() == {"replayed": 0}
        time.sleep(0.5)
        after = api.products()[sku]["stock"]
        print(f"[07] after the fix and the replay: CONFIRMED {confirmed_after * 1000:.0f} ms after the replay; "
              f"stock {stock} -> {after} (ordered 2); message still in the DLQ: "
              f"{letter_for(stack, order['id']) is not None}")
        assert after == stock - 2  # exactly once
        assert letter_for(stack, order["id"]) is None
    finally:
        msa(stack, "chaos", "heal")
        assert_healed(stack)
