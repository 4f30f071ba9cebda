"""The PostgreSQL backend is really the one in use: with DATABASE_URLs given, every service keeps its state, its
outbox and its inbox in a PostgreSQL database of its own (a database per service), and no SQLite file is made.
The flows themselves run on both backends in test_order_flow.py, test_events.py and test_broker_outage.py."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from support import Api, Stack

pytestmark = pytest.mark.integration


async def query(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def test_each_service_keeps_its_state_outbox_and_inbox_in_its_own_postgresql_database(postgres_stack: Stack):
    assert postgres_stack.databases is not None
    api = Api(postgres_stack.gateway).sign_up_and_log_in()
    sku = sorted(api.products())[0]
    r = api.place([{"sku": sku, "quantity": 1}])
    assert r.status_code == 201, r.text
    order_id = r.json()["id"]
    assert api.wait_final(order_id)["status"] == "CONFIRMED"
    urls = postgres_stack.databases
    assert len(set(urls.values())) == 3  # a database per service

    async def look() -> dict[str, object]:
        deadline = time.monotonic() + 10
        while True:
            seen = {
                "order": await query(urls["order"], "SELECT status FROM orders WHERE id = $1", order_id),
                "reservation": await query(urls["catalog"], "SELECT status FROM reservations WHERE order_id = $1",
                                           order_id),
                "history": await query(urls["user"], "SELECT status FROM order_history WHERE order_id = $1", order_id),
                "unsent": await query(urls["order"], "SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL"),
                "consumed": await query(urls["catalog"], "SELECT event_type FROM processed_events"),
                "foreign": await query(urls["catalog"], "SELECT to_regclass('orders') AS t"),
            }
            if seen["history"] and seen["unsent"][0]["n"] == 0 or time.monotonic() > deadline:
                return seen
            await asyncio.sleep(0.1)

    seen = asyncio.run(look())
    assert [r["status"] for r in seen["order"]] == ["CONFIRMED"]
    assert [r["status"] for r in seen["reservation"]] == ["RESERVED"]
    assert [r["status"] for r in seen["history"]] == ["CONFIRMED"]  # the user service's read model
    assert seen["unsent"][0]["n"] == 0  # every outbox row relayed and marked sent
    assert "order.placed" in {r["event_type"] for r in seen["consumed"]}  # the inbox
    assert seen["foreign"][0]["t"] is None  # catalog's database has no order table: no shared schema
    assert not list((postgres_stack.var_dir / "data").glob("*.db"))  # and no SQLite file was made
