"""The events the order service consumes: the catalog's answer to `order.placed`, typed and versioned at the edge."""

from __future__ import annotations

from pydantic import BaseModel

from msa_kit.platform import Platform

from ..adapters import metrics
from ..service_layer import handlers
from ..service_layer.unit_of_work import OrderUnitOfWork


class StockReservedV1(BaseModel):
    order_id: str


class StockRejectedV1(BaseModel):
    order_id: str
    reason: str = "rejected by catalog"


async def on_stock_reserved(event: StockReservedV1, uow: OrderUnitOfWork) -> None:
    order = await handlers.stock_reserved(uow, event.order_id)
    if order is not None:  # this answer moved the order: count it once the inbox has committed the change
        synthetic = order.synthetic
        uow.after_commit(lambda: metrics.saga_outcome("confirmed", synthetic))


async def on_stock_rejected(event: StockRejectedV1, uow: OrderUnitOfWork) -> None:
    order = await handlers.stock_rejected(uow, event.order_id, event.reason)
    if order is not None:
        synthetic = order.synthetic
        uow.after_commit(lambda: metrics.saga_outcome("rejected", synthetic))


def subscribe(platform: Platform) -> None:
    platform.handle("stock.reserved", StockReservedV1, on_stock_reserved)
    platform.handle("stock.rejected", StockRejectedV1, on_stock_rejected)
