"""Products, stock and reservations: plain Python, no framework."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .events import Line, Shortage, StockRejected, StockReleased, StockReserved


@dataclass
class Product:
    sku: str
    name: str
    price_cents: int
    stock: int


class ReservationStatus(StrEnum):
    """NEW → RESERVED | REJECTED; RESERVED → RELEASED (the order was cancelled: the compensation)."""

    NEW = "NEW"
    RESERVED = "RESERVED"
    REJECTED = "REJECTED"
    RELEASED = "RELEASED"


@dataclass
class Reservation:
    """The stock held for one order. Either every line is reserved or none is: no partial orders."""

    order_id: str
    lines: list[Line]
    status: ReservationStatus = ReservationStatus.NEW
    events: list[Any] = field(default_factory=list)

    def aggregate_id(self) -> str:
        return self.order_id

    def reserve_from(self, products: dict[str, Product]) -> None:
        shortages: list[Shortage] = []
        for line in self.lines:
            product = products.get(line.sku)
            available = product.stock if product else 0
            if product is None or line.quantity <= 0 or available < line.quantity:
                shortages.append(Shortage(line.sku, line.quantity, available))
        if shortages:
            self.status = ReservationStatus.REJECTED
            unknown = [s.sku for s in shortages if s.sku not in products]
            reason = f"unknown product(s) {unknown}" if unknown else "insufficient stock"
            self.events.append(StockRejected(self.order_id, reason, shortages))
            return
        for line in self.lines:
            products[line.sku].stock -= line.quantity
        self.status = ReservationStatus.RESERVED
        self.events.append(StockReserved(self.order_id, list(self.lines)))

    def release_to(self, products: dict[str, Product]) -> None:
        """Compensation for a cancelled order: give back exactly what was taken, once."""
        if self.status != ReservationStatus.RESERVED:
            return
        for line in self.lines:
            if line.sku in products:
                products[line.sku].stock += line.quantity
        self.status = ReservationStatus.RELEASED
        self.events.append(StockReleased(self.order_id, list(self.lines)))
