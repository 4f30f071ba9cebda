"""What an instance exports on GET /metrics, read back with prometheus_client's own parser: RED by route template,
the client's guards, the discovery cache, the outbox (SQLite and PostgreSQL), the consumer and its queues (the
real broker), the config version. The registry is the process's: each test reads deltas or names of its own."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from typing import Any

import aio_pika
import httpx
import pytest
import sqlalchemy as sa
from fastapi import APIRouter, HTTPException
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from msa_kit import metrics
from msa_kit.app import create_service_app
from msa_kit.discovery import Discovery, Instance
from msa_kit.events import CloudEvent, PoisonMessage
from msa_kit.faults import HttpFault
from msa_kit.guards import RetryPolicy
from msa_kit.platform import Platform, PlatformSettings
from msa_kit.resilience import BalancingTransport, Policies, ResilientStack, RetryTransport
from msa_kit.runtime import Runtime
from msa_kit.settings import ConfigSnapshot
from msa_kit.sql import create_schema

Labels = dict[str, str]


def samples(text: str) -> dict[str, list[tuple[Labels, float]]]:
    out: dict[str, list[tuple[Labels, float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    """The sample `name` with exactly these labels; None when there is none."""
    for have, v in samples(text).get(name, []):
        if have == labels:
            return v
    return None


def count(text: str, name: str, **labels: str) -> float:
    return value(text, name, **labels) or 0.0


def platform(service: str = "metricstest", version: str = "v-1", **kwargs: Any) -> Platform:
    return Platform(Runtime.for_service(service), ConfigSnapshot(service, "local", version, "snapshot"),
                    PlatformSettings(), **kwargs)


async def until(predicate: Any, timeout: float = 10.0) -> None:
    """Polls `predicate` (plain or async) until it holds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition never met"
        await asyncio.sleep(0.02)


class FakeDiscovery:
    def __init__(self, **services: list[Instance]) -> None:
        self.services = services
        self.watchers: dict[str, Any] = {}

    async def instances(self, service: str) -> list[Instance]:
        return self.services.get(service, [])


A, B = Instance("x-1", "127.0.0.1", 1001), Instance("x-2", "127.0.0.1", 1002)


# -- RED ------------------------------------------------------------------------------------------------------------

@pytest.fixture
async def service() -> Any:
    router = APIRouter()

    @router.get("/widgets/{widget_id}")
    async def widget(widget_id: str) -> dict[str, str]:
        if widget_id == "missing":
            raise HTTPException(404, "no such widget")
        return {"id": widget_id}

    p = platform()
    app = create_service_app(p, title="metrics", routers=[router])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as client:
        yield p, client


async def test_requests_are_counted_by_route_template_and_status_and_timed(service):
    _, client = service
    before = (await client.get("/metrics")).text
    for path in ("/widgets/1", "/widgets/2", "/widgets/missing", "/nowhere", "/health", "/ready", "/metrics"):
        await client.get(path)
    await client.post("/widgets/1")  # 405: the route's, not unmatched
    after = (await client.get("/metrics")).text

    def delta(name: str, **labels: str) -> float:
        return count(after, name, **labels) - count(before, name, **labels)

    template = "/widgets/{widget_id}"
    assert delta("msa_http_requests_total", method="GET", route=template, status="200") == 2
    assert delta("msa_http_requests_total", method="GET", route=template, status="404") == 1
    assert delta("msa_http_requests_total", method="POST", route=template, status="405") == 1
    assert delta("msa_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert delta("msa_http_request_duration_seconds_count", method="GET", route=template) == 3
    assert delta("msa_http_request_duration_seconds_bucket", method="GET", route=template, le="+Inf") == 3
    routes = {labels["route"] for labels, _ in samples(after)["msa_http_requests_total"]}
    assert not routes & {"/health", "/ready", "/metrics"}  # polled, not counted
    assert not any("/widgets/1" in r for r in routes)  # never a raw path


async def test_an_injected_fault_is_counted_on_its_route_and_its_delay_timed(service):
    p, client = service
    before = (await client.get("/metrics")).text
    p.faults.add(HttpFault(kind="latency", latency_ms=60, route="/widgets"))
    assert (await client.get("/widgets/1")).status_code == 200
    p.faults.heal()
    p.faults.add(HttpFault(kind="error", status=503, route="/widgets"))
    assert (await client.get("/widgets/1")).status_code == 503  # answered before routing
    p.faults.heal()
    after = (await client.get("/metrics")).text
    template = "/widgets/{widget_id}"
    assert count(after, "msa_http_requests_total", method="GET", route=template, status="503") \
        - count(before, "msa_http_requests_total", method="GET", route=template, status="503") == 1
    timed = count(after, "msa_http_request_duration_seconds_sum", method="GET", route=template) \
        - count(before, "msa_http_request_duration_seconds_sum", method="GET", route=template)
    assert timed >= 0.06


async def test_the_config_version_is_exported_and_follows_a_refresh(service):
    p, client = service
    text = (await client.get("/metrics")).text
    assert value(text, "msa_config_info", config_version="v-1", source="snapshot") == 1
    p.config = ConfigSnapshot("metricstest", "local", "v-2", "config-server")  # what Platform.refresh does
    text = (await client.get("/metrics")).text
    assert value(text, "msa_config_info", config_version="v-2", source="config-server") == 1
    assert [labels for labels, _ in samples(text)["msa_config_info"]] == [
        {"config_version": "v-2", "source": "config-server"}]


# -- the client's guards --------------------------------------------------------------------------------------------

async def test_the_guards_of_a_known_target_are_exported_before_anything_happens():
    target = f"svc-{uuid.uuid4().hex[:6]}"
    stack = ResilientStack(FakeDiscovery(**{target: [A]}), Policies())  # type: ignore[arg-type]
    gate = asyncio.Event()

    async def held(_instance: Instance) -> httpx.Response:
        await gate.wait()
        return httpx.Response(200)

    try:
        call = asyncio.create_task(stack.call(target, held))
        await until(lambda: stack.bulkhead.bulkhead(target).in_flight == 1)
        budget = stack.retry.budget(target)
        for _ in range(10):
            budget.request()
        for _ in range(4):
            assert budget.try_retry()
        text = (await metrics.exposition(platform(), stack)).decode()
        assert value(text, "msa_breaker_state", service=target) == 0  # closed, and there before any transition
        assert value(text, "msa_bulkhead_in_flight", service=target) == 1
        allowed = budget.snapshot()["retries_allowed"]
        assert value(text, "msa_retry_budget_used_ratio", service=target) == pytest.approx(4 / allowed)
        gate.set()
        assert (await call).status_code == 200
        text = (await metrics.exposition(platform(), stack)).decode()
        assert value(text, "msa_bulkhead_in_flight", service=target) == 0
        assert value(text, "msa_client_attempts_total", service=target, instance="x-1") == 1
    finally:
        gate.set()
        await stack.transport.aclose()


async def test_a_breaker_exports_closed_as_soon_as_it_exists():
    target = f"svc-{uuid.uuid4().hex[:6]}"
    stack = ResilientStack(FakeDiscovery(), Policies())  # type: ignore[arg-type]
    assert value(generate_latest().decode(), "msa_breaker_state", service=target) is None
    stack.breaker.breaker(target)
    assert value(generate_latest().decode(), "msa_breaker_state", service=target) == 0
    await stack.transport.aclose()


async def test_retries_the_budget_refuses_are_counted_and_attempts_name_the_instance():
    target = f"svc-{uuid.uuid4().hex[:6]}"
    balancer = BalancingTransport(FakeDiscovery(**{target: [A, B]}),  # type: ignore[arg-type]
                                  httpx.MockTransport(lambda _r: httpx.Response(503)))
    # A window of 10 s with 0.1 retries a second on top of nothing: one retry allowed, then the budget says no.
    retry = RetryTransport(balancer, lambda _s: RetryPolicy(max_retries=1, budget_ratio=0, min_retries_per_s=0.1,
                                                            backoff_ms=0))
    async with httpx.AsyncClient(transport=retry) as client:
        assert (await client.get(f"http://{target}/x")).status_code == 503  # retried once, on the other instance
        assert (await client.get(f"http://{target}/x")).status_code == 503  # the retry refused
        assert (await client.get(f"http://{target}/x")).status_code == 503  # and again
    text = generate_latest().decode()
    assert value(text, "msa_client_retries_total", service=target) == 1
    assert value(text, "msa_client_retries_refused_total", service=target) == 2
    attempts = {labels["instance"]: v for labels, v in samples(text)["msa_client_attempts_total"]
                if labels["service"] == target}
    assert set(attempts) == {"x-1", "x-2"} and sum(attempts.values()) == 4


# -- discovery ------------------------------------------------------------------------------------------------------

class FakeRegistry:
    """`health.service(...)` as Consul answers it: at once without an index, else when the set changes."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.entries, self.index, self.up = entries, 1, True
        self.changed = asyncio.Event()
        self.health = self

    def flip(self, up: bool) -> None:
        self.up, self.index = up, self.index + 1
        self.changed.set()
        self.changed = asyncio.Event()

    async def service(self, _name: str, *, passing: bool, index: str | None, wait: str | None) -> tuple[str, list]:
        if self.up and index is not None and int(index) == self.index:
            await self.changed.wait()
        if not self.up:
            raise ConnectionRefusedError("registry down")
        return str(self.index), list(self.entries)


def entry(instance_id: str, port: int) -> dict[str, Any]:
    return {"Service": {"ID": instance_id, "Port": port, "Address": "127.0.0.1", "Tags": [], "Meta": {}}}


async def test_the_discovery_cache_exports_its_size_staleness_and_age():
    target = f"svc-{uuid.uuid4().hex[:6]}"
    registry = FakeRegistry([entry("a", 1), entry("b", 2)])
    discovery = Discovery(registry)  # type: ignore[arg-type]
    stack = ResilientStack(discovery, Policies())
    p = platform()
    try:
        assert len(await discovery.instances(target)) == 2
        text = (await metrics.exposition(p, stack)).decode()
        assert value(text, "msa_discovery_instances", service=target) == 2
        assert value(text, "msa_discovery_stale", service=target) == 0
        assert value(text, "msa_discovery_cache_age_seconds", service=target) == 0  # the blocking query confirms it

        registry.flip(up=False)
        await until(lambda: discovery.watchers[target].stale)
        text = (await metrics.exposition(p, stack)).decode()
        assert value(text, "msa_discovery_instances", service=target) == 2  # still served
        assert value(text, "msa_discovery_stale", service=target) == 1
        age = value(text, "msa_discovery_cache_age_seconds", service=target)
        assert age is not None and age > 0
        later = value((await metrics.exposition(p, stack)).decode(), "msa_discovery_cache_age_seconds", service=target)
        assert later is not None and later >= age

        registry.flip(up=True)
        await until(lambda: not discovery.watchers[target].stale)
        text = (await metrics.exposition(p, stack)).decode()
        assert value(text, "msa_discovery_stale", service=target) == 0
        assert value(text, "msa_discovery_cache_age_seconds", service=target) == 0
    finally:
        await discovery.stop()
        await stack.transport.aclose()


# -- the outbox -----------------------------------------------------------------------------------------------------

async def test_the_outbox_exports_its_backlog_and_the_age_of_its_oldest_unsent_event(new_database, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", await new_database("metrics"))
    metadata = sa.MetaData()
    p = platform(metadata=metadata)
    assert p.engine is not None and p.outbox is not None
    await create_schema(p.engine, metadata)
    now = time.time()

    def row(i: int, age_s: float, sent: bool) -> dict[str, Any]:
        return {"event_id": f"e-{i}", "event_type": "t", "subject": "s", "envelope": "{}", "trace": "{}",
                "created_at": now - age_s, "sent_at": now if sent else None}

    try:
        text = (await metrics.exposition(p)).decode()
        assert value(text, "msa_outbox_backlog") == 0 and value(text, "msa_outbox_oldest_age_seconds") == 0
        async with p.engine.begin() as conn:  # the oldest was sent: it does not count
            await conn.execute(p.outbox.insert(), [row(1, 500, True), row(2, 42, False), row(3, 1, False)])
        text = (await metrics.exposition(p)).decode()
        assert value(text, "msa_outbox_backlog") == 2
        assert 42 <= (value(text, "msa_outbox_oldest_age_seconds") or 0) < 60
        async with p.engine.begin() as conn:
            await conn.execute(p.outbox.update().values(sent_at=now))
        text = (await metrics.exposition(p)).decode()
        assert value(text, "msa_outbox_backlog") == 0 and value(text, "msa_outbox_oldest_age_seconds") == 0
    finally:
        await p.engine.dispose()


async def test_a_database_that_does_not_answer_does_not_fail_the_scrape(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")
    p = platform(metadata=sa.MetaData())
    assert p.engine is not None
    try:
        started = time.monotonic()
        assert b"msa_outbox_backlog" in await metrics.exposition(p)
        assert time.monotonic() - started < metrics.SCRAPE_TIMEOUT_S + 1
    finally:
        await p.engine.dispose()


# -- the consumer and its queues ------------------------------------------------------------------------------------

async def test_queue_depths_are_left_out_when_the_broker_is_not_there():
    p = platform("metricsnobroker")
    p.bus.subscribe("t.x", lambda _e: asyncio.sleep(0))
    metrics.QUEUE_MESSAGES.labels("main").set(7)  # a value from an earlier scrape
    assert await p.bus.queue_depths() == {}  # never connected
    text = (await metrics.exposition(p)).decode()
    assert "msa_queue_messages" not in samples(text)


async def test_the_consumer_counts_outcomes_redeliveries_and_exports_its_queue_depths(amqp_url, monkeypatch):
    namespace = f"test-{uuid.uuid4().hex[:6]}."
    monkeypatch.setenv("MSA_NAMESPACE", namespace)
    run = uuid.uuid4().hex[:6]
    ok, flaky, poison, blocking = (f"m{run}.{kind}" for kind in ("ok", "flaky", "poison", "blocking"))
    p = platform("metricsconsumer")
    bus = p.bus
    bus.prefetch = 1  # one message in the handler at a time: the next one waits, ready, in the queue
    flaked: list[str] = []
    gate = asyncio.Event()

    async def handle(event: CloudEvent) -> None:
        if event.type == flaky and not flaked:
            flaked.append(event.id)
            raise RuntimeError("first time fails")
        if event.type == poison:
            raise PoisonMessage("never")
        if event.type == blocking:
            await gate.wait()

    for event_type in (ok, flaky, poison, blocking):
        bus.subscribe(event_type, handle)

    async def publish(event_type: str) -> None:
        ce = CloudEvent(source="/test", type=event_type, data={})
        await bus.publish(ce.model_dump_json(), ce.id, ce.type, {})

    async def scrape() -> str:
        return (await metrics.exposition(p)).decode()

    before = generate_latest().decode()
    bus.start()
    try:
        await asyncio.wait_for(bus.connected.wait(), 10)
        for event_type in (ok, flaky, poison):
            await publish(event_type)
        assert bus.exchange is not None
        await bus.exchange.publish(aio_pika.Message(b"not a cloud event"), routing_key=ok)

        async def settled() -> bool:
            text = await scrape()
            return (value(text, "msa_consumer_deliveries_total", event_type=flaky, outcome="ack") == 1
                    and value(text, "msa_consumer_deliveries_total", event_type=poison, outcome="dead_letter") == 1
                    and value(text, "msa_queue_messages", queue="dlq") == 2)

        await until(settled)
        text = await scrape()
        assert value(text, "msa_consumer_deliveries_total", event_type=ok, outcome="ack") == 1
        assert value(text, "msa_consumer_deliveries_total", event_type=flaky, outcome="retry") == 1
        assert value(text, "msa_consumer_redeliveries_total", event_type=flaky) == 1  # back from the retry queue
        assert value(text, "msa_consumer_redeliveries_total", event_type=ok) == 0  # at 0 since subscribe()
        assert count(text, "msa_consumer_deliveries_total", event_type="unknown", outcome="dead_letter") \
            - count(before, "msa_consumer_deliveries_total", event_type="unknown", outcome="dead_letter") == 1
        assert value(text, "msa_queue_messages", queue="main") == 0
        assert value(text, "msa_queue_messages", queue="retry") == 0

        await publish(blocking)  # held by the handler ...
        await publish(blocking)  # ... so this one waits in the queue
        await until(lambda: _equals(scrape, "main", 1))
        gate.set()
        await until(lambda: _equals(scrape, "main", 0))

        # A queue gone from under us closes only the inspection's channel: the bus goes on consuming.
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            await (await connection.channel()).queue_delete(bus.names.dlq)
        assert await bus.queue_depths() == {}
        await publish(ok)
        await until(lambda: value(generate_latest().decode(), "msa_consumer_deliveries_total",
                                  event_type=ok, outcome="ack") == 2)
    finally:
        gate.set()
        await bus.close()
        await cleanup(amqp_url, namespace, "metricsconsumer")


async def _equals(scrape: Any, queue: str, n: int) -> bool:
    return value(await scrape(), "msa_queue_messages", queue=queue) == n


async def cleanup(amqp_url: str, namespace: str, service: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for queue in (f"{service}.events", f"{service}.events.retry", f"{service}.events.dlq", "msa.events.unrouted"):
            await channel.queue_delete(f"{namespace}{queue}")
        for exchange in ("msa.events", "msa.events.unrouted"):
            await channel.exchange_delete(f"{namespace}{exchange}")
