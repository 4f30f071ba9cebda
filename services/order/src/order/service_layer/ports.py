"""What placing an order needs from the outside world, as ports (adapters implement them)."""

from __future__ import annotations

from typing import Protocol

from msa_kit.uow import UnitOfWork

from ..domain.model import Order


class UserDirectory(Protocol):
    async def exists(self, user_id: str) -> bool: ...


class PricesUnavailable(Exception):
    """The catalog could not be asked (breaker open, no instance, timeout): prices are not known right now."""


class PriceList(Protocol):
    async def prices(self, skus: list[str]) -> dict[str, int]:
        """Unit price in cents of each known SKU; unknown SKUs are simply absent. Raises PricesUnavailable."""
        ...


class OrderRepository(Protocol):
    async def add(self, order: Order) -> None: ...
    async def get(self, order_id: str) -> Order | None: ...
    async def save(self, order: Order) -> None: ...
    async def for_user(self, user_id: str) -> list[Order]: ...
    async def by_idempotency_key(self, user_id: str, key: str) -> Order | None: ...


class OrderUnitOfWork(UnitOfWork):
    orders: OrderRepository
