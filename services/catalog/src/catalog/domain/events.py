"""What the catalog tells the world (over the broker, through the outbox): its answers to an order, and the
values they carry.

Each event is a dataclass with a dotted `type` and a payload `version`: contracts/events/<type>.v<version>.schema.json
is generated from it (`make contracts`), and a change to a field is a change to that contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Line:
    sku: str
    quantity: int


@dataclass(frozen=True)
class Shortage:
    sku: str
    requested: int
    available: int


@dataclass(frozen=True)
class StockReserved:
    type: ClassVar[str] = "stock.reserved"
    version: ClassVar[int] = 1  # of its payload: contracts/events/<type>.v<version>.schema.json (`make contracts`)
    order_id: str
    lines: list[Line]


@dataclass(frozen=True)
class StockRejected:
    type: ClassVar[str] = "stock.rejected"
    version: ClassVar[int] = 1  # of its payload: contracts/events/<type>.v<version>.schema.json (`make contracts`)
    order_id: str
    reason: str
    shortages: list[Shortage]


@dataclass(frozen=True)
class StockReleased:
    type: ClassVar[str] = "stock.released"
    version: ClassVar[int] = 1  # of its payload: contracts/events/<type>.v<version>.schema.json (`make contracts`)
    order_id: str
    lines: list[Line]
