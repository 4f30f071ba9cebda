"""What the catalog's use cases need of persistence (ports), free of any database library."""

from __future__ import annotations

from typing import Iterable, Protocol

from msa_kit.uow import UnitOfWork

from ..domain.model import Product, Reservation


class ProductRepository(Protocol):
    async def list(self, skus: Iterable[str] | None = None) -> list[Product]: ...
    async def get_many(self, skus: Iterable[str]) -> dict[str, Product]: ...
    async def save_stock(self, products: Iterable[Product]) -> None: ...
    async def add_missing(self, products: Iterable[Product]) -> int: ...
    async def put(self, product: Product) -> None: ...


class ReservationRepository(Protocol):
    async def get(self, order_id: str) -> Reservation | None: ...
    async def add(self, reservation: Reservation) -> None: ...
    async def save(self, reservation: Reservation) -> None: ...


class CatalogUnitOfWork(UnitOfWork):
    products: ProductRepository
    reservations: ReservationRepository


class CatalogUnitsOfWork(Protocol):
    """A new unit of work per call; `read_only` ones never wait for, or hold, the database's one writer."""

    def __call__(self, *, read_only: bool = False) -> CatalogUnitOfWork: ...
