"""What placing an order needs of other services, as ports (adapters/clients.py implements them)."""

from __future__ import annotations

from typing import Protocol


class UserDirectory(Protocol):
    async def exists(self, user_id: str) -> bool: ...


class PricesUnavailable(Exception):
    """The catalog could not be asked (breaker open, no instance, timeout): prices are not known right now."""


class PriceList(Protocol):
    async def prices(self, skus: list[str]) -> dict[str, int]:
        """Unit price in cents of each known SKU; unknown SKUs are simply absent. Raises PricesUnavailable."""
        ...
