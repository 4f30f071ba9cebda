"""The catalog's HTTP API (public through the gateway as /api/catalog/...)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, Field

from msa_kit.admin import AdminOnly

from ..domain.model import Product
from ..service_layer import handlers

router = APIRouter(tags=["catalog"])


class ProductOut(BaseModel):
    sku: str
    name: str
    price_cents: int
    stock: int


@router.get("/products", response_model=list[ProductOut])
async def list_products(request: Request,
                        sku: Annotated[list[str] | None, Query(description="only these SKUs")] = None):
    async with request.app.state.platform.uow(read_only=True) as uow:
        return [vars(p) for p in await uow.products.list(sku)]


@router.get("/products/{sku}", response_model=ProductOut)
async def get_product(sku: str, request: Request):
    async with request.app.state.platform.uow(read_only=True) as uow:
        found = await uow.products.get_many([sku])
    if sku not in found:
        raise HTTPException(404, f"no product with sku {sku!r}")
    return vars(found[sku])


class ProductIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    price_cents: int = Field(ge=0)
    stock: int = Field(ge=0)


@router.put("/admin/products/{sku}", response_model=ProductOut, dependencies=[AdminOnly], tags=["admin"])
async def put_product(sku: str, body: ProductIn, request: Request):
    async with request.app.state.platform.uow() as uow:
        await handlers.put_product(uow, Product(sku, body.name, body.price_cents, body.stock))
    return {"sku": sku, **body.model_dump()}
