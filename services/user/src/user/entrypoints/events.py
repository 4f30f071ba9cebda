"""The events the user service consumes, to keep its order-history read model (no call to the order service)."""

from __future__ import annotations

from pydantic import BaseModel

from msa_kit.platform import Platform

from ..service_layer import handlers
from ..service_layer.unit_of_work import UserUnitOfWork


class OrderLineV1(BaseModel):
    sku: str
    quantity: int
    unit_price_cents: int


class OrderConfirmedV1(BaseModel):
    order_id: str
    user_id: str
    lines: list[OrderLineV1]
    total_cents: int


class OrderCancelledV1(BaseModel):
    order_id: str
    user_id: str


async def on_order_confirmed(event: OrderConfirmedV1, uow: UserUnitOfWork) -> None:
    await handlers.order_confirmed(uow, event.order_id, event.user_id, [line.model_dump() for line in event.lines],
                                   event.total_cents)


async def on_order_cancelled(event: OrderCancelledV1, uow: UserUnitOfWork) -> None:
    await handlers.order_cancelled(uow, event.order_id)


def subscribe(platform: Platform) -> None:
    platform.handle("order.confirmed", OrderConfirmedV1, on_order_confirmed)
    platform.handle("order.cancelled", OrderCancelledV1, on_order_cancelled)
