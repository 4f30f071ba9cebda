"""The walking skeleton's promise, end to end on the real topology: sign up, log in, order, confirm — or reject."""

from __future__ import annotations

import time

import pytest

from support import BACKENDS, Api, Stack, stack_on

pytestmark = pytest.mark.integration


@pytest.fixture(params=BACKENDS)
def stack(request: pytest.FixtureRequest) -> Stack:
    """Every test here runs on both backends: SQLite, and PostgreSQL (the compose stack's, spans over OTLP)."""
    return stack_on(request)


def test_every_instance_is_passing_in_discovery(stack: Stack):
    for service, count in stack.topology.spec.expected.items():
        assert len(stack.topology.passing(service)) == count, service


def test_an_order_through_the_gateway_is_confirmed_and_takes_stock(api: Api):
    before = api.products()
    sku = sorted(before)[0]
    started = time.monotonic()
    r = api.place([{"sku": sku, "quantity": 2}])
    assert r.status_code == 201, r.text
    placed = r.json()
    assert placed["status"] == "PENDING" and placed["total_cents"] == 2 * before[sku]["price_cents"]
    assert placed["synthetic"] is False  # a customer's order (no X-Synthetic-Transaction header)
    assert r.headers["x-trace-id"] and len(r.headers["x-trace-id"]) == 32
    final = api.wait_final(placed["id"])
    print(f"order confirmed in {(time.monotonic() - started) * 1000:.0f} ms")
    assert final["status"] == "CONFIRMED"
    assert api.products()[sku]["stock"] == before[sku]["stock"] - 2
    assert [o["id"] for o in api.orders()] == [placed["id"]]


def test_an_order_for_more_than_the_stock_is_rejected_and_stock_is_unchanged(api: Api):
    before = api.products()
    sku, other = sorted(before)[:2]
    r = api.place([{"sku": other, "quantity": 1}, {"sku": sku, "quantity": before[sku]["stock"] + 1}])
    assert r.status_code == 201, r.text
    final = api.wait_final(r.json()["id"])
    assert final["status"] == "REJECTED" and "insufficient stock" in final["reason"]
    after = api.products()
    assert after[sku]["stock"] == before[sku]["stock"] and after[other]["stock"] == before[other]["stock"]


def test_the_same_idempotency_key_places_one_order(api: Api):
    sku = sorted(api.products())[0]
    first = api.place([{"sku": sku, "quantity": 1}], **{"Idempotency-Key": "k-1"})
    again = api.place([{"sku": sku, "quantity": 1}], **{"Idempotency-Key": "k-1"})
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"] and len(api.orders()) == 1


def test_one_order_is_one_trace_across_http_and_both_rabbitmq_hops(stack: Stack, api: Api):
    sku = sorted(api.products())[0]
    r = api.place([{"sku": sku, "quantity": 1}])
    trace_id = r.headers["x-trace-id"]
    assert api.wait_final(r.json()["id"])["status"] == "CONFIRMED"
    hops = (("order.placed", "order", "catalog"), ("stock.reserved", "catalog", "order"))

    def complete(spans: list[dict]) -> bool:
        # Each process exports its own batch (every 200 ms here), so a consume span can be on disk before the
        # publish span it continues: a publish span ends only when the broker confirms, after the consumer may be done.
        sent = {s["context"]["span_id"] for s in spans if s["kind"] == "SpanKind.PRODUCER"
                and any(s["name"].endswith(f"{event} send") for event, _, _ in hops)}
        names = {s["name"] for s in spans}
        return (all(any(n.endswith(f"{event} send") for n in names) for event, _, _ in hops)
                and sum(s["kind"] == "SpanKind.CONSUMER" and s["parent_id"] in sent for s in spans) >= 2
                and len({s["resource"]["attributes"]["service.name"] for s in spans}) >= 4)

    deadline = time.monotonic() + 20
    spans = stack.spans(trace_id)
    while not complete(spans) and time.monotonic() < deadline:
        time.sleep(0.2)
        spans = stack.spans(trace_id)
    service_of = {s["context"]["span_id"]: s["resource"]["attributes"]["service.name"] for s in spans}
    assert {"gateway", "order", "user", "catalog"} <= set(service_of.values()), set(service_of.values())
    for event_type, publisher, consumer in hops:
        # At least once, not exactly once: under load a relay may publish a row again, or the broker redeliver.
        publish = [s for s in spans if s["kind"] == "SpanKind.PRODUCER" and s["name"].endswith(f"{event_type} send")]
        assert publish, f"no publish span for {event_type}: {[s['name'] for s in spans]}"
        assert {service_of[p["context"]["span_id"]] for p in publish} == {publisher}
        # The consume span is a publish span's child: the trace continues across the broker.
        ids = {p["context"]["span_id"] for p in publish}
        consume = [s for s in spans if s["kind"] == "SpanKind.CONSUMER" and s["parent_id"] in ids]
        assert consume, f"no consume span under the {event_type} publish span: {[s['name'] for s in spans]}"
        assert {service_of[c["context"]["span_id"]] for c in consume} == {consumer}


@pytest.mark.parametrize("name,items,raw,with_token,field", [
    ("unknown sku", [{"sku": "NO-SUCH-SKU", "quantity": 1}], None, True, "items[0].sku"),
    ("zero quantity", [{"sku": "BOOK-DDD", "quantity": 0}], None, True, "items[0].quantity"),
    ("negative quantity", [{"sku": "BOOK-DDD", "quantity": -3}], None, True, "items[0].quantity"),
    ("malformed json", None, b"{not json", True, "body"),
    ("missing token", [{"sku": "BOOK-DDD", "quantity": 1}], None, False, "bearer token"),
])
def test_bad_input_is_a_named_4xx_problem_and_stores_nothing(api: Api, name, items, raw, with_token, field):
    headers = {"Content-Type": "application/json", **(api.auth if with_token else {})}
    body = raw if raw is not None else __import__("json").dumps({"items": items}).encode()
    r = api.http.post("/api/orders", content=body, headers=headers)
    assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json"), name
    assert field in r.json()["detail"], (name, r.json())
    assert api.orders() == []
