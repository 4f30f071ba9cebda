"""Synthetic orders (X-Synthetic-Transaction: true) are tagged end to end, and the saga's figures count each change
once it is committed, labelled `synthetic` so business figures can leave the probe out. Against a real SQLite file."""

import dataclasses
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY

from msa_kit import sql
from msa_kit.outbox import add_messaging_tables
from msa_kit.runtime import Runtime
from order.adapters import metrics
from order.adapters import repository
from order.adapters.repository import SqlOrderUnitOfWork
from order.domain.events import OrderLine, OrderPlaced
from order.domain.model import Order, OrderStatus
from order.entrypoints import events
from order.entrypoints.http import Adapters, router

if "outbox" in repository.metadata.tables:  # the Platform adds them in a service process
    outbox, inbox_table = repository.metadata.tables["outbox"], repository.metadata.tables["processed_events"]
else:
    outbox, inbox_table = add_messaging_tables(repository.metadata)


def placed(synthetic: str) -> float:
    return REGISTRY.get_sample_value("msa_orders_placed_total", {"synthetic": synthetic}) or 0.0


def outcome(name: str, synthetic: str) -> float:
    return REGISTRY.get_sample_value("msa_saga_outcomes_total", {"outcome": name, "synthetic": synthetic}) or 0.0


def figures() -> dict[str, float]:
    out = {f"placed/{f}": placed(f) for f in metrics.FLAGS}
    out |= {f"{o}/{f}": outcome(o, f) for o in metrics.OUTCOMES for f in metrics.FLAGS}
    return out


def changed(before: dict[str, float]) -> dict[str, float]:
    return {k: v - before[k] for k, v in figures().items() if v != before[k]}


@pytest.fixture
async def engine(tmp_path: Path):
    rt = Runtime.for_service("order")
    rt.database_url = f"sqlite+aiosqlite:///{tmp_path / 'order.db'}"
    engine = sql.database_engine(rt)
    await sql.create_schema(engine, repository.metadata)
    yield engine
    await engine.dispose()


def uow(engine, *, read_only: bool = False) -> SqlOrderUnitOfWork:
    return SqlOrderUnitOfWork(engine, outbox, inbox_table, "/order", read_only=read_only)


async def add(engine, order: Order) -> None:
    async with uow(engine) as u:
        await u.orders.add(order)
        await u.commit()


# ---- the flag ---------------------------------------------------------------------------------------------------

def test_an_order_is_not_synthetic_unless_placed_so_and_its_event_says_which():
    plain = Order.place("u1", [OrderLine("A", 1, 100)])
    probe = Order.place("u1", [OrderLine("A", 1, 100)], "key-1", synthetic=True)
    assert not plain.synthetic and probe.synthetic and probe.idempotency_key == "key-1"
    event = probe.events[0]
    assert isinstance(event, OrderPlaced) and event.synthetic
    # What travels (CloudEvent.from_domain: dataclasses.asdict): v2's fields, the added one among them.
    assert dataclasses.asdict(event) == {"order_id": probe.id, "user_id": "u1",
                                         "total": {"amount_cents": 100, "currency": "EUR"},
                                         "lines": [{"sku": "A", "quantity": 1, "unit_price_cents": 100}],
                                         "synthetic": True}
    assert dataclasses.asdict(plain.events[0])["synthetic"] is False


async def test_the_flag_is_stored_and_read_back(engine):
    probe, plain = Order.place("u1", [OrderLine("A", 1, 1)], synthetic=True), Order.place("u1", [OrderLine("A", 1, 1)])
    await add(engine, probe)
    await add(engine, plain)
    async with uow(engine, read_only=True) as u:
        assert (await u.orders.get(probe.id)).synthetic is True
        assert (await u.orders.get(plain.id)).synthetic is False
        assert {o.id: o.synthetic for o in await u.orders.for_user("u1")} == {probe.id: True, plain.id: False}


# ---- counted once committed ---------------------------------------------------------------------------------------

async def test_after_commit_callbacks_run_on_commit_only(engine):
    ran: list[str] = []
    async with uow(engine) as u:
        u.after_commit(lambda: ran.append("rolled back"))
    async with uow(engine) as u:
        u.after_commit(lambda: ran.append("committed"))
        assert ran == []  # not before the commit
        await u.commit()
    assert ran == ["committed"]


async def test_the_catalogs_answer_counts_an_outcome_once_committed_and_once_only(engine):
    probe = Order.place("u1", [OrderLine("A", 1, 1)], synthetic=True)
    plain = Order.place("u1", [OrderLine("A", 1, 1)])
    await add(engine, probe)
    await add(engine, plain)
    before = figures()
    async with uow(engine) as u:  # a transaction the inbox rolls back (another event of its batch failed) ...
        await events.on_stock_reserved(events.StockReservedV1(order_id=probe.id), u)
    assert changed(before) == {}  # ... counts nothing
    async with uow(engine) as u:  # applied again on its own, and committed
        await events.on_stock_reserved(events.StockReservedV1(order_id=probe.id), u)
        await events.on_stock_rejected(events.StockRejectedV1(order_id=plain.id, reason="out of stock"), u)
        assert changed(before) == {}
        await u.commit()
    assert changed(before) == {"confirmed/true": 1, "rejected/false": 1}
    async with uow(engine) as u:  # a late or repeated answer for an order already decided moves nothing
        await events.on_stock_rejected(events.StockRejectedV1(order_id=probe.id), u)
        await events.on_stock_reserved(events.StockReservedV1(order_id=plain.id), u)
        await events.on_stock_reserved(events.StockReservedV1(order_id="no-such-order"), u)
        await u.commit()
    assert changed(before) == {"confirmed/true": 1, "rejected/false": 1}
    async with uow(engine, read_only=True) as u:
        assert (await u.orders.get(probe.id)).status == OrderStatus.CONFIRMED


class Users:
    """The user service: every user exists."""

    async def exists(self, user_id: str) -> bool:
        return True


class Prices:
    async def prices(self, skus: list[str]) -> dict[str, int]:
        return {s: 250 for s in skus}


@pytest.fixture
async def client(engine):
    app = FastAPI()
    app.include_router(router)
    app.state.adapters = Adapters(uows=lambda read_only=False: uow(engine, read_only=read_only), users=Users(),
                                  prices=Prices())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://order",
                                 headers={"X-User-Id": "u1"}) as c:
        yield c


async def test_the_header_tags_the_order_and_placing_and_cancelling_are_counted_apart(client, engine):
    before = figures()
    items = {"items": [{"sku": "A", "quantity": 2}]}
    r = await client.post("/orders", json=items, headers={"X-Synthetic-Transaction": "true", "Idempotency-Key": "k1"})
    assert r.status_code == 201 and r.json()["synthetic"] is True, r.text
    probe_id = r.json()["id"]
    r = await client.post("/orders", json=items, headers={"X-Synthetic-Transaction": "true", "Idempotency-Key": "k1"})
    assert r.status_code == 200 and r.json()["id"] == probe_id  # a replay: not a new order, not counted
    for header in ({}, {"X-Synthetic-Transaction": "false"}, {"X-Synthetic-Transaction": "yes"}):
        r = await client.post("/orders", json=items, headers=header)
        assert r.status_code == 201 and r.json()["synthetic"] is False, (header, r.text)
    assert changed(before) == {"placed/true": 1, "placed/false": 3}
    assert (await client.get(f"/orders/{probe_id}")).json()["synthetic"] is True

    async with uow(engine) as u:  # the catalog reserved the stock
        await events.on_stock_reserved(events.StockReservedV1(order_id=probe_id), u)
        await u.commit()
    r = await client.post(f"/orders/{probe_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == OrderStatus.CANCELLED and r.json()["synthetic"] is True
    r = await client.post(f"/orders/{probe_id}/cancel")  # cancelling again answers the same, counts nothing
    assert r.status_code == 200 and r.json()["status"] == OrderStatus.CANCELLED
    assert changed(before) == {"placed/true": 1, "placed/false": 3, "confirmed/true": 1, "cancelled/true": 1}


def test_every_series_exists_before_the_first_order():
    metrics.create_series()
    for f in metrics.FLAGS:
        assert REGISTRY.get_sample_value("msa_orders_placed_total", {"synthetic": f}) is not None
        for o in metrics.OUTCOMES:
            assert REGISTRY.get_sample_value("msa_saga_outcomes_total", {"outcome": o, "synthetic": f}) is not None
