"""Orders: plain Python, no framework."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .events import Money, OrderCancelled, OrderConfirmed, OrderLine, OrderPlaced, OrderRejected


class InvalidOrder(ValueError):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


class OrderStatus(StrEnum):
    """PENDING → CONFIRMED | REJECTED (the catalog's answer); CONFIRMED → CANCELLED (the customer)."""

    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"


class CannotCancel(Exception):
    pass


@dataclass
class Order:
    id: str
    user_id: str
    lines: list[OrderLine]
    status: OrderStatus = OrderStatus.PENDING
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
        if self.status == OrderStatus.PENDING:
            self.status = OrderStatus.CONFIRMED
            self.events.append(OrderConfirmed(self.id, self.user_id, list(self.lines),
                                              self.total_cents))

    def cancel(self) -> None:
        """Only a confirmed order is cancelled: its stock is then released by the catalog (the compensation).
        A pending one is still being decided; cancelling it would race the reservation."""
        if self.status == OrderStatus.CANCELLED:
            return
        if self.status != OrderStatus.CONFIRMED:
            raise CannotCancel(f"an order that is {self.status} cannot be cancelled")
        self.status = OrderStatus.CANCELLED
        self.events.append(OrderCancelled(self.id, self.user_id))

    def reject(self, reason: str) -> None:
        if self.status == OrderStatus.PENDING:
            self.status, self.reason = OrderStatus.REJECTED, reason
            self.events.append(OrderRejected(self.id, self.user_id, reason))
