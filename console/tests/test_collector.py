"""The collector against a fake registry and fake instances (httpx.MockTransport): health from both the registry
and the instance's own answer, rates from counters between ticks (a restart's reset counting from 0), the edges
between services and the event flows, and a transition log."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from msa_console import collector as collector_module
from msa_console.collector import Collector, worst_check


def entry(service: str, instance: str, port: int, status: str = "passing") -> dict[str, Any]:
    return {"Service": {"ID": instance, "Service": service, "Address": "127.0.0.1", "Port": port,
                        "Meta": {"version": "v1"}},
            "Checks": [{"CheckID": "serfHealth", "Status": "passing", "Output": "Agent alive and reachable"},
                       {"CheckID": f"service:{instance}", "ServiceID": instance, "Status": status,
                        "Output": "TTL expired" if status == "critical" else "ok"}]}


class World:
    """Two services: order (calls catalog, consumes stock.reserved) and catalog (consumes order.placed)."""

    def __init__(self) -> None:
        self.counts = {"order_requests": 0.0, "order_5xx": 0.0, "calls": 0.0, "placed_consumed": 0.0,
                       "reserved_consumed": 0.0}
        self.started = {"order-1": 1000.0, "catalog-1": 1000.0}
        self.down: set[str] = set()
        self.registry_status = {"order-1": "passing", "catalog-1": "passing"}

    async def registry(self) -> dict[str, list[dict[str, Any]]]:
        return {"order": [entry("order", "order-1", 8301, self.registry_status["order-1"])],
                "catalog": [entry("catalog", "catalog-1", 8201, self.registry_status["catalog-1"])],
                "consul": [entry("consul", "consul", 8300)]}

    def metrics(self, instance: str) -> str:
        c = self.counts
        lines = [f"process_start_time_seconds {self.started[instance]}",
                 'msa_config_info{config_version="abcdef1234567",source="config-server"} 1']
        if instance == "order-1":
            lines += [f'msa_http_requests_total{{method="POST",route="/orders",status="201"}} {c["order_requests"]}',
                      f'msa_http_requests_total{{method="POST",route="/orders",status="503"}} {c["order_5xx"]}',
                      f'msa_client_attempts_total{{service="catalog",instance="catalog-1"}} {c["calls"]}',
                      'msa_breaker_state{service="catalog"} 2',
                      f'msa_consumer_deliveries_total{{event_type="stock.reserved",outcome="ack"}} '
                      f'{c["reserved_consumed"] * 0.75}',
                      f'msa_consumer_deliveries_total{{event_type="stock.reserved",outcome="retry"}} '
                      f'{c["reserved_consumed"] * 0.25}',
                      'msa_outbox_backlog 3',
                      'msa_fault_active{id="1",kind="latency",description="latency 500 ms"} 1']
        else:
            lines += [f'msa_consumer_deliveries_total{{event_type="order.placed",outcome="ack"}} '
                      f'{c["placed_consumed"]}',
                      'msa_queue_messages{queue="main"} 4', 'msa_queue_messages{queue="dlq"} 1']
        return "\n".join(lines) + "\n"

    def handler(self, request: httpx.Request) -> httpx.Response:
        instance = {8301: "order-1", 8201: "catalog-1", 8300: "consul"}[request.url.port]
        if instance in self.down:
            raise httpx.ConnectError("refused", request=request)
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "UP"})
        if request.url.path == "/metrics":
            return httpx.Response(200, text=self.metrics(instance))
        return httpx.Response(404)


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr(collector_module.time, "monotonic", lambda: now[0])
    return now


def make(world: World) -> Collector:
    return Collector(world.registry, httpx.AsyncClient(transport=httpx.MockTransport(world.handler)))


def by_id(snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["id"]: i for s in snapshot["services"] for i in s["instances"]}


async def test_figures_rates_edges_and_flows(world: World, clock: list[float]):
    c = make(world)
    await c.tick()
    world.counts.update(order_requests=18, order_5xx=2, calls=40, placed_consumed=10, reserved_consumed=8)
    clock[0] += 2
    await c.tick()
    snap = c.snapshot
    assert [s["name"] for s in snap["services"]] == ["catalog", "order"], "consul is the registry, not a service"
    order, catalog = by_id(snap)["order-1"], by_id(snap)["catalog-1"]
    assert order["rps"] == 10.0 and order["error_share"] == 0.1
    assert order["breakers"] == {"catalog": "open"} and order["outbox"] == 3 and order["faults"] == ["latency 500 ms"]
    assert order["config_version"] == "abcdef12" and order["breakable"] and order["health"] == "passing"
    assert catalog["queues"] == {"main": 4, "dlq": 1} and catalog["outbox"] is None
    assert snap["calls"] == [{"from": "order", "to": "catalog", "rate": 20.0, "error_share": 0.0}]
    assert {(f["from"], f["to"], f["event_type"], f["rate"], f["error_share"]) for f in snap["flows"]} == {
        ("order", "catalog", "order.placed", 5.0, 0.0), ("catalog", "order", "stock.reserved", 4.0, 0.25)}


async def test_an_instance_not_answering_is_critical_whatever_the_registry_says_and_a_restart_is_noted(
        world: World, clock: list[float]):
    c = make(world)
    await c.tick()
    queue = c.subscribe()
    await c.stop()  # no loop: this test ticks and glances itself
    world.down.add("catalog-1")
    clock[0] += 1
    await c.glance(["catalog-1"])  # between ticks: /health of a crashed instance only, published at once
    catalog = by_id(c.snapshot)["catalog-1"]
    assert catalog["health"] == "critical" and catalog["registry"] == "passing" and not catalog["answering"]
    assert c.snapshot["changes"][0]["text"] == "catalog-1: passing → critical (not answering)"
    assert queue.qsize() >= 1
    await c.glance(["catalog-1"])
    assert len(c.snapshot["changes"]) == 1, "no change, nothing noted"
    world.down.clear()
    world.started["catalog-1"] = 2000.0  # a new process
    world.counts["placed_consumed"] = 0  # its counters start again
    clock[0] += 1
    await c.tick()
    assert by_id(c.snapshot)["catalog-1"]["health"] == "passing"
    assert by_id(c.snapshot)["catalog-1"]["restarts"] == 1
    texts = [e["text"] for e in c.snapshot["changes"]]
    assert texts[:2] == ["catalog-1: restarted", "catalog-1: critical → passing"]
    assert all(f["rate"] >= 0 for f in c.snapshot["flows"]), "a counter reset is no negative rate"


async def test_the_registry_going_critical_shows_its_check_and_a_registry_outage_is_said(world: World,
                                                                                        clock: list[float]):
    c = make(world)
    world.registry_status["order-1"] = "critical"
    await c.tick()
    order = by_id(c.snapshot)["order-1"]
    assert order["health"] == "critical" and order["check_output"] == "TTL expired"

    async def down() -> dict[str, Any]:
        raise httpx.ConnectError("registry refused")

    c.registry = down
    await c.tick()
    assert c.snapshot["services"] == [] and "registry refused" in c.snapshot["registry_error"]


def test_the_services_own_check_speaks_among_equals():
    assert worst_check(entry("order", "order-1", 1)) == ("passing", "ok")
    assert worst_check(entry("order", "order-1", 1, "critical")) == ("critical", "TTL expired")
    assert worst_check({"Checks": []}) == ("passing", "")


async def test_it_polls_only_while_a_page_is_open(world: World):
    polled: list[str] = []
    handler = world.handler

    def counting(request: httpx.Request) -> httpx.Response:
        polled.append(request.url.path)
        return handler(request)

    c = Collector(world.registry, httpx.AsyncClient(transport=httpx.MockTransport(counting)), interval_s=0.01,
                  idle_s=0)
    await asyncio.sleep(0.05)
    assert polled == [], "nobody looking: nothing asked"
    queue = c.subscribe()
    await asyncio.sleep(0.1)
    assert polled and queue.qsize() > 0, "a page open: snapshots flow"
    c.unsubscribe(queue)
    await asyncio.sleep(0.05)
    assert c._task is not None and c._task.done(), "the last page closed: the loop ends"
    seen = len(polled)
    await asyncio.sleep(0.1)
    assert len(polled) == seen
