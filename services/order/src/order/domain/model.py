"""Orders: plain Python, no framework."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar


class InvalidOrder(ValueError):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


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


PENDING, CONFIRMED, REJECTED, CANCELLED = "PENDING", "CONFIRMED", "REJECTED", "CANCELLED"


class CannotCancel(Exception):
    pass


@dataclass
class Order:
    id: str
    user_id: str
    lines: list[OrderLine]
    status: str = PENDING
    reason: str | None = None
    idempotency_key: str | None = None
    synthetic: bool = False  # a synthetic transaction's order (a probe's): business figures leave it out
    events: list[Any] = field(default_factory=list)

    def aggregate_id(self) -> str:
        return self.id

    @property
    def total_cents(self) -> int:
        return sum(line.quantity * line.unit_price_cents for line in self.lines)

    @classmethod
    def place(cls, user_id: str, lines: list[OrderLine], idempotency_key: str | None = None, *,
              synthetic: bool = False) -> "Order":
        if not lines:
            raise InvalidOrder("items", "an order needs at least one item")
        for i, line in enumerate(lines):
            if line.quantity <= 0:
                raise InvalidOrder(f"items[{i}].quantity", "must be greater than 0")
        order = cls(str(uuid.uuid4()), user_id, lines, idempotency_key=idempotency_key, synthetic=synthetic)
        order.events.append(OrderPlaced(order.id, user_id, list(lines), Money(order.total_cents),
                                        synthetic))
        return order

    def confirm(self) -> None:
        if self.status == PENDING:
            self.status = CONFIRMED
            self.events.append(OrderConfirmed(self.id, self.user_id, list(self.lines),
                                              self.total_cents))

    def cancel(self) -> None:
        """Only a confirmed order is cancelled: its stock is then released by the catalog (the compensation).
        A pending one is still being decided; cancelling it would race the reservation."""
        if self.status == CANCELLED:
            return
        if self.status != CONFIRMED:
            raise CannotCancel(f"an order that is {self.status} cannot be cancelled")
        self.status = CANCELLED
        self.events.append(OrderCancelled(self.id, self.user_id))

    def reject(self, reason: str) -> None:
        if self.status == PENDING:
            self.status, self.reason = REJECTED, reason
            self.events.append(OrderRejected(self.id, self.user_id, reason))
