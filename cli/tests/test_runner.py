"""The runner against a fake topology: it waits for health, supervisord heals a crash, down leaves nothing behind."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from msa_cli import AlreadyRunning, Program, StartupTimeout, Topology, free_ports
from msa_cli.preflight import port_in_use
from msa_cli.processes import alive

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def running(tmp_path_factory, fake_spec):
    # catalog instances take 0.5 s to listen: up() must wait for them, not for the processes to merely exist.
    topo = Topology(fake_spec(tmp_path_factory.mktemp("var"), start_delay=0.5))
    topo.elapsed = topo.up(timeout=15)
    yield topo
    topo.down()


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_up_returns_once_everything_is_healthy(running: Topology):
    assert 0.5 < running.elapsed < 15
    for p in running.spec.programs:
        assert httpx.get(f"{p.url}/health", trust_env=False).status_code == 200, p.name
    assert len(running.passing("catalog")) == 2
    assert running.url("catalog-2") == f"http://127.0.0.1:{running.spec.program('catalog-2').port}"


def test_killed_program_is_restarted_by_supervisord(running: Topology):
    old = running.kill("catalog-1")
    new = wait_for(lambda: (pid := running.pid("catalog-1")) and pid != old and pid, what="a new catalog-1 pid")
    assert new != old
    assert not alive(old)
    running.wait_passing("catalog", 2, timeout=10)


def test_stop_and_start_one_instance(running: Topology):
    running.stop("catalog-2")
    assert running.pid("catalog-2") is None
    running.wait_passing("catalog", 1, timeout=5)  # the other instance carries on
    running.start("catalog-2")
    running.wait_passing("catalog", 2, timeout=10)


def test_status_reports_state_health_and_discovery(running: Topology):
    rows = {r.name: r for r in running.status()}
    assert set(rows) == {"discovery", "config-server", "catalog-1", "catalog-2"}
    for r in rows.values():
        assert (r.state, r.healthy, r.health) == ("RUNNING", True, "200")
        assert r.pid and alive(r.pid)
    assert rows["discovery"].passing is None  # does not register itself
    assert rows["catalog-1"].passing is True


def test_up_twice_says_already_running(running: Topology):
    with pytest.raises(AlreadyRunning):
        Topology(running.spec).up()


def test_down_leaves_no_process_and_no_listening_port(tmp_path: Path, fake_spec):
    topo = Topology(fake_spec(tmp_path / "var", catalog=1))
    topo.up(timeout=15)
    supervisord = int(topo.pidfile.read_text())
    children = [r.pid for r in topo.status()]
    ports = [p.port for p in topo.spec.programs]

    assert topo.down() is True

    assert not [pid for pid in [supervisord, *children] if alive(pid)]
    assert not [port for port in ports if port_in_use(port)]
    assert topo._leftover_pids() == []
    assert not topo.socket_path.exists()
    assert topo.down() is False  # a no-op when nothing runs


def test_down_sweeps_processes_that_outlived_supervisord(tmp_path: Path, fake_spec):
    # Someone kill -9s supervisord: its programs live on, orphaned. down() still finds and stops them.
    topo = Topology(fake_spec(tmp_path / "var", catalog=1))
    topo.up(timeout=15)
    children = [r.pid for r in topo.status()]
    os.kill(int(topo.pidfile.read_text()), signal.SIGKILL)
    wait_for(lambda: not topo.is_running(), what="supervisord to die")
    assert all(alive(pid) for pid in children)

    assert topo.down(timeout=10) is True

    assert not [pid for pid in children if alive(pid)]
    assert not [p.port for p in topo.spec.programs if port_in_use(p.port)]


def test_startup_timeout_names_what_is_missing_shows_its_log_and_stops_everything(tmp_path: Path, fake_spec):
    # A catalog instance that crashes at start: supervisord keeps restarting it, it never registers.
    broken = Program(
        "catalog-broken",
        (sys.executable, "-c", "print('boom: cannot open the catalog database'); raise SystemExit(3)"),
        port=free_ports(1)[0],
        registers=("catalog",),
    )
    topo = Topology(fake_spec(tmp_path / "var", catalog=1, extra=(broken,)))

    with pytest.raises(StartupTimeout) as info:
        topo.up(timeout=3)

    message = str(info.value)
    assert "catalog: 1 of 2 passing" in message
    assert "catalog-broken" in message
    assert "boom: cannot open the catalog database" in message
    assert not topo.is_running()
    assert topo._leftover_pids() == []
    assert not [p.port for p in topo.spec.programs if port_in_use(p.port)]
