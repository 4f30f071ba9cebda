"""What the order service tells the world (over the broker, through the outbox), and the values it tells it in.

Each event is a dataclass with a dotted `type` and a payload `version`: contracts/events/<type>.v<version>.schema.json
is generated from it (`make contracts`), and a change to a field is a change to that contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class OrderLine:
    sku: str
    quantity: int
    unit_price_cents: int


@dataclass(frozen=True)
class Money:
    amount_cents: int
    currency: str = "EUR"  # the sandbox's prices are all in one currency; the event says which


@dataclass(frozen=True)
class OrderPlaced:
    type: ClassVar[str] = "order.placed"
    # v2: the total is money with its currency (`total`), no longer a bare `total_cents` (v1). The catalog learnt v2
    # first, with an upcaster for v1 events still in flight (contracts/README.md, workshop/09-break-a-contract.md).
    version: ClassVar[int] = 2  # of its payload: contracts/events/<type>.v<version>.schema.json (`make contracts`)
    order_id: str
    user_id: str
    lines: list[OrderLine]
    total: Money
    # Placed by a synthetic probe (X-Synthetic-Transaction: true), not a customer. An added field: consumers that
    # don't know it ignore it.
    synthetic: bool = False


@dataclass(frozen=True)
class OrderConfirmed:
    type: ClassVar[str] = "order.confirmed"
    version: ClassVar[int] = 1  # of its payload: contracts/events/<type>.v<version>.schema.json (`make contracts`)
    order_id: str
    user_id: str
    lines: list[OrderLine]
    total_cents: int


@dataclass(frozen=True)
class OrderCancelled:
    type: ClassVar[str] = "order.cancelled"
    version: ClassVar[int] = 1  # of its payload: contracts/events/<type>.v<version>.schema.json (`make contracts`)
    order_id: str
    user_id: str


@dataclass(frozen=True)
class OrderRejected:
    type: ClassVar[str] = "order.rejected"
    version: ClassVar[int] = 1  # of its payload: contracts/events/<type>.v<version>.schema.json (`make contracts`)
    order_id: str
    user_id: str
    reason: str
