"""Fault injection, the workshop's tool for breaking things: scoped, listed, healed; a crash is restarted."""

from __future__ import annotations

import time

import httpx
import pytest

from support import ADMIN_TOKEN, Stack
from test_config_refresh import wait_for

pytestmark = pytest.mark.integration
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def timed_get(url: str) -> tuple[int, float]:
    started = time.perf_counter()
    r = httpx.get(url, timeout=10)
    return r.status_code, (time.perf_counter() - started) * 1000


def test_faults_are_scoped_to_an_instance_and_a_route_and_heal(stack: Stack):
    one, two = stack.topology.url("catalog-1"), stack.topology.url("catalog-2")
    r = httpx.post(one + "/admin/faults", json={"kind": "latency", "latency_ms": 300, "route": "/products"},
                   headers=ADMIN)
    assert r.status_code == 201, r.text
    try:
        assert timed_get(one + "/products")[1] >= 300
        assert timed_get(two + "/products")[1] < 300       # the other instance is untouched
        assert timed_get(one + "/health")[1] < 300         # operations endpoints are never faulted
        listed = httpx.get(one + "/admin/faults", headers=ADMIN).json()["faults"]
        assert [f["kind"] for f in listed] == ["latency"]
    finally:
        assert httpx.delete(one + "/admin/faults", headers=ADMIN).json() == {"healed": 1}
    assert timed_get(one + "/products")[1] < 300
    assert httpx.get(one + "/admin/faults", headers=ADMIN).json()["faults"] == []


def test_an_error_fault_answers_a_problem_and_a_bad_fault_is_refused(stack: Stack):
    two = stack.topology.url("catalog-2")
    assert httpx.post(two + "/admin/faults", json={"kind": "error", "status": 500}, headers=ADMIN).status_code == 201
    try:
        r = httpx.get(two + "/products")
        assert r.status_code == 500 and r.headers["content-type"] == "application/problem+json"
        assert "Injected fault" in r.text
    finally:
        httpx.delete(two + "/admin/faults", headers=ADMIN)
    assert httpx.get(two + "/products").status_code == 200
    bad = httpx.post(two + "/admin/faults", json={"kind": "latency", "probability": 2}, headers=ADMIN)
    assert bad.status_code == 422 and "probability" in bad.text
    assert httpx.post(two + "/admin/faults", json={"kind": "error"}).status_code == 401


def test_a_crashed_instance_is_restarted_and_passes_again(stack: Stack):
    before = stack.topology.pid("catalog-2")
    assert httpx.post(stack.topology.url("catalog-2") + "/admin/crash", headers=ADMIN).status_code == 202
    started = time.monotonic()
    wait_for(lambda: stack.topology.pid("catalog-2") not in (None, before), timeout=20, what="a new catalog-2")
    wait_for(lambda: _healthy(stack.topology.url("catalog-2")), timeout=20, what="the new catalog-2 to serve")
    stack.topology.wait_passing("catalog", 2, timeout=20)
    print(f"catalog-2 crashed, restarted and passing again in {time.monotonic() - started:.1f} s")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_gateway_takes_faults_too_and_shows_its_resilience(stack: Stack):
    gw = stack.topology.url("gateway")
    r = httpx.post(gw + "/admin/faults", json={"kind": "latency", "latency_ms": 300, "route": "/api/catalog"},
                   headers=ADMIN)
    assert r.status_code == 201, r.text
    try:
        assert timed_get(gw + "/api/catalog/products")[1] >= 300
        assert timed_get(gw + "/health")[1] < 300  # its own pages are never faulted
        bad = httpx.post(gw + "/admin/faults", json={"kind": "error", "status": 200}, headers=ADMIN)
        assert bad.status_code == 422 and "status" in bad.json()["detail"]
    finally:
        assert httpx.delete(gw + "/admin/faults", headers=ADMIN).json() == {"healed": 1}
    assert timed_get(gw + "/api/catalog/products")[1] < 300
    targets = httpx.get(gw + "/admin/resilience", headers=ADMIN).json()["targets"]
    assert targets["catalog"]["breaker"]["state"] == "closed" and len(targets["catalog"]["instances"]) == 2
