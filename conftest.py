"""Fixtures every suite of the repository shares: the servers the tests need, one fixture per dependency (each from
a local server or from testcontainers: tests/dependencies.py)."""

from __future__ import annotations

import os
import uuid
from typing import AsyncIterator, Awaitable, Callable, Iterator

import pytest

import dependencies

# pact-python reports usage to the Pact Foundation unless told not to: no test calls out of the machine.
os.environ.setdefault("PACT_DO_NOT_TRACK", "true")


def _reporter(config: pytest.Config) -> Callable[[str], None]:
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")

    def report(line: str) -> None:
        dependencies.log.warning(line)
        if terminal is not None and capture is not None:
            with capture.global_and_fixture_disabled():  # shown as it happens, not only when a test fails
                terminal.write_line(f"[dependencies] {line}")
    return report


@pytest.fixture(scope="session")
def amqp_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """RabbitMQ for the session; AMQP_URL is set to it, so programs the tests start find it too."""
    with dependencies.rabbitmq(_reporter(pytestconfig)) as url:
        saved = os.environ.get("AMQP_URL")
        os.environ["AMQP_URL"] = url
        try:
            yield url
        finally:
            if saved is None:
                os.environ.pop("AMQP_URL", None)
            else:
                os.environ["AMQP_URL"] = saved


@pytest.fixture(scope="session")
def postgres_server(pytestconfig: pytest.Config) -> Iterator[str]:
    """A PostgreSQL server for the session (its maintenance database's URL)."""
    with dependencies.postgres(_reporter(pytestconfig)) as url:
        yield url


@pytest.fixture
async def postgres_database(postgres_server: str) -> AsyncIterator[Callable[[str], Awaitable[str]]]:
    """Makes fresh databases (`await postgres_database("catalog")` → its asyncpg URL); drops them after the test."""
    made: list[str] = []

    async def make(label: str) -> str:
        name = f"msa_test_{label}_{uuid.uuid4().hex[:8]}"
        made.append(name)
        return await dependencies.create_database(postgres_server, name)

    yield make
    for name in made:
        await dependencies.drop_database(postgres_server, name)
