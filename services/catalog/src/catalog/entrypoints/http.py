"""The catalog's HTTP API (public through the gateway as /api/catalog/...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from msa_kit.admin import AdminOnly
from msa_kit.app import Provided

from ..domain.model import Product
from ..service_layer import handlers
from ..service_layer.unit_of_work import CatalogUnitsOfWork

router = APIRouter(tags=["catalog"])


@dataclass(frozen=True)
class Adapters:
    """What the routes use, built once by bootstrap.py."""

    uows: CatalogUnitsOfWork


Wired = Annotated[Adapters, Provided(Adapters)]


class ProductOut(BaseModel):
    sku: str
    name: str
    price_cents: int
    stock: int


@router.get("/products", response_model=list[ProductOut])
async def list_products(adapters: Wired,
                        sku: Annotated[list[str] | None, Query(description="only these SKUs")] = None):
    return [vars(p) for p in await handlers.products(adapters.uows, sku)]


@router.get("/products/{sku}", response_model=ProductOut)
async def get_product(sku: str, adapters: Wired):
    product = await handlers.product(adapters.uows, sku)
    if product is None:
        raise HTTPException(404, f"no product with sku {sku!r}")
    return vars(product)


class ProductIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    price_cents: int = Field(ge=0)
    stock: int = Field(ge=0)


@router.put("/admin/products/{sku}", response_model=ProductOut, dependencies=[AdminOnly], tags=["admin"])
async def put_product(sku: str, body: ProductIn, adapters: Wired):
    await handlers.put_product(adapters.uows, Product(sku, body.name, body.price_cents, body.stock))
    return {"sku": sku, **body.model_dump()}
