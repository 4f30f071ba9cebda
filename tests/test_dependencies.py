"""Where `make test` gets RabbitMQ and PostgreSQL: a server that answers, else testcontainers on a Docker engine,
else a clear stop (tests/dependencies.py). The decision alone, with both probes faked."""

from __future__ import annotations

import pytest

from dependencies import Choice, DependencyMissing, choose, masked, tcp_answers


def never() -> bool:
    raise AssertionError("not asked: the local server answered")


def test_a_local_server_that_answers_is_used_and_docker_is_not_even_asked():
    assert choose("RabbitMQ", "127.0.0.1:5672", answers=lambda: True, engine=never) == Choice(
        "RabbitMQ", "local", "127.0.0.1:5672 answers")


def test_nothing_local_and_a_docker_engine_means_testcontainers():
    choice = choose("PostgreSQL", "127.0.0.1:5432", answers=lambda: False, engine=lambda: True)
    assert choice.source == "testcontainers" and "nothing answers at 127.0.0.1:5432" in choice.why


def test_neither_stops_with_what_to_do():
    with pytest.raises(DependencyMissing, match="nothing answers at 127.0.0.1:5672.*no Docker engine"):
        choose("RabbitMQ", "127.0.0.1:5672", answers=lambda: False, engine=lambda: False)


def test_the_probe_is_a_real_connection_and_the_log_never_shows_a_password():
    assert not tcp_answers("amqp://guest:guest@127.0.0.1:1/", 5672, timeout=0.5)  # port 1: nothing listens
    assert masked("amqp://guest:s3cret@127.0.0.1:5672/") == "amqp://guest:***@127.0.0.1:5672/"
    assert masked("postgresql://postgres@127.0.0.1:5432/postgres") == "postgresql://postgres@127.0.0.1:5432/postgres"


def test_the_session_here_uses_this_machines_servers(amqp_url: str, postgres_server: str):
    # This machine runs both (no Docker engine): the fixtures took the local source.
    assert tcp_answers(amqp_url, 5672) and tcp_answers(postgres_server, 5432)
