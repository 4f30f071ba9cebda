"""The probe loop against a faked gateway (httpx.MockTransport): what a run does, what it reports, how it fails."""

import asyncio
import json
import logging
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from msa_probe.bootstrap import router
from msa_probe.probe import STEPS, Probe, ProbeMetrics, ProbeSection

PASSWORD = "pw-not-for-logs"


class FakeGateway:
    """The public API as the probe uses it, in memory; knobs make one step misbehave."""

    def __init__(self) -> None:
        self.users: dict[str, str] = {}
        self.tokens: set[str] = set()
        self.orders: dict[str, dict[str, Any]] = {}
        self.products = [{"sku": "MUG", "name": "Mug", "price_cents": 1299, "stock": 5},
                         {"sku": "STICKER", "name": "Sticker", "price_cents": 199, "stock": 500},
                         {"sku": "BOOK", "name": "Book", "price_cents": 4599, "stock": 0}]
        self.calls: list[str] = []
        self.placed: list[httpx.Request] = []  # the orders accepted
        self.keys: list[str | None] = []  # every POST /api/orders' Idempotency-Key
        self.place_status: int | None = None  # answer POST /api/orders with this instead
        self.saga = "CONFIRMED"  # what an order becomes when first read: CONFIRMED, REJECTED or PENDING (forever)

    def handler(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        self.calls.append(f"{method} {path}")
        if method == "POST" and path == "/api/orders":
            self.keys.append(request.headers.get("idempotency-key"))
        if method == "POST" and path == "/api/users":
            body = json.loads(request.content)
            if body["username"] in self.users:
                return problem(409, "username taken")
            self.users[body["username"]] = body["password"]
            return httpx.Response(201, json={"id": "u1", "username": body["username"]})
        if method == "POST" and path == "/api/auth/token":
            form = dict(httpx.QueryParams(request.content.decode()))
            if self.users.get(form["username"]) != form["password"]:
                return problem(401, "wrong username or password")
            token = uuid.uuid4().hex
            self.tokens.add(token)
            return httpx.Response(200, json={"access_token": token, "token_type": "bearer"})
        if method == "GET" and path == "/api/catalog/products":
            return httpx.Response(200, json=self.products)
        if request.headers.get("authorization", "").removeprefix("Bearer ") not in self.tokens:
            return problem(401, "a bearer token is required")
        if method == "POST" and path == "/api/orders":
            self.placed.append(request)
            if self.place_status:
                return problem(self.place_status, "injected")
            body = json.loads(request.content)
            order = {"id": str(uuid.uuid4()), "user_id": "u1", "status": "PENDING", "reason": None,
                     "lines": body["items"], "total_cents": 1,
                     "synthetic": request.headers.get("x-synthetic-transaction") == "true"}
            self.orders[order["id"]] = order
            return httpx.Response(201, json=order)
        if method == "GET" and path == "/api/orders":
            return httpx.Response(200, json=[self.advance(o) for o in self.orders.values()])
        order_id = path.split("/")[3]
        order = self.orders.get(order_id)
        if order is None:
            return problem(404, "no such order")
        if method == "GET":
            return httpx.Response(200, json=self.advance(order))
        if method == "POST" and path.endswith("/cancel"):
            if order["status"] not in ("CONFIRMED", "CANCELLED"):
                return problem(409, f"an order that is {order['status']} cannot be cancelled")
            order["status"] = "CANCELLED"
            return httpx.Response(200, json=order)
        return problem(404, "no route")

    def advance(self, order: dict[str, Any]) -> dict[str, Any]:
        """The saga, as a reader sees it: a pending order is decided by the time it is read (unless PENDING)."""
        if order["status"] == "PENDING" and self.saga != "PENDING":
            order["status"] = self.saga
            order["reason"] = "insufficient stock" if self.saga == "REJECTED" else None
        return order


def problem(status: int, detail: str) -> httpx.Response:
    return httpx.Response(status, json={"title": "x", "status": status, "detail": detail},
                          headers={"content-type": "application/problem+json"})


class Harness:
    def __init__(self, **settings: Any) -> None:
        self.gateway = FakeGateway()
        self.registry = CollectorRegistry()
        self.section = ProbeSection(**{"password": PASSWORD, "gateway_url": "http://gateway.test", "timeout_s": 1,
                                       "confirm_timeout_s": 0.3, **settings})
        self.discovered: list[str] = []
        self.probe = Probe(lambda: self.section, self.find_gateway, metrics=ProbeMetrics(self.registry),
                           transport=httpx.MockTransport(self.gateway.handler))

    async def find_gateway(self) -> list[str]:
        return self.discovered

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def failures(self) -> dict[str, float]:
        return {s: self.value("msa_probe_failures_total", step=s) for s in STEPS}


@pytest.fixture
async def h():
    harness = Harness()
    await harness.probe.start()  # the loop waits one period (10 s) before its first run: the tests drive runs
    yield harness
    await harness.probe.stop()


def test_every_series_is_there_at_0_before_the_first_run():
    h = Harness()
    assert h.value("msa_probe_runs_total", result="success") == 0 == h.value("msa_probe_runs_total", result="failure")
    assert set(h.failures().values()) == {0}
    assert h.value("msa_probe_last_success") == 0 and h.value("msa_probe_duration_seconds_count") == 0
    assert h.value("msa_probe_last_run_timestamp_seconds") == 0
    doc = h.probe.document()
    assert doc["ok"] is None and doc["runs"] == 0 and doc["enabled"] is True and doc["period_s"] == 10


async def test_a_successful_run_places_a_synthetic_order_cancels_it_and_says_so(h):
    result = await h.probe.run_once()
    assert result.ok and result.step is None and result.error is None, result
    assert h.gateway.calls == ["POST /api/users", "POST /api/auth/token", "GET /api/catalog/products",
                               "POST /api/orders", f"GET /api/orders/{result.order_id}",
                               f"POST /api/orders/{result.order_id}/cancel"]
    placed = h.gateway.placed[0]
    assert placed.headers["X-Synthetic-Transaction"] == "true" and placed.headers["Idempotency-Key"]
    assert json.loads(placed.content) == {"items": [{"sku": "STICKER", "quantity": 1}]}  # in stock, the most
    assert h.gateway.orders[result.order_id]["status"] == "CANCELLED"
    assert h.value("msa_probe_runs_total", result="success") == 1
    assert h.value("msa_probe_runs_total", result="failure") == 0 and set(h.failures().values()) == {0}
    assert h.value("msa_probe_last_success") == 1 and h.value("msa_probe_duration_seconds_count") == 1
    assert h.value("msa_probe_last_run_timestamp_seconds") > 1.7e9
    doc = h.probe.document()
    assert doc["ok"] is True and doc["step"] is None and doc["runs"] == 1 and doc["failures"] == 0
    assert doc["finished_at"].endswith("Z") and doc["duration_ms"] >= 0 and doc["order_id"] == result.order_id

    h.gateway.calls.clear()
    assert (await h.probe.run_once()).ok
    assert "POST /api/users" not in h.gateway.calls and "POST /api/auth/token" not in h.gateway.calls  # once


async def test_a_503_on_place_counts_a_failure_of_that_step_and_logs_it_once(h, caplog):
    assert (await h.probe.run_once()).ok
    h.gateway.place_status = 503
    with caplog.at_level(logging.DEBUG, logger="msa_probe"):
        result = await h.probe.run_once()
    assert not result.ok and result.step == "place" and "503" in result.error, result
    assert h.failures() == {"login": 0, "catalog": 0, "place": 1, "confirm": 0, "cancel": 0}
    assert h.value("msa_probe_runs_total", result="failure") == 1
    assert h.value("msa_probe_runs_total", result="success") == 1
    assert h.value("msa_probe_last_success") == 0 and h.value("msa_probe_duration_seconds_count") == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "failed at place" in warnings[0].getMessage() and not warnings[0].exc_info
    doc = h.probe.document()
    assert doc["ok"] is False and doc["step"] == "place" and "503" in doc["error"] and doc["failures"] == 1

    h.gateway.place_status = None
    with caplog.at_level(logging.INFO, logger="msa_probe"):
        assert (await h.probe.run_once()).ok
    assert any(r.levelno == logging.INFO and "succeeded again after 1 failed run" in r.getMessage()
               for r in caplog.records)
    assert h.value("msa_probe_last_success") == 1
    tokens = h.gateway.tokens
    assert not [r for r in caplog.records if PASSWORD in r.getMessage() or any(t in r.getMessage() for t in tokens)]


async def test_an_order_never_confirmed_fails_the_confirm_step_and_is_cancelled_later(h):
    h.gateway.saga = "PENDING"
    result = await h.probe.run_once()
    assert not result.ok and result.step == "confirm" and "still PENDING after 0.3 s" in result.error, result
    assert h.failures()["confirm"] == 1
    stuck = result.order_id
    h.gateway.saga = "CONFIRMED"  # the saga catches up: the order now holds stock
    assert (await h.probe.run_once()).ok
    assert h.gateway.orders[stuck]["status"] == "CANCELLED"  # the tidy-up after the run gave it back
    assert {o["status"] for o in h.gateway.orders.values()} == {"CANCELLED"}


async def test_a_rejected_order_is_a_confirm_failure_with_the_reason(h):
    h.gateway.saga = "REJECTED"
    result = await h.probe.run_once()
    assert result.step == "confirm" and result.error == "order rejected: insufficient stock"


async def test_a_401_logs_in_again_and_the_run_goes_on(h):
    assert (await h.probe.run_once()).ok
    h.gateway.tokens.clear()  # the token expired (or the user service's signing key changed)
    h.gateway.calls.clear()
    result = await h.probe.run_once()
    assert result.ok, result
    assert h.gateway.calls[:4] == ["GET /api/catalog/products", "POST /api/orders", "POST /api/auth/token",
                                   "POST /api/orders"]
    assert h.gateway.calls.count("POST /api/users") == 0
    assert len(h.gateway.placed) == 2 and h.gateway.keys[1] == h.gateway.keys[2]  # the same order, asked again


async def test_an_existing_account_just_logs_in_and_a_wrong_password_fails_login(h):
    h.gateway.users["synthetic-probe"] = PASSWORD  # made by an earlier probe: 409
    assert (await h.probe.run_once()).ok
    other = Harness()
    other.gateway.users["synthetic-probe"] = "someone else's"
    await other.probe.start()
    try:
        result = await other.probe.run_once()
    finally:
        await other.probe.stop()
    assert result.step == "login" and "401" in result.error and PASSWORD not in result.error
    assert other.failures()["login"] == 1


async def test_the_gateway_is_the_first_passing_instance_discovery_lists():
    h = Harness(gateway_url="")
    await h.probe.start()
    try:
        result = await h.probe.run_once()
        assert result.step == "login" and "no passing gateway" in result.error
        h.discovered = ["http://gateway.test", "http://other-gateway.test"]
        assert (await h.probe.run_once()).ok
        assert all(r.url.host == "gateway.test" for r in h.gateway.placed)
    finally:
        await h.probe.stop()


async def test_an_unanswered_request_is_a_failure_of_its_step():
    h = Harness()

    def hang_on_catalog(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/catalog/products":
            raise httpx.ReadTimeout("timed out", request=request)
        return h.gateway.handler(request)

    h.probe = Probe(lambda: h.section, h.find_gateway, metrics=ProbeMetrics(CollectorRegistry()),
                    transport=httpx.MockTransport(hang_on_catalog))
    await h.probe.start()
    try:
        result = await h.probe.run_once()
    finally:
        await h.probe.stop()
    assert result.step == "catalog" and result.error == "no answer within 1 s (ReadTimeout)"


async def test_the_loop_reads_its_settings_each_time_and_stops_cleanly():
    h = Harness(period_s=0.1, enabled=False)
    await h.probe.start()
    try:
        await asyncio.sleep(0.2)
        assert h.probe.runs == 0  # disabled
        h.section = h.section.model_copy(update={"enabled": True})  # what a refresh does ...
        h.probe.wake()  # ... and tells the probe
        for _ in range(100):
            if h.probe.runs >= 3:
                break
            await asyncio.sleep(0.02)
        assert h.probe.runs >= 3 and h.probe.failures == 0
        h.section = h.section.model_copy(update={"enabled": False})
        h.probe.wake()
        await asyncio.sleep(0.1)
        runs = h.probe.runs
        await asyncio.sleep(0.2)
        assert h.probe.runs == runs  # paused
    finally:
        await h.probe.stop()
    assert h.probe._task is None and h.probe._http is None


async def test_get_probe_shows_the_last_result(h):
    await h.probe.run_once()
    app = FastAPI()
    app.include_router(router)
    app.state.probe = h.probe
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://probe") as client:
        r = await client.get("/probe")
    assert r.status_code == 200
    doc = r.json()
    assert {k: doc[k] for k in ("ok", "step", "error", "runs", "failures", "period_s", "enabled")} == {
        "ok": True, "step": None, "error": None, "runs": 1, "failures": 0, "period_s": 10.0, "enabled": True}
    assert doc["finished_at"].endswith("Z") and isinstance(doc["duration_ms"], float)
