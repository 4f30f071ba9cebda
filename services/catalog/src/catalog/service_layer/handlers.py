"""The catalog's use cases: event handlers of the order saga, and the seed."""

from __future__ import annotations

from ..domain.model import Line, Product, Reservation
from .unit_of_work import CatalogUnitOfWork


async def reserve_stock(uow: CatalogUnitOfWork, order_id: str, lines: list[Line]) -> None:
    """order.placed → stock.reserved | stock.rejected."""
    if await uow.reservations.get(order_id) is not None:
        return  # this order was already decided (e.g. the event was published twice under new ids)
    products = await uow.products.get_many(line.sku for line in lines)
    reservation = Reservation(order_id, lines)
    reservation.reserve_from(products)
    await uow.products.save_stock(products.values())
    await uow.reservations.add(reservation)


async def release_stock(uow: CatalogUnitOfWork, order_id: str) -> None:
    """order.cancelled → the reserved stock goes back (the saga's compensation)."""
    reservation = await uow.reservations.get(order_id)
    if reservation is None:
        return
    products = await uow.products.get_many(line.sku for line in reservation.lines)
    reservation.release_to(products)
    await uow.products.save_stock(products.values())
    await uow.reservations.save(reservation)


async def seed(uow: CatalogUnitOfWork, products: list[Product]) -> int:
    """Insert the configured products that are not there yet; never overwrite live stock."""
    added = await uow.products.add_missing(products)
    await uow.commit()
    return added


async def put_product(uow: CatalogUnitOfWork, product: Product) -> None:
    """An operator sets a product and its stock (receiving goods, or a test stocking shelves of its own)."""
    await uow.products.put(product)
    await uow.commit()
