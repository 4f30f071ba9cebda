"""The real topology for the whole session: every process of `make up`, on free ports, with its own var dir and
its own broker namespace, so it never collides with a sandbox a person is running on the same machine.

Two of them: `stack` as `make up` runs it (SQLite files, spans in var/traces), and `postgres_stack` as the compose
stack runs it (each service in a PostgreSQL database of its own, made for the session and dropped after; every span
exported over OTLP/HTTP, to a receiver in the test). Test modules that prove a promise on both backends ask for
for a `stack` of their own (support.stack_on)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Iterator

import pytest

import dependencies
from otlp import OtlpReceiver
from stacks import booted
from support import Api, Stack


@pytest.fixture(scope="session")
def sqlite_stack(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> Iterator[Stack]:
    with booted(tmp_path_factory, amqp_url) as s:
        yield s


@pytest.fixture(scope="session")
def quorum_stack(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> Iterator[Stack]:
    """As `stack`, with every queue a quorum queue (events.queue_type), declared on the same broker."""
    with booted(tmp_path_factory, amqp_url, queue_type="quorum") as s:
        yield s


@pytest.fixture(scope="session")
def stack(sqlite_stack: Stack) -> Stack:
    return sqlite_stack


@pytest.fixture(scope="session")
def postgres_stack(tmp_path_factory: pytest.TempPathFactory, amqp_url: str, postgres_server: str) -> Iterator[Stack]:
    run = uuid.uuid4().hex[:8]
    names = {service: f"msa_test_{service}_{run}" for service in ("user", "catalog", "order")}
    databases = {service: asyncio.run(dependencies.create_database(postgres_server, name))
                 for service, name in names.items()}
    try:
        with OtlpReceiver() as otlp, booted(tmp_path_factory, amqp_url, databases=databases, otlp=otlp) as s:
            yield s
    finally:
        for name in names.values():
            asyncio.run(dependencies.drop_database(postgres_server, name))


@pytest.fixture
def api(stack: Stack) -> Api:
    return Api(stack.gateway).sign_up_and_log_in()
