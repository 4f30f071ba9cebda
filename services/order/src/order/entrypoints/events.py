"""The events the order service consumes: the catalog's answer to `order.placed`, typed and versioned at the edge."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from msa_kit.platform import Platform

from ..service_layer import services


class StockReservedV1(BaseModel):
    order_id: str


class StockRejectedV1(BaseModel):
    order_id: str
    reason: str = "rejected by catalog"


async def on_stock_reserved(event: StockReservedV1, uow: Any) -> None:
    await services.stock_reserved(uow, event.order_id)


async def on_stock_rejected(event: StockRejectedV1, uow: Any) -> None:
    await services.stock_rejected(uow, event.order_id, event.reason)


def subscribe(platform: Platform) -> None:
    platform.handle("stock.reserved", StockReservedV1, on_stock_reserved)
    platform.handle("stock.rejected", StockRejectedV1, on_stock_rejected)
