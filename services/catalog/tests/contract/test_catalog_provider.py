"""catalog as a provider: its real app (routes, domain, its own database) replays every committed pact that names
it (contracts/pacts/*-catalog.json), each provider state seeded through its own unit of work. And the safety net
is itself tested: with `price_cents` renamed in its answers, verification fails naming the field."""

from __future__ import annotations

import json
from pathlib import Path

from catalog.bootstrap import CatalogSettings, build_app
from catalog.domain.model import Product
from catalog.service_layer import handlers
from pacts import PACTS, Served, provider, verify


def states(served: Served) -> dict:
    async def two_products() -> None:
        for sku, price in (("SKU-1", 1250), ("SKU-2", 990)):
            uows = served.platform.uow  # type: ignore[attr-defined]
            await handlers.put_product(uows, Product(sku, f"product {sku}", price, 10))

    return {"products SKU-1 and SKU-2 exist": two_products}


def test_catalog_honours_every_pact_that_names_it(tmp_path: Path):
    assert list(PACTS.glob("*-catalog.json")), "no consumer of catalog has a pact"
    with provider("catalog", build_app, CatalogSettings(), tmp_path) as served:
        passed, output = verify("catalog", served, states(served))
    assert passed, output


def renaming(old: bytes, new: bytes):
    """An ASGI middleware that renames a JSON field in every answer: a provider's breaking change."""
    def wrap(app):
        async def asgi(scope, receive, send):
            async def renamed(message):
                if message["type"] == "http.response.body":
                    message = {**message, "body": message.get("body", b"").replace(old, new)}
                elif message["type"] == "http.response.start":
                    message = {**message, "headers": [(k, v) for k, v in message["headers"]
                                                      if k.lower() != b"content-length"]}
                await send(message)
            await app(scope, receive, renamed)
        return asgi
    return wrap


def test_renaming_a_field_a_consumer_reads_fails_verification_naming_it(tmp_path: Path):
    pact = json.loads((PACTS / "order-catalog.json").read_text())
    assert any("price_cents" in json.dumps(i["response"]) for i in pact["interactions"])
    with provider("catalog", build_app, CatalogSettings(), tmp_path, wrap=renaming(b'"price_cents"', b'"price"')
                  ) as served:
        passed, output = verify("catalog", served, states(served))
    assert not passed
    assert "missing the following keys: price_cents" in output, output
