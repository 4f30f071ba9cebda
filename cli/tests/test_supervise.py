"""msa_cli.supervise: supervisord imports the programs' shared modules once and runs each `python -m` program in
the child it forks. A program must not be able to tell — apart from who imported its dependencies — whether it was
started that way or by execve: same process tree, title, environment, signals, exit path, restarts."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from msa_cli import Program, Topology, free_ports
from msa_cli.supervise import PRELOAD_ENV, module_command

from .conftest import FAKES, FakeSpec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SERVICE = "forked-1"
SHARED = FAKES / "shared"  # the preloaded dependency; the service itself is in FAKES


def whoami(topo: Topology) -> dict:
    return httpx.get(f"{topo.url(SERVICE)}/whoami", trust_env=False).json()


@pytest.fixture(params=["preloaded", "exec"], scope="module")
def topo(request, tmp_path_factory, fake_spec: FakeSpec, monkeypatch_module) -> Iterator[Topology]:
    (port,) = free_ports(1)
    service = Program(
        SERVICE, (sys.executable, "-m", "forked_service", "--flag", "x y"), port,
        # The program finds its own module through its own PYTHONPATH, as an exec'd interpreter would. Block-buffered
        # stdout: what it prints reaches its log only through the interpreter's exit path.
        env={"PYTHONPATH": f"{SHARED}:{FAKES}", "PYTHONUNBUFFERED": ""},
        preload=("preloaded_dependency",),
    )
    spec = fake_spec(tmp_path_factory.mktemp("var"), catalog=1, extra=(service,))
    spec = dataclasses.replace(spec, env=spec.env | {"PYTHONPATH": str(SHARED)})  # supervisord's, for the preload
    if request.param == "exec":
        monkeypatch_module.setenv(PRELOAD_ENV, "")  # the caller's empty MSA_PRELOAD turns preloading off
    topology = Topology(spec)
    topology.up(timeout=20)
    topology.mode = request.param
    yield topology
    topology.down()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_the_program_is_a_child_of_supervisord_with_its_own_title_and_environment(topo: Topology):
    me = whoami(topo)
    assert me["ppid"] == topo._supervisord_pid()
    assert " ".join(me["cmdline"]).endswith("python -m forked_service --flag x y")  # as `ps` shows it
    if topo.mode == "preloaded":
        assert me["cmdline"] == ["python -m forked_service --flag x y"]  # the title, not supervisord's command
        assert me["dependency_imported_in"] != me["pid"]  # imported before the fork, once for every program
    else:
        assert me["dependency_imported_in"] == me["pid"]
    assert me["instance"] == SERVICE and me["supervisor_process_name"] == SERVICE
    assert me["argv"] == ["--flag", "x y"] and me["main"] == "__main__"
    # supervisord's own signal handlers are not inherited
    assert me["sigint_handler"] == "default_int_handler" and me["sighup_default"]


def test_stop_goes_through_the_interpreters_exit_path(topo: Topology):
    before = whoami(topo)["pid"]
    topo.stop(SERVICE)
    log = topo.log_path(SERVICE).read_text()
    assert "atexit ran" in log  # atexit handlers ran and the buffered stdout was flushed
    assert f"stopped: {SERVICE} (exit status 0)" in (topo.log_dir / "supervisord.log").read_text()
    topo.start(SERVICE)
    _wait_health(topo)
    after = whoami(topo)
    assert after["pid"] != before
    if topo.mode == "preloaded":
        assert after["dependency_imported_in"] != after["pid"]


def test_a_killed_program_is_restarted_the_same_way(topo: Topology):
    old = whoami(topo)["pid"]
    topo.kill(SERVICE)
    _wait_health(topo, not_pid=old)
    new = whoami(topo)
    assert new["ppid"] == topo._supervisord_pid()
    assert (new["dependency_imported_in"] != new["pid"]) == (topo.mode == "preloaded")


def test_a_program_restarted_after_an_edit_runs_the_edited_code(topo: Topology):
    # Preloaded, the old code is still in supervisord's memory: a program whose preloaded files changed gets an
    # interpreter of its own, as the exec'd one always does.
    dependency = SHARED / "preloaded_dependency.py"
    old = whoami(topo)["pid"]
    stamp = dependency.stat()
    try:
        dependency.touch()  # as an editor saving it would
        topo.kill(SERVICE)
        _wait_health(topo, not_pid=old)
        me = whoami(topo)
        assert me["dependency_imported_in"] == me["pid"]  # imported afresh: the edit is what runs
        said = "changed since supervisord imported it" in topo.log_path(SERVICE).read_text()
        assert said == (topo.mode == "preloaded")
    finally:
        os.utime(dependency, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))


def _wait_health(topo: Topology, not_pid: int | None = None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if whoami(topo)["pid"] != not_pid:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{SERVICE} did not come back")


@pytest.mark.parametrize(("argv", "expected"), [
    ([sys.executable, "-m", "order"], ("order", [])),
    ([sys.executable, "-m", "order", "--x"], ("order", ["--x"])),
    ([sys.executable, "-c", "print(1)"], None),
    ([sys.executable, str(Path(__file__))], None),
    (["/bin/sh", "-m", "order"], None),  # another program altogether
])
def test_only_this_interpreter_running_a_module_is_forked(argv, expected):
    filename = argv[0]
    assert module_command(filename, argv) == expected
