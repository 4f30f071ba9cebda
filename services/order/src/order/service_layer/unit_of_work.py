"""What the order service's use cases need of persistence (ports), free of any database library."""

from __future__ import annotations

import abc
from typing import Callable, Protocol

from msa_kit.uow import UnitOfWork

from ..domain.model import Order


class OrderRepository(Protocol):
    async def add(self, order: Order) -> None: ...
    async def get(self, order_id: str) -> Order | None: ...
    async def save(self, order: Order) -> None: ...
    async def for_user(self, user_id: str) -> list[Order]: ...
    async def by_idempotency_key(self, user_id: str, key: str) -> Order | None: ...


class OrderUnitOfWork(UnitOfWork):
    orders: OrderRepository

    @abc.abstractmethod
    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run `fn` once this transaction has committed (a metric counts only a change that happened): abstract,
        so that no unit of work can drop the callbacks by inheriting a method that does nothing."""


class OrderUnitsOfWork(Protocol):
    """A new unit of work per call; `read_only` ones never wait for, or hold, the database's one writer."""

    def __call__(self, *, read_only: bool = False) -> OrderUnitOfWork: ...
