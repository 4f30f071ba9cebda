"""The events the catalog consumes, typed and versioned at the edge (a payload that doesn't fit is dead-lettered)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field

from msa_kit.platform import Platform

from ..domain.events import Line
from ..service_layer import handlers
from ..service_layer.unit_of_work import CatalogUnitOfWork


class LineV1(BaseModel):
    sku: str
    quantity: int = Field(gt=0)


class MoneyV2(BaseModel):
    amount_cents: int
    currency: str


class OrderPlacedV2(BaseModel):
    """order.placed as the catalog reads it: v2 (contracts/events/order.placed.v2.schema.json)."""

    version: ClassVar[int] = 2
    order_id: str
    user_id: str
    lines: list[LineV1] = Field(min_length=1)
    total: MoneyV2


def order_placed_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """A v1 event (in flight during the change, or replayed from the dead letters) as v2: v1's prices were euro
    cents, so `total_cents` becomes `total` in EUR."""
    data["total"] = {"amount_cents": data.pop("total_cents"), "currency": "EUR"}
    return data


class OrderCancelledV1(BaseModel):
    order_id: str
    user_id: str


async def on_order_placed(event: OrderPlacedV2, uow: CatalogUnitOfWork) -> None:
    await handlers.reserve_stock(uow, event.order_id, [Line(line.sku, line.quantity) for line in event.lines])


async def on_order_cancelled(event: OrderCancelledV1, uow: CatalogUnitOfWork) -> None:
    await handlers.release_stock(uow, event.order_id)


def subscribe(platform: Platform) -> None:
    platform.handle("order.placed", OrderPlacedV2, on_order_placed, upcasters={1: order_placed_v1_to_v2})
    platform.handle("order.cancelled", OrderCancelledV1, on_order_cancelled)
