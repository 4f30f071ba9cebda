"""Preflight: refuse, with a clear message and having started nothing, when starting could only fail."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from msa_cli import BrokerUnreachable, PortsInUse, Topology
from msa_cli.preflight import broker_problem, port_in_use

pytestmark = pytest.mark.timeout(30)


def assert_nothing_started(topo: Topology) -> None:
    assert not topo.is_running()
    assert not topo.pidfile.exists()
    assert not topo.conf_path.exists()


def test_refuses_a_port_that_is_taken(tmp_path: Path, fake_spec):
    topo = Topology(fake_spec(tmp_path / "var"))
    taken = topo.spec.program("catalog-2").port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        assert port_in_use(taken)
        with pytest.raises(PortsInUse) as info:
            topo.up(timeout=5)
    assert info.value.ports == [taken]
    assert f"{taken} (catalog-2)" in str(info.value)
    assert_nothing_started(topo)


def test_refuses_an_unreachable_broker_without_printing_its_password(tmp_path: Path, fake_spec):
    topo = Topology(fake_spec(tmp_path / "var", require_broker=True, amqp_url="amqp://guest:s3cret@127.0.0.1:1/"))
    with pytest.raises(BrokerUnreachable) as info:
        topo.up(timeout=5)
    message = str(info.value)
    assert "amqp://guest:***@127.0.0.1:1/" in message
    assert "s3cret" not in message
    assert "rabbitmq-server -detached" in message and "docker run" in message and "AMQP_URL" in message
    assert_nothing_started(topo)


def test_a_reachable_broker_passes():
    url = "amqp://guest:guest@127.0.0.1:5672/"
    # The suite runs against this broker anyway (`make test` needs it): its absence is a failure, not a skip.
    assert port_in_use(5672) is not False, "no RabbitMQ on 127.0.0.1:5672: start it (rabbitmq-server -detached)"
    assert broker_problem(url) is None
