"""The order service's HTTP API (public through the gateway as /api/orders)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import httpx
from fastapi import APIRouter, Header, HTTPException, Response
from pydantic import BaseModel, Field

from msa_kit.app import Provided
from msa_kit.identity import CurrentCaller
from msa_kit.problems import problem

from ..adapters import metrics
from ..domain.model import CannotCancel, InvalidOrder, Order
from ..service_layer import handlers
from ..service_layer.ports import PriceList, PricesUnavailable, UserDirectory
from ..service_layer.unit_of_work import OrderUnitsOfWork

router = APIRouter(tags=["orders"])


@dataclass(frozen=True)
class Adapters:
    """What the routes use, built once by bootstrap.py."""

    uows: OrderUnitsOfWork
    users: UserDirectory
    prices: PriceList  # the catalog's prices, with the last known ones as the fallback


Wired = Annotated[Adapters, Provided(Adapters)]


class ItemIn(BaseModel):
    sku: str = Field(min_length=1, max_length=64)
    quantity: int = Field(gt=0, le=1000)


class PlaceOrder(BaseModel):
    items: list[ItemIn] = Field(min_length=1, max_length=100)


class LineOut(BaseModel):
    sku: str
    quantity: int
    unit_price_cents: int


class OrderOut(BaseModel):
    id: str
    user_id: str
    status: str
    reason: str | None = None
    lines: list[LineOut]
    total_cents: int
    synthetic: bool = False  # placed by a synthetic transaction (X-Synthetic-Transaction: true), not a customer


def _out(order: Order) -> dict:
    return {"id": order.id, "user_id": order.user_id, "status": order.status, "reason": order.reason,
            "lines": [vars(line) for line in order.lines], "total_cents": order.total_cents,
            "synthetic": order.synthetic}


def is_synthetic(header: str | None) -> bool:
    """`X-Synthetic-Transaction: true` marks a synthetic probe's order (the gateway forwards the header as is)."""
    return (header or "").strip().lower() == "true"


@router.post("/orders", status_code=201, response_model=OrderOut)
async def place_order(body: PlaceOrder, caller: CurrentCaller, adapters: Wired, response: Response,
                      idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
                      x_synthetic_transaction: Annotated[str | None, Header(max_length=16)] = None):
    items = [handlers.Item(i.sku, i.quantity) for i in body.items]
    try:
        order, created = await handlers.place_order(
            adapters.uows, adapters.users, adapters.prices, caller.user_id, items, idempotency_key,
            synthetic=is_synthetic(x_synthetic_transaction))
    except InvalidOrder as exc:
        return problem(422, "Invalid order", f"{exc.field}: {exc}", instance="/orders",
                       errors=[{"field": exc.field, "message": str(exc)}])
    except PricesUnavailable as exc:
        return problem(503, "Prices unavailable", f"the catalog cannot be asked and no recent price is known: {exc}",
                       instance="/orders", headers={"Retry-After": "5"})
    except handlers.UnknownUser:
        raise HTTPException(403, "the caller's account does not exist") from None
    except httpx.HTTPStatusError as exc:
        return problem(502, "Dependency failed", f"{exc.request.url.host} answered {exc.response.status_code}",
                       instance="/orders")
    if created:  # committed by the service layer; a replay of an earlier key is not a new order
        metrics.order_placed(order.synthetic)
    else:
        response.status_code = 200
    return _out(order)


@router.get("/orders/{order_id}", response_model=OrderOut)
async def get_order(order_id: str, caller: CurrentCaller, adapters: Wired):
    order = await handlers.order_of(adapters.uows, caller.user_id, order_id)
    if order is None:
        raise HTTPException(404, f"no order {order_id}")
    return _out(order)


@router.get("/orders", response_model=list[OrderOut])
async def list_orders(caller: CurrentCaller, adapters: Wired):
    return [_out(o) for o in await handlers.orders_of(adapters.uows, caller.user_id)]


@router.post("/orders/{order_id}/cancel", response_model=OrderOut)
async def cancel_order(order_id: str, caller: CurrentCaller, adapters: Wired):
    try:
        order, cancelled = await handlers.cancel_order(adapters.uows, caller.user_id, order_id)
    except CannotCancel as exc:
        raise HTTPException(409, str(exc)) from None
    if order is None:
        raise HTTPException(404, f"no order {order_id}")
    if cancelled:  # committed now, not a repeated cancel
        metrics.saga_outcome("cancelled", order.synthetic)
    return _out(order)
