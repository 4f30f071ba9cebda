"""The order service's use cases: place, cancel and read orders; react to the catalog's answer.

A use case called over HTTP takes `uows` and opens the transactions it needs; one called for an event takes the
`uow` the kit's inbox opened (it records the event as applied in the same transaction, and commits).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..domain.model import InvalidOrder, Order, OrderLine, OrderStatus
from .ports import PriceList, UserDirectory
from .unit_of_work import OrderUnitOfWork, OrderUnitsOfWork

log = logging.getLogger(__name__)


class UnknownUser(Exception):
    pass


@dataclass(frozen=True)
class Item:
    sku: str
    quantity: int


async def place_order(uows: OrderUnitsOfWork, users: UserDirectory, prices: PriceList, user_id: str,
                      items: list[Item], idempotency_key: str | None = None, *,
                      synthetic: bool = False) -> tuple[Order, bool]:
    """Returns the order and whether it was created (and committed) now (False: an earlier request with the same
    key). `synthetic`: a synthetic transaction's order (a probe's), kept apart in the figures."""
    if idempotency_key:  # a read-only look-up: it never waits for, or holds, the database's one writer
        async with uows(read_only=True) as reads:
            earlier = await reads.orders.by_idempotency_key(user_id, idempotency_key)
        if earlier is not None:
            return earlier, False
    # The calls to other services happen outside any transaction: a database lock must never wait on the network.
    if not await users.exists(user_id):
        raise UnknownUser(user_id)
    known = await prices.prices(sorted({item.sku for item in items}))
    for i, item in enumerate(items):
        if item.sku not in known:
            raise InvalidOrder(f"items[{i}].sku", f"no product with sku {item.sku!r}")
    order = Order.place(user_id, [OrderLine(it.sku, it.quantity, known[it.sku]) for it in items], idempotency_key,
                        synthetic=synthetic)
    async with uows() as uow:
        if idempotency_key:  # a concurrent request with the same key may have won the race meanwhile
            earlier = await uow.orders.by_idempotency_key(user_id, idempotency_key)
            if earlier is not None:
                return earlier, False
        await uow.orders.add(order)
        await uow.commit()
    log.info("order %s placed: %d line(s), %d cents%s", order.id, len(order.lines), order.total_cents,
             " (synthetic)" if synthetic else "")
    return order, True


async def cancel_order(uows: OrderUnitsOfWork, user_id: str, order_id: str) -> tuple[Order | None, bool]:
    """The order (None: no such order of this user's) and whether this call cancelled it (False: it already was)."""
    async with uows() as uow:
        order = await uow.orders.get(order_id)
        if order is None or order.user_id != user_id:
            return None, False
        before = order.status
        order.cancel()
        await uow.orders.save(order)
        await uow.commit()
    return order, order.status != before


async def order_of(uows: OrderUnitsOfWork, user_id: str, order_id: str) -> Order | None:
    """The user's order, or None (no such order, or another user's: the same answer)."""
    async with uows(read_only=True) as uow:
        order = await uow.orders.get(order_id)
    return order if order is not None and order.user_id == user_id else None


async def orders_of(uows: OrderUnitsOfWork, user_id: str) -> list[Order]:
    """The user's latest orders, newest first."""
    async with uows(read_only=True) as uow:
        return await uow.orders.for_user(user_id)


async def stock_reserved(uow: OrderUnitOfWork, order_id: str) -> Order | None:
    """The order if this answer confirmed it; None if there is no such order or it was already decided."""
    order = await uow.orders.get(order_id)
    if order is None or order.status != OrderStatus.PENDING:
        return None
    order.confirm()
    await uow.orders.save(order)
    return order


async def stock_rejected(uow: OrderUnitOfWork, order_id: str, reason: str) -> Order | None:
    """The order if this answer rejected it; None if there is no such order or it was already decided."""
    order = await uow.orders.get(order_id)
    if order is None or order.status != OrderStatus.PENDING:
        return None
    order.reject(reason)
    await uow.orders.save(order)
    return order
