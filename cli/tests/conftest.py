"""A small fake topology for the runner: a fake discovery, a "config server" and N catalog instances, all stdlib
http.server scripts (fakes/), on free ports, under a temporary var dir. The real servers are not needed."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from msa_cli import Program, TopologySpec, free_ports

FAKES = Path(__file__).parent / "fakes"
FakeSpec = Callable[..., TopologySpec]


def make_fake_spec(
    var_dir: Path,
    *,
    catalog: int = 2,
    start_delay: float = 0.0,
    extra: tuple[Program, ...] = (),
    require_broker: bool = False,
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/",
) -> TopologySpec:
    disc_port, config_port, *catalog_ports = free_ports(2 + catalog)
    fake = (sys.executable, str(FAKES / "fake_service.py"))
    registered = ",".join(map(str, catalog_ports + [p.port for p in extra if "catalog" in p.registers]))
    programs = [
        Program(
            "discovery",
            (sys.executable, str(FAKES / "fake_discovery.py")),
            disc_port,
            env={"FAKE_SERVICES": f"catalog={registered}"},
            priority=10,
            docs=None,
        ),
        Program("config-server", fake, config_port, priority=20),
        *(
            Program(f"catalog-{i}", fake, port, registers=("catalog",), env={"FAKE_START_DELAY": str(start_delay)})
            for i, port in enumerate(catalog_ports, start=1)
        ),
        *extra,
    ]
    return TopologySpec(
        programs=tuple(programs),
        var_dir=var_dir,
        directory=var_dir,
        env={"MSA_VAR_DIR": str(var_dir), "PYTHONUNBUFFERED": "1"},
        amqp_url=amqp_url,
        require_broker=require_broker,
    )


@pytest.fixture(scope="session")
def fake_spec() -> FakeSpec:
    return make_fake_spec
