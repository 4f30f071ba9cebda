"""One real topology for the whole session: every process of `make up`, on free ports, with its own var dir and
its own broker namespace, so it never collides with a sandbox a person is running on the same machine."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from msa_cli.runner import Topology
from msa_cli.spec import DEMO_ENCRYPT_KEY, Ports, default_spec, repo_root
from msa_cli.namespace import drop_namespace
from support import ADMIN_TOKEN, Api, Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    namespace = f"test-{uuid.uuid4().hex[:8]}."
    ports = Ports.free()
    # A copy of config-repo, so tests can change configuration live without touching the checkout.
    config_repo = tmp_path_factory.mktemp("config") / "config-repo"
    shutil.copytree(repo_root() / "config-repo", config_repo)
    spec = default_spec(ports, var_dir=tmp_path_factory.mktemp("var"), namespace=namespace, config_repo=config_repo)
    topology = Topology(spec)
    took = topology.up(timeout=60)
    print(f"\ntopology up in {took:.1f} s on gateway port {ports.gateway}")
    try:
        yield Stack(topology, ports, namespace, config_repo)
    finally:
        topology.down()
        drop_namespace(spec.amqp_url, namespace)
        leaked = [str(p) for p in Path(spec.var_dir, "log").glob("*.log")
                  if any(secret in p.read_text(errors="replace") for secret in (ADMIN_TOKEN, DEMO_ENCRYPT_KEY))]
        assert not leaked, f"a secret appears in {leaked}"


@pytest.fixture
def api(stack: Stack) -> Api:
    return Api(stack.gateway).sign_up_and_log_in()
