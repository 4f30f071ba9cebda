"""Central configuration, live: the config server serves config-repo; a bus refresh re-configures every instance
without a restart; a bad value is refused; a start without the config server falls back to the last snapshot."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from msa_cli.spec import free_ports
from support import ADMIN_TOKEN, Api, Stack

pytestmark = pytest.mark.integration


@contextmanager
def edited(stack: Stack, filename: str, extra: str) -> Iterator[None]:
    """Append YAML to a config-repo file for the duration; afterwards restore it and refresh everyone again."""
    path = stack.config_repo / filename
    original = path.read_text()
    path.write_text(original + "\n" + extra)
    try:
        yield
    finally:
        path.write_text(original)
        refresh(stack)
        wait_for(lambda: all(stack.admin(p)["version"] == served_version(stack, p) for p in stack.instances),
                 what="every instance back on the restored configuration")


def served_version(stack: Stack, program: str) -> str:
    service = stack.topology.spec.program(program).registers[0]
    return httpx.get(f"{stack.config_server}/{service}/local").json()["version"]


def refresh(stack: Stack, destination: str = "") -> None:
    r = httpx.post(f"{stack.config_server}/actuator/busrefresh" + (f"/{destination}" if destination else ""))
    assert r.status_code == 204, r.text


def wait_for(predicate, *, timeout: float = 10.0, what: str = "") -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - started


def test_busrefresh_reconfigures_every_instance_live_within_2_s(stack: Stack, api: Api):
    before = {p: stack.admin(p) for p in stack.instances}
    pids = {p: stack.topology.pid(p) for p in stack.instances}
    new_route = "{id: catalog-v2, path: /api/v2/catalog, service: catalog, strip_prefix: 3, auth: public}"
    assert api.http.get("/api/v2/catalog/products").status_code == 404
    gateway_yml = (stack.config_repo / "gateway.yml").read_text()
    with edited(stack, "application.yml", "breaker: {fail_max: 7, reset_timeout_s: 4}\n"), \
            edited(stack, "gateway.yml", ""):
        (stack.config_repo / "gateway.yml").write_text(gateway_yml.replace("  routes:\n", f"  routes:\n    - {new_route}\n"))
        started = time.monotonic()
        refresh(stack)
        took = wait_for(lambda: all(stack.admin(p)["version"] != before[p]["version"] for p in stack.instances),
                        what="every instance to report the new version")
        print(f"every instance ({len(stack.instances)}) on the new version {took * 1000:.0f} ms after busrefresh")
        assert took < 2.0
        for p in stack.instances:
            doc = stack.admin(p)
            assert doc["settings"]["breaker"] == {"fail_max": 7, "reset_timeout_s": 4.0}, p
            assert doc["refreshes"] == before[p]["refreshes"] + 1 and doc["source"] == "config-server"
        # ... and behaves accordingly: the gateway routes the new path, with no restart anywhere.
        r = api.http.get("/api/v2/catalog/products")
        print(f"new gateway route live {(time.monotonic() - started) * 1000:.0f} ms after busrefresh")
        assert r.status_code == 200 and len(r.json()) >= 3
        assert {p: stack.topology.pid(p) for p in stack.instances} == pids


def test_a_refresh_addressed_to_one_service_reaches_only_it(stack: Stack):
    before = {p: stack.admin(p)["refreshes"] for p in stack.instances}
    with edited(stack, "catalog.yml", "features: {new_search: true}\n"):
        refresh(stack, "catalog")
        wait_for(lambda: all(stack.admin(p)["refreshes"] == before[p] + 1 for p in ("catalog-1", "catalog-2")),
                 what="both catalog instances to refresh")
        assert stack.admin("catalog-1")["settings"]["features"] == {"new_search": True}
        time.sleep(0.3)
        assert all(stack.admin(p)["refreshes"] == before[p] for p in stack.instances if not p.startswith("catalog"))


def test_an_invalid_value_is_refused_and_the_old_settings_stay(stack: Stack, api: Api):
    before = {p: stack.admin(p) for p in ("order-1", "order-2")}
    with edited(stack, "order.yml", "loadbalancing: {strategy: fastest-please}\n"):
        refresh(stack, "order")
        log = stack.topology.log_path("order-1")
        wait_for(lambda: "configuration refresh refused" in log.read_text(), what="order-1 to refuse the value")
        for p, doc in before.items():
            now = stack.admin(p)
            assert now["version"] == doc["version"] and now["settings"] == doc["settings"], p
        sku = sorted(api.products())[0]  # and orders still flow on the old settings
        r = api.place([{"sku": sku, "quantity": 1}])
        assert r.status_code == 201 and api.wait_final(r.json()["id"])["status"] == "CONFIRMED"


def test_cipher_values_round_trip_and_are_decrypted_before_serving(stack: Stack):
    secret = f"s-{uuid.uuid4().hex}"
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert httpx.post(f"{stack.config_server}/decrypt", content="x").status_code == 401  # protected
    cipher = httpx.post(f"{stack.config_server}/encrypt", content=secret, headers=admin).text
    assert secret not in cipher
    assert httpx.post(f"{stack.config_server}/decrypt", content=cipher, headers=admin).text == secret
    served = httpx.get(f"{stack.config_server}/order/local").json()
    values = {k: v for ps in served["propertySources"] for k, v in ps["source"].items()}
    assert values["admin.token"] == "sandbox-admin-token"  # config-repo holds only `{cipher}…`
    assert "{cipher}" in (stack.config_repo / "application.yml").read_text()
    assert stack.admin("order-1")["settings"]["admin"]["token"] == "**********"  # masked where shown


def _start_catalog_without_config_server(stack: Stack, var_dir: Path, **env_overrides: str
                                         ) -> tuple[subprocess.Popen, int]:
    dead_config, dead_registry, port = free_ports(3)
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "INSTANCE_ID": "catalog-offline",
           "CONFIG_SERVER_URL": f"http://127.0.0.1:{dead_config}", "CONSUL_HTTP_ADDR": f"127.0.0.1:{dead_registry}",
           "MSA_VAR_DIR": str(var_dir), "MSA_NAMESPACE": f"{stack.namespace}offline.",
           "AMQP_URL": stack.topology.spec.env["AMQP_URL"], "CONFIG_RETRY_MAX_ATTEMPTS": "2", **env_overrides}
    proc = subprocess.Popen([sys.executable, "-m", "catalog"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    return proc, port


def test_without_config_server_or_snapshot_a_service_exits_with_a_clear_error(stack: Stack, tmp_path: Path):
    proc, _ = _start_catalog_without_config_server(stack, tmp_path)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert "config server unreachable" in out and "no snapshot" in out, out[-500:]


def test_without_config_server_a_service_starts_from_its_last_good_snapshot(stack: Stack, tmp_path: Path):
    snapshot = stack.var_dir / "config" / "catalog-local.json"
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "catalog-local.json").write_text(snapshot.read_text())
    proc, port = _start_catalog_without_config_server(stack, tmp_path)
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/products"), timeout=30, what="catalog from a snapshot")
        products = httpx.get(f"http://127.0.0.1:{port}/products").json()
        assert len(products) >= 3  # seeded from the snapshot's configuration
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    assert "CONFIG SERVER UNREACHABLE" in out and "last good snapshot" in out


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_service_without_config_server_url_finds_it_in_discovery(stack: Stack, tmp_path: Path):
    assert len(stack.topology.passing("config-server")) == 1  # the config server registers like any service
    proc, port = _start_catalog_without_config_server(
        stack, tmp_path, CONFIG_SERVER_URL="", CONSUL_HTTP_ADDR=f"127.0.0.1:{stack.ports.discovery}")
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/products"), timeout=30, what="catalog via discovery")
        doc = httpx.get(f"http://127.0.0.1:{port}/admin/config", headers={"Authorization": "Bearer sandbox-admin-token"})
        assert doc.json()["source"] == "config-server" and doc.json()["version"] == served_version(stack, "catalog-1")
    finally:
        proc.terminate()
        proc.communicate(timeout=15)
    stack.topology.wait_passing("catalog", 2)  # it deregistered on the way out
