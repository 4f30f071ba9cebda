"""The gateway's /metrics, read back with prometheus_client's parser: requests counted per route id and status
(unmatched ones and refused paths too, and those the workshop's faults answer), and the proxy path's guards."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from harness import FakeDiscovery, Harness
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from msa_gateway.app import Gateway, GatewaySettings
from msa_kit.faults import HttpFault
from msa_kit.platform import Platform
from msa_kit.resilience import Policies, ResilientStack
from msa_kit.runtime import Runtime
from msa_kit.settings import ConfigSnapshot

CATALOG = {"id": "m-catalog", "path": "/api/catalog", "service": "catalog", "strip_prefix": 2, "auth": "public"}
TEAPOT = {"id": "m-teapot", "path": "/api/teapot", "service": "order", "strip_prefix": 2, "auth": "public"}


def value(text: str, name: str, **labels: str) -> float | None:
    """The sample `name` with exactly these labels; None when there is none."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


class Scrapes:
    """Deltas of the process's registry since the last `delta()` baseline."""

    def __init__(self) -> None:
        self.before = generate_latest().decode()

    def delta(self, name: str, **labels: str) -> float:
        return (value(generate_latest().decode(), name, **labels) or 0) - (value(self.before, name, **labels) or 0)


@pytest.fixture
async def gateway() -> Any:
    h = Harness([CATALOG, TEAPOT])
    h.upstreams.handlers[9301] = lambda _r: httpx.Response(418)
    settings = GatewaySettings(gateway=h.section)
    gw = Gateway(Runtime.for_service("gateway"), Platform(
        Runtime.for_service("gateway"), ConfigSnapshot("gateway", "local", "cfg-7", "config-server"), settings),
        settings)
    gw.proxy, gw.upstream_stack = h.proxy, h.stack  # what the lifespan sets up, around the harness's fakes
    gw.platform.resilience = ResilientStack(FakeDiscovery({}), Policies())  # type: ignore[arg-type]  # JWKS, docs
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=gw, client=("10.0.0.7", 5555)),
                               base_url="http://gw.test")
    yield h, gw, client
    await client.aclose()
    await gw.platform.resilience.transport.aclose()
    await h.close()


async def test_proxied_requests_are_counted_per_route_id_and_status(gateway):
    h, _, _ = gateway
    scrapes = Scrapes()
    for _ in range(3):
        assert (await h.client.get("/api/catalog/products")).status_code == 200
    assert (await h.client.post("/api/teapot/x")).status_code == 418
    assert (await h.client.get("/nowhere")).status_code == 404
    assert (await h.client.get("/api/catalog/%2e%2e/admin")).status_code == 400
    assert scrapes.delta("msa_http_requests_total", method="GET", route="m-catalog", status="200") == 3
    assert scrapes.delta("msa_http_request_duration_seconds_count", method="GET", route="m-catalog") == 3
    assert scrapes.delta("msa_http_requests_total", method="POST", route="m-teapot", status="418") == 1
    assert scrapes.delta("msa_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert scrapes.delta("msa_http_requests_total", method="GET", route="malformed", status="400") == 1


async def test_the_gateway_serves_its_metrics_with_the_proxy_paths_guards(gateway):
    h, _, client = gateway
    assert (await client.get("/api/catalog/products")).status_code == 200  # through the Gateway, as served
    scrapes = Scrapes()
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert (value(text, "msa_http_requests_total", method="GET", route="m-catalog", status="200") or 0) >= 1
    assert value(text, "msa_breaker_state", service="catalog") == 0  # the proxy path's breaker, closed
    assert value(text, "msa_bulkhead_in_flight", service="catalog") == 0  # the proxy path's bulkhead
    assert value(text, "msa_retry_budget_used_ratio", service="catalog") == 0  # the routes retry, not the kit
    assert value(text, "msa_config_info", config_version="cfg-7", source="config-server") == 1
    # The gateway's own pages are not its traffic: /metrics itself, /health are not counted.
    assert (await client.get("/health")).status_code == 200
    assert not any(labels.get("route") in ("/metrics", "/health", "metrics", "health")
                   for family in text_string_to_metric_families(generate_latest().decode())
                   for labels in (s.labels for s in family.samples))
    assert scrapes.delta("msa_http_requests_total", method="GET", route="unmatched", status="404") == 0
    assert h.upstreams.calls  # the proxied request did go upstream


async def test_under_the_workshops_faults_each_request_is_counted_once_on_its_route(gateway):
    _, gw, client = gateway
    scrapes = Scrapes()
    gw.platform.faults.add(HttpFault(kind="latency", latency_ms=50, route="/api/catalog"))
    assert (await client.get("/api/catalog/products")).status_code == 200  # the fault delays, the proxy answers
    gw.platform.faults.heal()
    assert scrapes.delta("msa_http_requests_total", method="GET", route="m-catalog", status="200") == 1
    assert scrapes.delta("msa_http_request_duration_seconds_sum", method="GET", route="m-catalog") >= 0.05

    gw.platform.faults.add(HttpFault(kind="error", status=503, route="/api"))
    assert (await client.get("/api/catalog/products")).status_code == 503  # answered by the fault itself
    assert (await client.get("/api/elsewhere")).status_code == 503
    gw.platform.faults.heal()
    assert scrapes.delta("msa_http_requests_total", method="GET", route="m-catalog", status="503") == 1
    assert scrapes.delta("msa_http_requests_total", method="GET", route="unmatched", status="503") == 1
