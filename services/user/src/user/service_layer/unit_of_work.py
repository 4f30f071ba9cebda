"""What the user service's use cases need of persistence (ports), free of any database library."""

from __future__ import annotations

from typing import Protocol

from msa_kit.uow import UnitOfWork

from ..domain.model import User
from ..domain.throttle import LoginFailures


class UserRepository(Protocol):
    async def add(self, user: User) -> None: ...
    async def get(self, user_id: str) -> User | None: ...
    async def by_username(self, username: str) -> User | None: ...


class OrderHistory(Protocol):
    """A read model: the user's confirmed orders as events told us, eventually consistent, never asked of order."""

    async def add(self, order_id: str, user_id: str, lines: list[dict[str, object]], total_cents: int) -> None: ...
    async def mark_cancelled(self, order_id: str) -> None: ...
    async def for_user(self, user_id: str) -> list[dict[str, object]]: ...


class LoginFailuresRepository(Protocol):
    async def get_many(self, keys: list[str]) -> list[LoginFailures]: ...
    async def save(self, records: list[LoginFailures]) -> None: ...
    async def all(self) -> list[LoginFailures]: ...
    async def clear(self, key: str | None = None) -> int: ...


class UserUnitOfWork(UnitOfWork):
    users: UserRepository
    history: OrderHistory
    login_failures: LoginFailuresRepository


class UserUnitsOfWork(Protocol):
    """A new unit of work per call; `read_only` ones never wait for, or hold, the database's one writer."""

    def __call__(self, *, read_only: bool = False) -> UserUnitOfWork: ...
