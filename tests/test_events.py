"""Reliable events on the real broker: the saga's compensation, the read model, exactly-once effects, and poison
messages contained in the dead-letter queue and replayed once fixed."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import aio_pika
import httpx
import pytest

from support import ADMIN_TOKEN, BACKENDS, Api, Stack, stack_on
from test_config_refresh import edited, refresh, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(params=[*BACKENDS, "quorum"])  # "quorum": SQLite, every queue a quorum queue (a cluster's setting)
def stack(request: pytest.FixtureRequest) -> Stack:
    """Every test here runs on both backends: SQLite, and PostgreSQL (the compose stack's, spans over OTLP)."""
    return stack_on(request)


def publish(stack: Stack, routing_key: str, body: bytes, message_id: str | None = None) -> None:
    """Publish as if another service had: straight onto the stack's event exchange."""
    async def go() -> None:
        connection = await aio_pika.connect(stack.topology.spec.amqp_url, timeout=5)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(f"{stack.namespace}msa.events")
            await exchange.publish(aio_pika.Message(body, message_id=message_id or str(uuid.uuid4()),
                                                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                   routing_key=routing_key)
    asyncio.run(go())


def envelope(event_type: str, data: dict[str, Any], event_id: str | None = None, version: int | None = None
             ) -> bytes:
    schema = {"dataschema": f"urn:msa:{event_type}:v{version}"} if version else {}
    return json.dumps({"id": event_id or str(uuid.uuid4()), "source": "/tests", "type": event_type,
                       "specversion": "1.0", "time": "2026-01-01T00:00:00Z", "data": data, **schema}).encode()


def dead_letters(stack: Stack, program: str = "catalog-1") -> list[dict[str, Any]]:
    return stack.admin(program, "/admin/dlq")["messages"]


def test_cancelling_a_confirmed_order_releases_its_stock_and_updates_the_read_model(api: Api):
    before = api.products()
    sku = sorted(before)[1]
    r = api.place([{"sku": sku, "quantity": 3}])
    order_id = r.json()["id"]
    assert api.wait_final(order_id)["status"] == "CONFIRMED"
    assert api.products()[sku]["stock"] == before[sku]["stock"] - 3
    wait_for(lambda: [o["order_id"] for o in api.http.get("/api/users/me/orders", headers=api.auth).json()]
             == [order_id], what="the user's read model to show the confirmed order")
    cancelled = api.http.post(f"/api/orders/{order_id}/cancel", headers=api.auth)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"
    wait_for(lambda: api.products()[sku]["stock"] == before[sku]["stock"], what="the compensation (stock released)")
    wait_for(lambda: api.http.get("/api/users/me/orders", headers=api.auth).json()[0]["status"] == "CANCELLED",
             what="the read model to show the cancellation")
    again = api.http.post(f"/api/orders/{order_id}/cancel", headers=api.auth)
    assert again.status_code == 200
    time.sleep(0.5)
    assert api.products()[sku]["stock"] == before[sku]["stock"]  # released once, not twice


def test_a_rejected_order_cannot_be_cancelled(api: Api):
    sku = sorted(api.products())[0]
    r = api.place([{"sku": sku, "quantity": 1000}])
    assert api.wait_final(r.json()["id"])["status"] == "REJECTED"
    c = api.http.post(f"/api/orders/{r.json()['id']}/cancel", headers=api.auth)
    assert c.status_code == 409 and c.headers["content-type"].startswith("application/problem+json")


def test_the_same_event_delivered_twice_has_one_effect(stack: Stack, api: Api):
    sku = sorted(api.products())[2]
    stock = api.products()[sku]["stock"]
    data = {"order_id": str(uuid.uuid4()), "user_id": "u", "lines": [{"sku": sku, "quantity": 2}], "total_cents": 1}
    event_id = str(uuid.uuid4())
    publish(stack, "order.placed", envelope("order.placed", data, event_id))
    publish(stack, "order.placed", envelope("order.placed", data, event_id))   # a redelivery: same id
    publish(stack, "order.placed", envelope("order.placed", data))             # a duplicate under a new id
    wait_for(lambda: api.products()[sku]["stock"] == stock - 2, what="the reservation")
    time.sleep(1.0)
    assert api.products()[sku]["stock"] == stock - 2


def test_the_catalog_reads_order_placed_v1_and_v2_and_dead_letters_a_version_it_does_not_know(
        stack: Stack, api: Api):
    """order.placed v2 (contracts/README.md): order publishes v2; the catalog still reads a v1 event (in flight
    during the change, or replayed) through its upcaster; a v3 it cannot know goes to the DLQ with the reason."""
    sku = sorted(api.products())[3]
    stock = api.products()[sku]["stock"]
    lines = [{"sku": sku, "quantity": 1}]
    v1 = {"order_id": str(uuid.uuid4()), "user_id": "u", "lines": lines, "total_cents": 100}
    v2 = {"order_id": str(uuid.uuid4()), "user_id": "u", "lines": lines,
          "total": {"amount_cents": 100, "currency": "EUR"}}
    v3_id = str(uuid.uuid4())
    publish(stack, "order.placed", envelope("order.placed", v1, version=1))
    publish(stack, "order.placed", envelope("order.placed", v2, version=2))
    publish(stack, "order.placed", envelope("order.placed", {**v2, "order_id": str(uuid.uuid4())}, version=3), v3_id)
    wait_for(lambda: api.products()[sku]["stock"] == stock - 2, what="both reservations, v1 and v2")
    wait_for(lambda: v3_id in {m["message_id"] for m in dead_letters(stack)}, what="the v3 event in the DLQ")
    letter = next(m for m in dead_letters(stack) if m["message_id"] == v3_id)
    assert "order.placed v3 is newer than OrderPlacedV2 reads (v2)" in letter["reason"], letter
    assert api.products()[sku]["stock"] == stock - 2


def test_poison_messages_end_in_the_dlq_with_reasons_and_the_consumer_keeps_going(stack: Stack, api: Api):
    bad_json, bad_payload = str(uuid.uuid4()), str(uuid.uuid4())
    publish(stack, "order.placed", b"{not json", bad_json)
    publish(stack, "order.placed", envelope("order.placed", {"order_id": "x", "user_id": "u", "lines": [],
                                                             "total_cents": 0}), bad_payload)
    wait_for(lambda: {bad_json, bad_payload} <= {m["message_id"] for m in dead_letters(stack)},
             what="both poison messages in catalog's DLQ")
    by_id = {m["message_id"]: m for m in dead_letters(stack)}
    assert "unparseable" in by_id[bad_json]["reason"] and by_id[bad_json]["attempts"] == 1
    assert "payload rejected" in by_id[bad_payload]["reason"]
    sku = sorted(api.products())[0]  # the consumer kept going
    r = api.place([{"sku": sku, "quantity": 1}])
    assert api.wait_final(r.json()["id"])["status"] == "CONFIRMED"


def test_a_handler_that_always_fails_is_retried_then_dead_lettered_and_replay_after_the_fix_applies_it_once(
        stack: Stack, api: Api):
    sku = sorted(api.products())[1]
    stock = api.products()[sku]["stock"]
    with edited(stack, "catalog.yml", "faults: {failing_events: [order.placed]}\n"):
        refresh(stack, "catalog")
        wait_for(lambda: all(stack.admin(p)["settings"]["faults"]["failing_events"] == ["order.placed"]
                             for p in ("catalog-1", "catalog-2")), what="the fault to be switched on")
        started = time.monotonic()
        order = api.place([{"sku": sku, "quantity": 1}]).json()
        wait_for(lambda: any(m["body"]["data"]["order_id"] == order["id"] for m in dead_letters(stack)
                             if isinstance(m["body"], dict)), timeout=20, what="the failing event in the DLQ")
        print(f"dead-lettered after the retries in {time.monotonic() - started:.1f} s")
        letter = next(m for m in dead_letters(stack) if isinstance(m["body"], dict)
                      and m["body"]["data"]["order_id"] == order["id"])
        assert letter["attempts"] == 5 and "InjectedFault" in letter["reason"]
        assert api.wait_final(order["id"], timeout=0.5)["status"] == "PENDING"
        assert api.products()[sku]["stock"] == stock
    # the fix is in (the `edited` block restored and refreshed the configuration): replay
    r = httpx.post(stack.topology.url("catalog-1") + "/admin/dlq/replay",
                   params={"message_id": letter["message_id"]}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 200 and r.json() == {"replayed": 1}
    assert api.wait_final(order["id"])["status"] == "CONFIRMED"
    assert api.products()[sku]["stock"] == stock - 1
    assert all(m["message_id"] != letter["message_id"] for m in dead_letters(stack))


def test_the_quorum_stacks_queues_are_quorum_queues_and_the_classic_stacks_classic(quorum_stack: Stack,
                                                                                    sqlite_stack: Stack):
    """events.queue_type: a queue accepts a redeclaration only with the type it has (PRECONDITION_FAILED else),
    so redeclaring tells the type without a management API."""
    async def accepts(stack: Stack, queue: str, queue_type: str) -> bool:
        connection = await aio_pika.connect(stack.topology.spec.amqp_url, timeout=5)
        async with connection:
            channel = await connection.channel()
            try:
                await channel.declare_queue(f"{stack.namespace}{queue}", durable=True, arguments={
                    "x-queue-type": queue_type, "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": f"{stack.namespace}catalog.events.dlq"})
            except aio_pika.exceptions.ChannelPreconditionFailed:
                return False
            return True

    for queue_type, stack in (("quorum", quorum_stack), ("classic", sqlite_stack)):
        other = "classic" if queue_type == "quorum" else "quorum"
        assert asyncio.run(accepts(stack, "catalog.events", queue_type)), queue_type
        assert not asyncio.run(accepts(stack, "catalog.events", other)), queue_type
