"""Fixtures for the contract suite: a real `python -m msa_discovery` on a free port, or a real Consul.

Set CONSUL_HTTP_ADDR (e.g. 127.0.0.1:8500) to run the same tests against Consul instead of ours.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import consul
import consul.aio
import httpx
import pytest


@dataclass(frozen=True)
class Agent:
    host: str
    port: int
    real_consul: bool  # True when the suite runs against a real Consul (CONSUL_HTTP_ADDR)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    addr = os.environ.get("CONSUL_HTTP_ADDR")
    if addr:
        u = urllib.parse.urlparse(addr if "//" in addr else f"//{addr}")
        yield Agent(u.hostname or "127.0.0.1", u.port or 8500, real_consul=True)
        return
    port = _free_port()
    work = Path(tmp_path_factory.mktemp("discovery"))
    log_path = work / "discovery.log"
    # Its own data dir, so a registry saved by anything else (an MSA_VAR_DIR in the environment) is never loaded.
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "DATA_DIR": str(work / "data")}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "msa_discovery"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"msa_discovery did not start:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield Agent("127.0.0.1", port, real_consul=False)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def c(agent: Agent) -> consul.Consul:
    """The stock synchronous py-consul client."""
    return consul.Consul(host=agent.host, port=agent.port)


@pytest.fixture
async def ac(agent: Agent) -> AsyncIterator[consul.aio.Consul]:
    """The stock asyncio py-consul client (built inside the running loop, as it must be)."""
    client = consul.aio.Consul(host=agent.host, port=agent.port)
    yield client
    await client.close()


@pytest.fixture
def name() -> str:
    """A service name no other test (or earlier run against a shared Consul) uses."""
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def cleanup(c: consul.Consul, name: str) -> Iterator[list[str]]:
    """Service ids to deregister after the test (and KV under the test's name), so a shared Consul stays clean."""
    ids: list[str] = []
    yield ids
    for service_id in ids:
        c.agent.service.deregister(service_id)
    c.kv.delete(f"{name}/", recurse=True)


@pytest.fixture
def check_cleanup(c: consul.Consul) -> Iterator[list[str]]:
    """Ids of checks registered on their own (/v1/agent/check/register) to deregister after the test. A node-level
    check bears on every instance on the node, so one left critical on a shared Consul would fail other tests."""
    check_ids: list[str] = []
    yield check_ids
    for check_id in check_ids:
        c.agent.check.deregister(check_id)
