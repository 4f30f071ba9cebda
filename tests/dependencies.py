"""Where the test suite's servers come from: RabbitMQ and PostgreSQL, each from one of two sources.

1. **local** — a server that already answers at the configured address (`AMQP_URL`, `MSA_TEST_POSTGRES_URL`; by
   default this machine's RabbitMQ at 127.0.0.1:5672 and PostgreSQL at 127.0.0.1:5432), as in CI here;
2. **testcontainers** — when nothing answers there and a Docker engine does: a throwaway container started for the
   session (testcontainers-python), so `make test` runs on a laptop that has only Docker.

Neither: the session stops at once, saying how to get one. The choice is logged (the terminal shows which source
each dependency came from). `choose()` is the whole decision, unit-tested in tests/test_dependencies.py; the
fixtures in the repository's conftest.py apply it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from typing import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger("msa.tests.dependencies")

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
RABBITMQ_IMAGE = "rabbitmq:4.1.4-management"  # the compose stack's, so both sources run the same broker
POSTGRES_IMAGE = "postgres:17.6-bookworm"


class DependencyMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class Choice:
    dependency: str
    source: str  # "local" or "testcontainers"
    why: str


def choose(dependency: str, address: str, *, answers: Callable[[], bool], engine: Callable[[], bool]) -> Choice:
    """The local server when it answers; else testcontainers when a Docker engine answers; else a clear stop."""
    if answers():
        return Choice(dependency, "local", f"{address} answers")
    if engine():
        return Choice(dependency, "testcontainers", f"nothing answers at {address}; a Docker engine does")
    raise DependencyMissing(
        f"{dependency}: nothing answers at {address}, and there is no Docker engine for testcontainers to start one. "
        f"Start a local {dependency} (see the README), or Docker.")


def tcp_answers(url: str, default_port: int, timeout: float = 2.0) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=timeout).close()
        return True
    except OSError:
        return False


def docker_engine_answers() -> bool:
    """A Docker engine that answers a ping (the `docker` client alone is not enough)."""
    try:
        import docker  # testcontainers' own client library

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no socket, no permission, no daemon: all the same answer
        return False


def masked(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
    return url


@contextlib.contextmanager
def _from_either(dependency: str, url: str, default_port: int, report: Callable[[str], None],
                 container: Callable[[], contextlib.AbstractContextManager[str]]) -> Iterator[str]:
    choice = choose(dependency, masked(url), answers=lambda: tcp_answers(url, default_port),
                    engine=docker_engine_answers)
    report(f"{dependency}: {choice.source} ({choice.why})")
    if choice.source == "local":
        yield url
    else:
        with container() as started:
            yield started


@contextlib.contextmanager
def _rabbitmq_container() -> Iterator[str]:
    from testcontainers.community.rabbitmq import RabbitMqContainer

    with RabbitMqContainer(RABBITMQ_IMAGE) as container:
        host, port = container.get_container_host_ip(), container.get_exposed_port(container.port)
        yield f"amqp://{container.username}:{container.password}@{host}:{port}/"


@contextlib.contextmanager
def _postgres_container() -> Iterator[str]:
    from testcontainers.community.postgres import PostgresContainer

    with PostgresContainer(POSTGRES_IMAGE, driver=None) as container:
        yield container.get_connection_url()


def rabbitmq(report: Callable[[str], None]) -> contextlib.AbstractContextManager[str]:
    """The AMQP URL of a broker for the session."""
    return _from_either("RabbitMQ", os.environ.get("AMQP_URL") or DEFAULT_AMQP_URL, 5672, report,
                        _rabbitmq_container)


def postgres(report: Callable[[str], None]) -> contextlib.AbstractContextManager[str]:
    """The URL of a PostgreSQL server's maintenance database, as a role that may create databases."""
    return _from_either("PostgreSQL", os.environ.get("MSA_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL, 5432, report,
                        _postgres_container)


async def create_database(server_url: str, name: str) -> str:
    """A new, empty database on the server; returns the asyncpg URL the services use."""
    import asyncpg

    conn = await asyncpg.connect(_libpq(server_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(scheme="postgresql+asyncpg", path=f"/{name}"))


async def drop_database(server_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_libpq(server_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # FORCE: a crashed test's sessions
    finally:
        await conn.close()


def _libpq(url: str) -> str:
    return urlunsplit(urlsplit(url)._replace(scheme="postgresql"))
