"""`msa up | status | down` end to end, over the fake topology; and their clear failures."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from msa_cli import Topology, app as app_module, context
from msa_cli.preflight import port_in_use

runner = CliRunner()


@pytest.fixture
def fake_topology(tmp_path: Path, fake_spec, monkeypatch) -> Topology:
    topo = Topology(fake_spec(tmp_path / "var"))
    monkeypatch.setattr(context, "build_topology", lambda: Topology(topo.spec))
    yield topo
    topo.down()


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_up_status_down(fake_topology: Topology):
    spec = fake_topology.spec
    result = runner.invoke(app_module.app, ["up", "--timeout", "15"])
    assert result.exit_code == 0, result.output
    assert spec.program("catalog-2").url in result.output
    assert "amqp://guest:***@127.0.0.1:5672/" in result.output
    assert "Up in" in result.output

    result = runner.invoke(app_module.app, ["up"])
    assert result.exit_code == 0 and "Already up" in result.output

    result = runner.invoke(app_module.app, ["status"])
    assert result.exit_code == 0, result.output
    for name in ("discovery", "config-server", "catalog-1", "catalog-2"):
        assert name in result.output
    assert "RUNNING" in result.output and "yes" in result.output

    result = runner.invoke(app_module.app, ["down"])
    assert result.exit_code == 0 and "Stopped" in result.output
    assert not [p.port for p in spec.programs if port_in_use(p.port)]

    result = runner.invoke(app_module.app, ["down"])
    assert result.exit_code == 0 and "Nothing was running" in result.output


def test_status_when_nothing_runs_says_so(fake_topology: Topology):
    result = runner.invoke(app_module.app, ["status"])
    assert result.exit_code == 1
    assert "Nothing is running" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_up_with_no_broker_fails_cleanly(tmp_path: Path, fake_spec, monkeypatch):
    spec = fake_spec(tmp_path / "var", require_broker=True, amqp_url="amqp://guest:s3cret@127.0.0.1:1/")
    monkeypatch.setattr(context, "build_topology", lambda: Topology(spec))
    result = runner.invoke(app_module.app, ["up"])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # a message, not a traceback
    assert "RabbitMQ is not reachable" in result.output and "s3cret" not in result.output
