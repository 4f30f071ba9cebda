"""The events the catalog consumes, typed and versioned at the edge (a payload that doesn't fit is dead-lettered)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from msa_kit.platform import Platform

from ..domain.model import Line
from ..service_layer import handlers


class LineV1(BaseModel):
    sku: str
    quantity: int = Field(gt=0)


class OrderPlacedV1(BaseModel):
    order_id: str
    user_id: str
    lines: list[LineV1] = Field(min_length=1)
    total_cents: int


class OrderCancelledV1(BaseModel):
    order_id: str
    user_id: str


async def on_order_placed(event: OrderPlacedV1, uow: Any) -> None:
    await handlers.reserve_stock(uow, event.order_id, [Line(line.sku, line.quantity) for line in event.lines])


async def on_order_cancelled(event: OrderCancelledV1, uow: Any) -> None:
    await handlers.release_stock(uow, event.order_id)


def subscribe(platform: Platform) -> None:
    platform.handle("order.placed", OrderPlacedV1, on_order_placed)
    platform.handle("order.cancelled", OrderCancelledV1, on_order_cancelled)
