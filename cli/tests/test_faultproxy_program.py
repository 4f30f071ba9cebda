"""The real fault proxy as a supervised program, the way default_spec adds it: it does not register in discovery,
so the runner counts it ready on its /health answer; it forwards, can be cut, and stops with the rest."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path

import httpx
import pytest

from msa_cli import Program, Topology, free_ports
from msa_cli.preflight import port_in_use
from msa_faultproxy.client import FaultProxyClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_fault_proxy_program_in_a_topology(tmp_path: Path, fake_spec):
    base = fake_spec(tmp_path / "var", catalog=1)
    api_port, listen_port = free_ports(2)
    upstream = f"127.0.0.1:{base.program('discovery').port}"
    proxies = [{"name": "disc", "listen": f"127.0.0.1:{listen_port}", "upstream": upstream}]
    proxy_program = Program("faultproxy", (sys.executable, "-m", "msa_faultproxy"), api_port, priority=5,
                            env={"FAULTPROXY_PROXIES": json.dumps(proxies)}, docs=None)
    spec = dataclasses.replace(base, programs=(proxy_program, *base.programs))

    topo = Topology(spec)
    topo.up(timeout=20)
    try:
        row = next(r for r in topo.status() if r.name == "faultproxy")
        assert row.healthy and row.state == "RUNNING" and row.passing is None  # not a discovery citizen

        through = f"http://127.0.0.1:{listen_port}/health"
        assert httpx.get(through, trust_env=False).status_code == 200  # discovery, reached through the proxy

        async def cut_and_heal() -> None:
            async with FaultProxyClient(f"http://127.0.0.1:{api_port}") as fp:
                async with fp.disabled("disc"):
                    with pytest.raises(httpx.TransportError):
                        httpx.get(through, trust_env=False, timeout=2)

        asyncio.run(cut_and_heal())
        assert httpx.get(through, trust_env=False).status_code == 200
    finally:
        topo.down()
    assert not port_in_use(api_port) and not port_in_use(listen_port)
