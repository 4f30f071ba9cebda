"""The catalog's tables and the SQL repositories behind the unit-of-work ports."""

from __future__ import annotations

import json
from typing import Iterable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from msa_kit.outbox import SqlUnitOfWork

from ..domain.events import Line
from ..domain.model import Product, Reservation, ReservationStatus

metadata = sa.MetaData()

products = sa.Table(
    "products", metadata,
    sa.Column("sku", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("price_cents", sa.Integer, nullable=False),
    sa.Column("stock", sa.Integer, nullable=False),
    sa.CheckConstraint("stock >= 0", name="stock_not_negative"),
)

reservations = sa.Table(
    "reservations", metadata,
    sa.Column("order_id", sa.String(36), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("lines", sa.Text, nullable=False),
)


def _product(row: sa.Row) -> Product:
    return Product(row.sku, row.name, row.price_cents, row.stock)


class SqlProductRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def list(self, skus: Iterable[str] | None = None) -> list[Product]:
        q = sa.select(products).order_by(products.c.sku)
        if skus is not None:
            q = q.where(products.c.sku.in_(list(skus)))
        return [_product(r) for r in (await self.conn.execute(q)).all()]

    async def get_many(self, skus: Iterable[str]) -> dict[str, Product]:
        return {p.sku: p for p in await self.list(skus)}

    async def save_stock(self, items: Iterable[Product]) -> None:
        for p in items:
            await self.conn.execute(products.update().where(products.c.sku == p.sku).values(stock=p.stock))

    async def add_missing(self, items: Iterable[Product]) -> int:
        items = list(items)
        existing = set((await self.conn.execute(
            sa.select(products.c.sku).where(products.c.sku.in_([p.sku for p in items])))).scalars())
        new = [vars(p) for p in items if p.sku not in existing]
        if new:
            await self.conn.execute(products.insert(), new)
        return len(new)


    async def put(self, p: Product) -> None:
        updated = await self.conn.execute(products.update().where(products.c.sku == p.sku).values(
            name=p.name, price_cents=p.price_cents, stock=p.stock))
        if updated.rowcount == 0:
            await self.conn.execute(products.insert().values(**vars(p)))


class SqlReservationRepository:
    def __init__(self, conn: AsyncConnection, seen: list) -> None:
        self.conn, self.seen = conn, seen

    async def get(self, order_id: str) -> Reservation | None:
        row = (await self.conn.execute(sa.select(reservations).where(reservations.c.order_id == order_id))).first()
        if row is None:
            return None
        r = Reservation(row.order_id, [Line(**line) for line in json.loads(row.lines)],
                        ReservationStatus(row.status))
        self.seen.append(r)
        return r

    async def add(self, r: Reservation) -> None:
        await self.conn.execute(reservations.insert().values(
            order_id=r.order_id, status=r.status, lines=json.dumps([vars(line) for line in r.lines])))
        self.seen.append(r)

    async def save(self, r: Reservation) -> None:
        await self.conn.execute(reservations.update().where(reservations.c.order_id == r.order_id)
                                .values(status=r.status))


class SqlCatalogUnitOfWork(SqlUnitOfWork):
    async def __aenter__(self) -> "SqlCatalogUnitOfWork":
        await super().__aenter__()
        self.products = SqlProductRepository(self.conn)
        self.reservations = SqlReservationRepository(self.conn, self.seen)
        return self
