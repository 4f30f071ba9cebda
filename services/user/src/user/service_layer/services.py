"""The user service's use cases."""

from __future__ import annotations

from typing import Protocol

from msa_kit.uow import UnitOfWork

from ..domain.model import User, UsernameTaken


class UserRepository(Protocol):
    async def add(self, user: User) -> None: ...
    async def get(self, user_id: str) -> User | None: ...
    async def by_username(self, username: str) -> User | None: ...


class OrderHistory(Protocol):
    """A read model: the user's confirmed orders as events told us, eventually consistent, never asked of order."""

    async def add(self, order_id: str, user_id: str, lines: list[dict[str, object]], total_cents: int) -> None: ...
    async def mark_cancelled(self, order_id: str) -> None: ...
    async def for_user(self, user_id: str) -> list[dict[str, object]]: ...


class UserUnitOfWork(UnitOfWork):
    users: UserRepository
    history: OrderHistory


async def sign_up(uow: UserUnitOfWork, username: str, password: str) -> User:
    user = User.sign_up(username, password)
    if await uow.users.by_username(username) is not None:
        raise UsernameTaken(username)
    await uow.users.add(user)
    await uow.commit()
    return user


async def authenticate(uow: UserUnitOfWork, username: str, password: str) -> User | None:
    user = await uow.users.by_username(username)
    # Hash even for an unknown user so the answer takes as long either way (no username probing by timing).
    if user is None:
        User.sign_up("nobody", password if len(password) >= 8 else "x" * 8)
        return None
    return user if user.check_password(password) else None


async def order_confirmed(uow: UserUnitOfWork, order_id: str, user_id: str, lines: list[dict[str, object]],
                          total_cents: int) -> None:
    await uow.history.add(order_id, user_id, lines, total_cents)


async def order_cancelled(uow: UserUnitOfWork, order_id: str) -> None:
    await uow.history.mark_cancelled(order_id)
