"""The order service's memory of who exists: an account, once the user service said it exists, keeps existing.

The sandbox deletes no account (were it to, a `user.deleted` event would evict it here). So only a user's first
order asks the user service; every later one is answered from memory, which takes one call (a request through the
kit's client and the user service's database) off the placement path: measured ~7 ms of CPU per order across
the two services (bench/stack_bench.py, `orders.cpu_ms`). "No such user" is never remembered: an account made a
moment later must be able to order at once.
"""

from __future__ import annotations

import collections

from .ports import UserDirectory


class KnownUsers:
    """A UserDirectory that remembers the users it was told exist, the `capacity` most recently seen."""

    def __init__(self, users: UserDirectory, capacity: int = 100_000) -> None:
        self.users, self.capacity = users, capacity
        self._known: collections.OrderedDict[str, None] = collections.OrderedDict()

    async def exists(self, user_id: str) -> bool:
        if user_id in self._known:
            self._known.move_to_end(user_id)
            return True
        if not await self.users.exists(user_id):
            return False
        self._known[user_id] = None
        if len(self._known) > self.capacity:
            self._known.popitem(last=False)
        return True
