"""What the black-box tests share: the running stack, and a user of the public API (through the gateway only)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from msa_cli.runner import Topology
from msa_cli.spec import DEMO_ADMIN_TOKEN, Ports


# config-repo's admin.token is `{cipher}…`; with local mode's demo ENCRYPT_KEY it decrypts to this.
ADMIN_TOKEN = DEMO_ADMIN_TOKEN


@dataclass
class Stack:
    topology: Topology
    ports: Ports
    namespace: str
    config_repo: Path
    backend: str = "sqlite"  # the services' databases: "sqlite" (files under var/) or "postgresql"
    otlp: Any = None  # an otlp.OtlpReceiver when every program exports its spans over OTLP
    databases: dict[str, str] | None = None  # per service, its DATABASE_URL (PostgreSQL); None: SQLite files

    def admin(self, program: str, path: str = "/admin/config") -> dict[str, Any]:
        r = httpx.get(self.topology.url(program) + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                      timeout=5)
        r.raise_for_status()
        return r.json()

    @property
    def config_server(self) -> str:
        return f"http://127.0.0.1:{self.ports.config_server}"

    @property
    def instances(self) -> list[str]:
        """Every program that loads its settings from the config server."""
        return [p.name for p in self.topology.spec.programs if p.registers]

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.ports.gateway}"

    @property
    def var_dir(self) -> Path:
        return self.topology.var_dir

    def spans(self, trace_id: str) -> list[dict[str, Any]]:
        """Every span of one trace that has arrived so far: from the OTLP receiver, or from var/traces."""
        if self.otlp is not None:
            return self.otlp.trace(trace_id)
        out = []
        for path in (self.var_dir / "traces").glob("*.jsonl"):
            for line in path.read_text().splitlines():
                span = json.loads(line)
                if span["context"]["trace_id"] == f"0x{trace_id}":
                    out.append(span)
        return out


BACKENDS = ["sqlite", "postgresql"]


def stack_on(request: pytest.FixtureRequest) -> Stack:
    """For a module whose every test runs on both backends, its own `stack` fixture:

        @pytest.fixture(params=BACKENDS)
        def stack(request): return stack_on(request)

    (the PostgreSQL stack also exports every span over OTLP)."""
    return request.getfixturevalue({"sqlite": "sqlite_stack", "postgresql": "postgres_stack",
                                    "quorum": "quorum_stack"}[request.param])


class Api:
    """A user of the public API, through the gateway only."""

    def __init__(self, base: str) -> None:
        self.http = httpx.Client(base_url=base, timeout=10)
        self.token = ""

    def sign_up_and_log_in(self) -> "Api":
        username, password = f"u{uuid.uuid4().hex[:10]}", "s3cret-Passw0rd"
        r = self.http.post("/api/users", json={"username": username, "password": password})
        assert r.status_code == 201, r.text
        r = self.http.post("/api/auth/token", data={"username": username, "password": password})
        assert r.status_code == 200, r.text
        self.token = r.json()["access_token"]
        return self

    def log_in_as_admin(self) -> "Api":
        """The `admin` user (config-repo/user.yml `admins`): its token carries the admin role."""
        r = self.http.post("/api/users", json={"username": "admin", "password": "admin-Passw0rd"})
        assert r.status_code in (201, 409), r.text
        r = self.http.post("/api/auth/token", data={"username": "admin", "password": "admin-Passw0rd"})
        assert r.status_code == 200, r.text
        self.token = r.json()["access_token"]
        return self

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def products(self) -> dict[str, dict[str, Any]]:
        r = self.http.get("/api/catalog/products")
        assert r.status_code == 200, r.text
        return {p["sku"]: p for p in r.json()}

    def place(self, items: list[dict[str, Any]], **headers: str) -> httpx.Response:
        return self.http.post("/api/orders", json={"items": items}, headers={**self.auth, **headers})

    def orders(self) -> list[dict[str, Any]]:
        r = self.http.get("/api/orders", headers=self.auth)
        assert r.status_code == 200, r.text
        return r.json()

    def wait_final(self, order_id: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            r = self.http.get(f"/api/orders/{order_id}", headers=self.auth)
            assert r.status_code == 200, r.text
            order = r.json()
            if order["status"] != "PENDING" or time.monotonic() > deadline:
                return order
            time.sleep(0.05)


# ---- the workshop's twins: run `msa` as a page says, and check that `msa chaos heal`'s promise holds --------------

def msa(stack: Stack, *args: str, ok: bool = True) -> str:
    """Run an `msa` command (`msa("chaos", "stop", "discovery")`) against the test stack, as a workshop page runs
    it against `make up`'s; return what it printed. `ok`: assert it exited 0."""
    from typer.testing import CliRunner

    from msa_cli import app as app_module
    from msa_cli import context

    spec = stack.topology.spec
    saved = context.build_topology
    context.build_topology = lambda: Topology(spec)
    try:
        result = CliRunner().invoke(app_module.app, list(args))
    finally:
        context.build_topology = saved
    if ok:
        assert result.exit_code == 0, f"msa {' '.join(args)} exited {result.exit_code}: {result.output}"
    return result.output


def assert_healed(stack: Stack, timeout: float = 30.0) -> None:
    """What `msa chaos heal` promises: discovery and the config server up; every expected instance passing (no more,
    no fewer) and ready (`GET /ready`: database, broker, config); no fault in force on any instance
    (`GET /admin/faults` empty; the gateway has neither); the fault proxy's `rabbitmq` link enabled with no toxics;
    and the config server's refresh bus publishing again (a refresh addressed to no one is accepted)."""
    import asyncio

    from msa_faultproxy.client import FaultProxyClient

    topo = stack.topology
    for name in ("discovery", "config-server"):
        r = httpx.get(topo.url(name) + "/health", timeout=5)
        assert r.status_code == 200, f"{name} is not up: {r.status_code}"
    for service, count in topo.spec.expected.items():
        topo.wait_passing(service, count, timeout=timeout)
    for program in stack.instances:
        r = httpx.get(topo.url(program) + "/admin/faults", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                      timeout=5)
        if r.status_code == 404:
            continue  # no fault API here (the gateway)
        assert r.status_code == 200 and r.json()["faults"] == [], f"{program}: faults in force: {r.text}"
    deadline = time.monotonic() + timeout
    for program in stack.instances:
        while (status := _status(topo.url(program) + "/ready")) not in (200, 404):
            assert time.monotonic() < deadline, f"{program} is not ready: GET /ready → {status}"
            time.sleep(0.1)
    while (status := _status(f"{stack.config_server}/actuator/busrefresh/nobody-at-all", "POST")) != 204:
        assert time.monotonic() < deadline, f"the config server's refresh bus does not publish: {status}"
        time.sleep(0.2)

    async def link() -> dict[str, Any]:
        async with FaultProxyClient(topo.spec.env["FAULTPROXY_URL"]) as proxy:
            return await proxy.proxy("rabbitmq")

    rabbitmq = asyncio.run(link())
    assert rabbitmq["enabled"] and rabbitmq["toxics"] == [], f"the broker link is not healed: {rabbitmq}"


def _status(url: str, method: str = "GET") -> int:
    try:
        return httpx.request(method, url, timeout=5).status_code
    except httpx.HTTPError:
        return 0


def metric(stack: Stack, program: str, name: str, default: float | None = None, **labels: str) -> float:
    """A sample of one program's /metrics as Prometheus would read it (prometheus_client's parser): the sum of the
    samples named `name` whose labels include `labels` (attempts carry the picked instance too, say). Fails when no
    sample matches, unless a `default` is given (a counter read before its first event): a series that is gone
    reads as a failure, not as a 0 that may pass."""
    r = httpx.get(stack.topology.url(program) + "/metrics", timeout=5)
    r.raise_for_status()
    found = [s.value for family in text_string_to_metric_families(r.text) for s in family.samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    if not found and default is not None:
        return default
    assert found, f"{program}'s /metrics has no {name}{labels or ''}"
    return sum(found)
