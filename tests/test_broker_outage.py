"""No event lost when the broker goes away: orders keep being accepted (the outbox holds their events), and once
the link is back every saga closes and the stock is exact. The link is cut in the fault proxy between the
services and RabbitMQ, so the shared broker itself is never disturbed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import httpx
import pytest

from msa_faultproxy.client import FaultProxyClient
from support import ADMIN_TOKEN, BACKENDS, Stack, stack_on

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

pytestmark = pytest.mark.integration


@pytest.fixture(params=BACKENDS)
def stack(request: pytest.FixtureRequest) -> Stack:
    """Every test here runs on both backends: SQLite, and PostgreSQL (the compose stack's, spans over OTLP)."""
    return stack_on(request)

USERS, ORDERS_PER_USER, CONCURRENCY = 10, 100, 16


async def sign_up(http: httpx.AsyncClient) -> dict[str, str]:
    name, password = f"o{uuid.uuid4().hex[:10]}", "outage-Passw0rd"
    assert (await http.post("/api/users", json={"username": name, "password": password})).status_code == 201
    token = (await http.post("/api/auth/token", data={"username": name, "password": password})).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


async def scenario(stack: Stack) -> dict[str, object]:
    proxy = FaultProxyClient(stack.topology.spec.env["FAULTPROXY_URL"])
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=30,
                                 limits=httpx.Limits(max_connections=CONCURRENCY)) as http:
        users = [await sign_up(http) for _ in range(USERS)]
        # Shelves of its own (more orders than stock, so both outcomes happen), leaving the seeded ones untouched.
        skus = [f"OUTAGE-{uuid.uuid4().hex[:6]}-{i}" for i in range(3)]
        for sku in skus:
            r = httpx.put(f"{stack.topology.url('catalog-1')}/admin/products/{sku}", headers=ADMIN,
                          json={"name": sku, "price_cents": 100, "stock": 500})
            assert r.status_code == 200, r.text
        stock_before = {p["sku"]: p["stock"] for p in (await http.get("/api/catalog/products")).json() if p["sku"] in skus}
        jobs = [(users[i % USERS], skus[i % len(skus)], 1 + i % 3) for i in range(USERS * ORDERS_PER_USER)]
        placed: list[tuple[str, str, int]] = []
        failures: list[str] = []
        retried: list[int] = []
        gate = asyncio.Semaphore(CONCURRENCY)

        async def place(headers: dict[str, str], sku: str, qty: int) -> None:
            # What a careful client does: one Idempotency-Key per order, the same key on every retry, so a
            # timed-out attempt that did land (the server finished after the client gave up) is not placed twice.
            key = str(uuid.uuid4())
            for _attempt in range(3):
                async with gate:
                    r = await http.post("/api/orders", json={"items": [{"sku": sku, "quantity": qty}]},
                                        headers={**headers, "Idempotency-Key": key})
                if r.status_code not in (502, 503, 504):
                    break
                retried.append(r.status_code)
            if r.status_code in (200, 201):
                placed.append((r.json()["id"], sku, qty))
            else:
                failures.append(f"{r.status_code} {r.text[:100]}")

        async def cut_in_the_middle() -> float:
            while len(placed) < len(jobs) // 3:
                await asyncio.sleep(0.01)
            started = time.monotonic()
            async with proxy.disabled("rabbitmq"):
                await asyncio.sleep(4.0)
            return time.monotonic() - started

        started = time.monotonic()
        cut_task = asyncio.create_task(cut_in_the_middle())
        await asyncio.gather(*(place(*job) for job in jobs))
        cut_s = await cut_task
        placing_s = time.monotonic() - started

        # Every saga must close; list each user's orders (the API lists the latest 100).
        deadline = time.monotonic() + 90
        while True:
            statuses: dict[str, str] = {}
            for headers in users:
                for o in (await http.get("/api/orders", headers=headers)).json():
                    statuses[o["id"]] = o["status"]
            pending = sum(s == "PENDING" for s in statuses.values())
            if pending == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        closed_s = time.monotonic() - started
        stock_after = {p["sku"]: p["stock"] for p in (await http.get("/api/catalog/products")).json() if p["sku"] in skus}
    taken = Counter()
    for order_id, sku, qty in placed:
        if statuses.get(order_id) == "CONFIRMED":
            taken[sku] += qty
    return {"placed": placed, "failures": failures, "retried": retried, "statuses": statuses, "cut_s": cut_s, "placing_s": placing_s,
            "closed_s": closed_s, "stock_before": stock_before, "stock_after": stock_after, "taken": taken}


def test_a_broker_outage_in_the_middle_of_1000_orders_loses_nothing(stack: Stack):
    r = asyncio.run(scenario(stack))
    outcome = Counter(r["statuses"].values())
    print(f"\n{len(r['placed'])} orders placed in {r['placing_s']:.1f} s with the broker link cut for "
          f"{r['cut_s']:.1f} s; all closed after {r['closed_s']:.1f} s: {dict(outcome)}; "
          f"client retries (same Idempotency-Key): {len(r['retried'])}")
    assert not r["failures"], r["failures"][:5]  # placing never needed the broker
    assert len({order_id for order_id, _, _ in r["placed"]}) == USERS * ORDERS_PER_USER
    assert outcome["PENDING"] == 0 and set(outcome) <= {"CONFIRMED", "REJECTED"}
    assert len(r["statuses"]) == len(r["placed"])
    for sku, before in r["stock_before"].items():
        assert r["stock_after"][sku] == before - r["taken"][sku], sku  # exact: nothing lost, nothing twice
