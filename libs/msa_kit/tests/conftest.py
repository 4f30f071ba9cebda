"""The kit's database tests run on both backends a service can be configured with: SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest

import dependencies
from msa_kit import sql
from msa_kit.runtime import Runtime

NewDatabase = Callable[[str], Awaitable[str]]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def new_database(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[NewDatabase]:
    """`await new_database("shared")` → the DATABASE_URL of a new, empty database on this test's backend (the same
    label twice is the same database: two instances of one service)."""
    made: dict[str, str] = {}
    server = request.getfixturevalue("postgres_server") if backend == "postgresql" else ""
    run = uuid.uuid4().hex[:8]

    async def make(label: str) -> str:
        if label not in made:
            made[label] = (f"sqlite+aiosqlite:///{tmp_path / f'{label}.db'}" if backend == "sqlite" else
                           await dependencies.create_database(server, f"msa_kit_test_{label}_{run}"))
        return made[label]

    yield make
    if backend == "postgresql":
        for label in made:
            await dependencies.drop_database(server, f"msa_kit_test_{label}_{run}")


def _engine_for(url: str) -> Any:
    rt = Runtime.for_service("test")
    rt.database_url = url
    return sql.database_engine(rt)


@pytest.fixture
def engine_for() -> Callable[[str], Any]:
    """The engine a service would build for DATABASE_URL=url (the kit's own: sql.database_engine)."""
    return _engine_for
