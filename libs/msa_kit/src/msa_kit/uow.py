"""The unit-of-work port (plain Python): what a service layer sees of persistence.

One unit of work = one database transaction holding the state change, the events it raised (outbox) and the
ids of the events it consumed (inbox). Adapters implement it (outbox.SqlUnitOfWork); tests can fake it.
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

    def stage_new_events(self) -> None:
        """Take the events raised so far for the outbox now, under the current trace context (a transaction that
        applies several consumed events stages after each, so each outbox row continues its own trace)."""

    @abc.abstractmethod
    async def processed(self, event_ids: list[str]) -> set[str]:
        """Which of these consumed events this service has already applied."""

    @abc.abstractmethod
    async def mark_processed(self, events: list[tuple[str, str]]) -> None:
        """Record (event id, event type) pairs as applied, in this transaction."""
