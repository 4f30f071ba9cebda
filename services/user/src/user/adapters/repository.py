from __future__ import annotations

import json
import time

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from msa_kit.outbox import SqlUnitOfWork

from ..domain.model import User

metadata = sa.MetaData()

users = sa.Table(
    "users", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("username", sa.String(32), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(200), nullable=False),
)


order_history = sa.Table(
    "order_history", metadata,
    sa.Column("order_id", sa.String(36), primary_key=True),
    sa.Column("user_id", sa.String(36), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("lines", sa.Text, nullable=False),
    sa.Column("total_cents", sa.Integer, nullable=False),
    sa.Column("confirmed_at", sa.Float, nullable=False),
)


class SqlOrderHistory:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def add(self, order_id: str, user_id: str, lines: list[dict[str, object]], total_cents: int) -> None:
        await self.conn.execute(order_history.insert().values(
            order_id=order_id, user_id=user_id, status="CONFIRMED", lines=json.dumps(lines),
            total_cents=total_cents, confirmed_at=time.time()))

    async def mark_cancelled(self, order_id: str) -> None:
        await self.conn.execute(order_history.update().where(order_history.c.order_id == order_id)
                                .values(status="CANCELLED"))

    async def for_user(self, user_id: str) -> list[dict[str, object]]:
        rows = (await self.conn.execute(sa.select(order_history).where(order_history.c.user_id == user_id)
                                        .order_by(order_history.c.confirmed_at.desc()).limit(100))).all()
        return [{"order_id": r.order_id, "status": r.status, "lines": json.loads(r.lines),
                 "total_cents": r.total_cents, "confirmed_at": r.confirmed_at} for r in rows]


class SqlUserRepository:
    def __init__(self, conn: AsyncConnection, seen: list) -> None:
        self.conn, self.seen = conn, seen

    async def add(self, user: User) -> None:
        await self.conn.execute(users.insert().values(id=user.id, username=user.username,
                                                      password_hash=user.password_hash))
        self.seen.append(user)

    async def _one(self, where: sa.ColumnElement[bool]) -> User | None:
        row = (await self.conn.execute(sa.select(users).where(where))).first()
        return User(row.id, row.username, row.password_hash) if row else None

    async def get(self, user_id: str) -> User | None:
        return await self._one(users.c.id == user_id)

    async def by_username(self, username: str) -> User | None:
        return await self._one(users.c.username == username)


class SqlUserUnitOfWork(SqlUnitOfWork):
    async def __aenter__(self) -> "SqlUserUnitOfWork":
        await super().__aenter__()
        self.users = SqlUserRepository(self.conn, self.seen)
        self.history = SqlOrderHistory(self.conn)
        return self
