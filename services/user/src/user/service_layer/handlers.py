"""The user service's use cases: sign up, log in (throttled), read a user and their order history; keep that
history from the order service's events.

A use case called over HTTP takes `uows` and opens the transactions it needs; one called for an event takes the
`uow` the kit's inbox opened (it records the event as applied in the same transaction, and commits).
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from ..domain.model import UNKNOWN_USER_HASH, User, UsernameTaken, verify_password
from ..domain.throttle import LoginFailures, LoginThrottle, LoginThrottled, WrongCredentials
from .unit_of_work import UserUnitOfWork, UserUnitsOfWork


async def sign_up(uows: UserUnitsOfWork, username: str, password: str) -> User:
    user = User.sign_up(username, password)
    async with uows() as uow:
        if await uow.users.by_username(username) is not None:
            raise UsernameTaken(username)
        await uow.users.add(user)
        await uow.commit()
    return user


async def log_in(uows: UserUnitsOfWork, throttle: LoginThrottle, username: str, password: str, client: str,
                 now: Callable[[], float] = time.time) -> User:
    """The user, or WrongCredentials, or LoginThrottled. An unknown username and a wrong password take the same
    path, the same time and the same answer, and count against the account and the client alike."""
    keys = list(throttle.keys(username, client))
    async with uows() as uow:  # count the attempt first: parallel guesses are counted, not raced
        records = await uow.login_failures.get_many(keys)
        t = now()
        wait = max(r.retry_after_s(t) for r in records)
        if wait > 0:
            raise LoginThrottled(wait)
        for record in records:
            record.count(throttle.policy(record), t)
        await uow.login_failures.save(records)
        user = await uow.users.by_username(username)
        await uow.commit()
    # scrypt runs in a thread (it releases the GIL), outside the transaction: ~0.1 s of CPU must not hold the
    # event loop, nor the database's write lock.
    matches = await asyncio.to_thread(verify_password, password, user.password_hash if user else UNKNOWN_USER_HASH)
    if user is None or not matches:
        raise WrongCredentials()
    async with uows() as uow:
        account, by_client = await uow.login_failures.get_many(keys)
        account.failures = 0  # a success forgives the account; the client only gets this attempt back
        by_client.give_back(throttle.client)
        await uow.login_failures.save([account, by_client])
        await uow.commit()
    return user


async def user_of(uows: UserUnitsOfWork, user_id: str) -> User | None:
    async with uows(read_only=True) as uow:
        return await uow.users.get(user_id)


async def order_history(uows: UserUnitsOfWork, user_id: str) -> list[dict[str, object]]:
    """The user's confirmed orders, from this service's own read model (eventually consistent)."""
    async with uows(read_only=True) as uow:
        return await uow.history.for_user(user_id)


async def login_failures(uows: UserUnitsOfWork) -> list[LoginFailures]:
    async with uows(read_only=True) as uow:
        return await uow.login_failures.all()


async def clear_login_failures(uows: UserUnitsOfWork, key: str | None = None) -> int:
    async with uows() as uow:
        cleared = await uow.login_failures.clear(key)
        await uow.commit()
    return cleared


async def order_confirmed(uow: UserUnitOfWork, order_id: str, user_id: str, lines: list[dict[str, object]],
                          total_cents: int) -> None:
    await uow.history.add(order_id, user_id, lines, total_cents)


async def order_cancelled(uow: UserUnitOfWork, order_id: str) -> None:
    await uow.history.mark_cancelled(order_id)
