"""The unit-of-work port (plain Python): what a service layer sees of persistence.

One unit of work = one database transaction holding the state change, the events it raised (outbox) and the
ids of the events it consumed (inbox). Adapters implement it (sql.SqlUnitOfWork); tests can fake it.
"""

from __future__ import annotations

import abc
from typing import Any, Protocol


class Aggregate(Protocol):
    events: list[Any]

    def aggregate_id(self) -> str: ...


class UnitOfWork(abc.ABC):
    def __init__(self) -> None:
        self.seen: list[Aggregate] = []

    async def __aenter__(self) -> "UnitOfWork":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.rollback()

    def collect_new_events(self) -> list[tuple[str, Any]]:
        found = []
        for agg in self.seen:
            while agg.events:
                found.append((agg.aggregate_id(), agg.events.pop(0)))
        return found

    @abc.abstractmethod
    async def commit(self) -> None: ...

    @abc.abstractmethod
    async def rollback(self) -> None: ...

    @abc.abstractmethod
    async def already_processed(self, event_id: str) -> bool: ...

    @abc.abstractmethod
    async def mark_processed(self, event_id: str, event_type: str) -> None: ...
