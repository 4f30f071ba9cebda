"""Booting a test topology: every process of `make up`, on free ports, with its own var dir and broker namespace
(conftest.py's session stacks, and test modules that need a stack of their own, e.g. with a broker user per
program)."""

from __future__ import annotations

import shutil
import uuid
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import pytest

from msa_cli.namespace import drop_namespace
from msa_cli.runner import Topology
from msa_cli.spec import DEMO_ENCRYPT_KEY, Ports, Program, default_spec, repo_root
from otlp import OtlpReceiver
from support import ADMIN_TOKEN, Stack


@contextmanager
def booted(tmp_path_factory: pytest.TempPathFactory, amqp_url: str, *, databases: dict[str, str] | None = None,
           otlp: OtlpReceiver | None = None, queue_type: str = "classic", namespace: str | None = None,
           program_env: Callable[[Program], dict[str, str]] | None = None, ports: Ports | None = None
           ) -> Iterator[Stack]:
    """A topology booted for tests; `program_env(program)`: environment of that program's own (its broker user)."""
    namespace = namespace or f"test-{uuid.uuid4().hex[:8]}."
    ports = ports or Ports.free()
    # A copy of config-repo, so tests can change configuration live without touching the checkout.
    config_repo = tmp_path_factory.mktemp("config") / "config-repo"
    shutil.copytree(repo_root() / "config-repo", config_repo)
    # The synthetic probe is off in test stacks: its orders, stock movements and log lines would show up in tests
    # that count them. tests/test_probe.py switches it on for itself. A YAML document of its own (`---`): the
    # config server merges documents key by key, so probe.yml's other settings (the password) stay in force.
    with (config_repo / "probe.yml").open("a") as probe_yml:
        probe_yml.write("\n---\nprobe: {enabled: false}\n")
    if queue_type != "classic":  # every service's queues of that type (a cluster's setting, deploy/k8s)
        with (config_repo / "application.yml").open("a") as application_yml:
            application_yml.write(f"\n---\nevents: {{queue_type: {queue_type}}}\n")
    extra_env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url} if otlp else None
    spec = default_spec(ports, var_dir=tmp_path_factory.mktemp("var"), namespace=namespace, config_repo=config_repo,
                        amqp_url=amqp_url, databases=databases, extra_env=extra_env)
    if program_env is not None:
        spec = replace(spec, programs=tuple(replace(p, env={**p.env, **program_env(p)}) for p in spec.programs))
    topology = Topology(spec)
    took = topology.up(timeout=60)
    print(f"\ntopology up in {took:.1f} s on gateway port {ports.gateway}"
          f"{' (PostgreSQL, OTLP)' if databases else ''}")
    try:
        yield Stack(topology, ports, namespace, config_repo, backend="postgresql" if databases else "sqlite",
                    otlp=otlp, databases=databases)
    finally:
        topology.down()
        drop_namespace(spec.amqp_url, namespace)
        leaked = [str(p) for p in Path(spec.var_dir, "log").glob("*.log")
                  if any(secret in p.read_text(errors="replace") for secret in (ADMIN_TOKEN, DEMO_ENCRYPT_KEY))]
        assert not leaked, f"a secret appears in {leaked}"
