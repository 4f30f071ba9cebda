"""The catalog's use cases: the order saga's stock reservations, products read and set, and the seed.

A use case called over HTTP (or at start) takes `uows` and opens the transactions it needs; one called for an event
takes the `uow` the kit's inbox opened (it records the event as applied in the same transaction, and commits).
"""

from __future__ import annotations

from ..domain.events import Line
from ..domain.model import Product, Reservation
from .unit_of_work import CatalogUnitOfWork, CatalogUnitsOfWork


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


async def products(uows: CatalogUnitsOfWork, skus: list[str] | None = None) -> list[Product]:
    """Every product, or only these SKUs (unknown ones are simply absent)."""
    async with uows(read_only=True) as uow:
        return await uow.products.list(skus)


async def product(uows: CatalogUnitsOfWork, sku: str) -> Product | None:
    async with uows(read_only=True) as uow:
        return (await uow.products.get_many([sku])).get(sku)


async def put_product(uows: CatalogUnitsOfWork, product: Product) -> None:
    """An operator sets a product and its stock (receiving goods, or a test stocking shelves of its own)."""
    async with uows() as uow:
        await uow.products.put(product)
        await uow.commit()


async def seed(uows: CatalogUnitsOfWork, products: list[Product]) -> int:
    """Insert the configured products that are not there yet; never overwrite live stock."""
    async with uows() as uow:
        added = await uow.products.add_missing(products)
        await uow.commit()
    return added
