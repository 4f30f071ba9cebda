"""order as a consumer of catalog's and user's HTTP APIs (Pact): the real CatalogClient and UserClient against
Pact's mock server, which records what order asks and what it needs back into contracts/pacts/."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pact import Pact, match

from order.adapters.clients import CatalogClient, UserClient
from pacts import ToMockServer, check_or_update


def recorded(provider: str, tmp_path: Path):
    """A pact of order with `provider`; when the test is done, written and compared with the committed one."""
    pact = Pact("order", provider).with_specification("V4")
    yield pact
    pact.write_file(tmp_path, overwrite=True)
    check_or_update(tmp_path, f"order-{provider}.json")


@pytest.fixture
def catalog_pact(tmp_path: Path):
    yield from recorded("catalog", tmp_path)


@pytest.fixture
def user_pact(tmp_path: Path):
    yield from recorded("user", tmp_path)


async def test_order_reads_the_prices_of_the_skus_it_orders(catalog_pact: Pact):
    (catalog_pact.upon_receiving("the prices of two products")
     .given("products SKU-1 and SKU-2 exist")
     .with_request("GET", "/products")
     .with_query_parameters([("sku", "SKU-1"), ("sku", "SKU-2")])
     .will_respond_with(200)
     .with_body(match.each_like({"sku": match.str("SKU-1"), "price_cents": match.int(1250)}, min=1),
                content_type="application/json"))
    with catalog_pact.serve() as server:
        async with httpx.AsyncClient(transport=ToMockServer(str(server.url))) as http:
            prices = await CatalogClient(http).prices(["SKU-1", "SKU-2"])
    assert prices == {"SKU-1": 1250}  # the mock answers the example: one product, as each_like's minimum


async def test_order_asks_whether_a_user_exists(user_pact: Pact):
    (user_pact.upon_receiving("a user that exists")
     .given("user u-1 exists")
     .with_request("GET", "/internal/users/u-1")
     .will_respond_with(200)
     .with_body({"id": match.str("u-1"), "username": match.str("alice")}, content_type="application/json"))
    (user_pact.upon_receiving("a user that does not exist")
     .given("no user u-404")
     .with_request("GET", "/internal/users/u-404")
     .will_respond_with(404))
    with user_pact.serve() as server:
        async with httpx.AsyncClient(transport=ToMockServer(str(server.url))) as http:
            users = UserClient(http)
            assert await users.exists("u-1") is True
            assert await users.exists("u-404") is False
