"""The local runner: a TopologySpec run as supervised processes under supervisord.

supervisord plays the part an orchestrator plays in production: it starts every instance, restarts one that
crashes (the auto-recovery lesson: `msa chaos kill` / Topology.kill) and stops them all as process groups.
We talk to it over XML-RPC on a unix socket, exactly as `supervisorctl -c var/run/supervisord.conf` does.

Beside it: what "up" means (http_checks), supervisord's config file (supervisor_config), the processes a run leaves
behind (processes) and what can go wrong (errors).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
import xmlrpc.client
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import Faults, SupervisorTransport

from .errors import AlreadyRunning, BrokerUnreachable, NotRunning, PortsInUse, TopologyError
from .http_checks import POLL, HttpChecks, ProgramStatus
from .preflight import broker_problem, ports_in_use
from .processes import alive, kill_group, processes_carrying
from .spec import TopologySpec
from .supervise import PRELOAD_ENV
from .supervisor_config import render_config, socket_path

__all__ = ["Topology"]


class Topology(HttpChecks):
    """Runs one TopologySpec. Every method is safe to call whether or not it is running."""

    def __init__(self, spec: TopologySpec):
        self.spec = spec
        self.var_dir = spec.var_dir
        self.run_dir = spec.var_dir / "run"
        self.log_dir = spec.var_dir / "log"
        self.conf_path = self.run_dir / "supervisord.conf"
        self.pidfile = self.run_dir / "supervisord.pid"
        self._run_id_file = self.run_dir / "run-id"
        self.socket_path = socket_path(self.run_dir)

    def __repr__(self) -> str:
        return f"Topology({self.var_dir}, programs={[p.name for p in self.spec.programs]})"

    def __enter__(self) -> Topology:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def preflight(self) -> None:
        """Raise, having started nothing, if starting would fail for a reason we can name now."""
        if self.spec.require_broker:
            problem = broker_problem(self.spec.amqp_url)
            if problem:
                raise BrokerUnreachable(problem)
        if self.is_running():
            raise AlreadyRunning(f"already up (supervisord for {self.var_dir} is running)")
        busy = ports_in_use([p.port for p in self.spec.programs] + list(self.spec.reserved_ports))
        if busy:
            owners = ", ".join(f"{port} ({self._program_on(port)})" for port in busy)
            first = busy[0]
            raise PortsInUse(
                f"Port{'s' if len(busy) > 1 else ''} already in use: {owners}.\n"
                f"Find who holds it with `ss -ltnp 'sport = :{first}'` or `lsof -i :{first}`, and stop it.\n"
                "If it is left over from an earlier `make up`, `make down` stops it.",
                busy,
            )

    def up(self, timeout: float = 20.0) -> float:
        """Start everything and wait until it is healthy; return the seconds it took.

        On timeout: raise StartupTimeout naming what is missing, with the tail of its logs, having stopped
        everything again (a half-started topology only confuses the next attempt).
        """
        started = time.monotonic()
        self.preflight()
        self._write_config()
        self._start_supervisord()
        try:
            self.wait_ready(timeout - (time.monotonic() - started))
        except BaseException:
            self.down()
            raise
        return time.monotonic() - started

    def down(self, timeout: float = 30.0) -> bool:
        """Stop everything; return False if nothing was running. Afterwards none of our processes is alive and
        none of our ports is listening, or TopologyError says which port is still held (then not by us)."""
        deadline = time.monotonic() + timeout
        supervisord_pid = self._supervisord_pid()
        children = []
        try:
            rpc = self._rpc()
            children = [info["pid"] for info in rpc.supervisor.getAllProcessInfo() if info["pid"]]
            self._stop_in_tiers(rpc, deadline)
            rpc.supervisor.shutdown()
        except (OSError, xmlrpc.client.Error):
            pass  # not running, or already shutting down: the leftovers scan below still applies
        leftovers = self._leftover_pids()
        if not (supervisord_pid and alive(supervisord_pid)) and not leftovers:
            return False

        while supervisord_pid and alive(supervisord_pid) and time.monotonic() < deadline:
            time.sleep(POLL)
        # supervisord exits only once its children are gone; anything still carrying our run id escaped its
        # process group (or supervisord itself died). Kill it: SIGKILL, so nothing is left to restart anything.
        for pid in {*self._leftover_pids(), *(p for p in children if alive(p))}:
            kill_group(pid)
        ports = [p.port for p in self.spec.programs]
        while (busy := ports_in_use(ports)) and time.monotonic() < deadline:
            time.sleep(POLL)
        self.pidfile.unlink(missing_ok=True)
        if busy:
            raise TopologyError(f"stopped, but ports are still in use (not by our processes): {busy}")
        return True

    def _stop_in_tiers(self, rpc: xmlrpc.client.ServerProxy, deadline: float) -> None:
        """Stop programs in reverse start order, a whole tier at once: the gateway, then the services (which can
        still deregister from discovery), then the config server, then discovery.

        supervisord's own shutdown does the same one program per second (it notices a dead child only on its 1 s
        loop tick); here our polling wakes its loop, so each tier takes as long as its programs need to exit."""
        infos = rpc.supervisor.getAllProcessInfo()
        priority = {p.name: p.priority for p in self.spec.programs}
        tiers: dict[int, list[str]] = {}
        for info in infos:
            tiers.setdefault(priority.get(info["name"], 999), []).append(info["name"])
        for _, names in sorted(tiers.items(), reverse=True):
            for name in names:
                try:
                    rpc.supervisor.stopProcess(name, False)  # TERM to its group now; KILL after stopwaitsecs
                except _Fault:
                    pass  # not running
            while time.monotonic() < deadline:
                states = {i["name"]: i["statename"] for i in rpc.supervisor.getAllProcessInfo()}
                if not any(states.get(n) in ("STARTING", "RUNNING", "BACKOFF", "STOPPING") for n in names):
                    break
                time.sleep(0.05)

    # ---- what runs -------------------------------------------------------------------------------------------

    def is_running(self) -> bool:
        try:
            return self._rpc().supervisor.getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            return False

    def status(self) -> list[ProgramStatus]:
        infos = {info["name"]: info for info in self._call("getAllProcessInfo")}
        return self.status_rows({name: (info["statename"], info.get("pid") or None) for name, info in infos.items()})

    def pid(self, program: str) -> int | None:
        return self._call("getProcessInfo", self.spec.program(program).name)["pid"] or None

    def log_path(self, program: str) -> Path:
        return self.log_dir / f"{self.spec.program(program).name}.log"

    def log_tail(self, program: str, lines: int = 20) -> str:
        return _tail(self.log_path(program), lines)

    # ---- breaking it on purpose ------------------------------------------------------------------------------

    def stop(self, program: str) -> None:
        """Stop one program; supervisord keeps it stopped until start()."""
        try:
            self._call("stopProcess", self.spec.program(program).name, True)
        except _Fault as fault:
            if fault.faultCode != Faults.NOT_RUNNING:
                raise TopologyError(f"could not stop {program}: {fault.faultString}") from None

    def start(self, program: str) -> None:
        """Start one program and wait until supervisord counts it RUNNING (alive for startsecs)."""
        try:
            self._call("startProcess", self.spec.program(program).name, True)
        except _Fault as fault:
            if fault.faultCode != Faults.ALREADY_STARTED:
                raise TopologyError(f"could not start {program}: {fault.faultString}") from None

    def kill(self, program: str, sig: int = signal.SIGKILL) -> int:
        """Signal the program's process directly, as a crash would; supervisord notices and restarts it.
        Returns the pid that was signalled."""
        pid = self.pid(program)
        if pid is None:
            raise TopologyError(f"{program} is not running")
        os.kill(pid, sig)
        return pid

    # ---- internals -------------------------------------------------------------------------------------------

    def _rpc(self) -> xmlrpc.client.ServerProxy:
        transport = SupervisorTransport(None, None, serverurl=f"unix://{self.socket_path}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._rpc().supervisor, method)(*args)
        except (OSError, xmlrpc.client.ProtocolError):
            message = f"Nothing is running (no supervisord for {self.var_dir}). Start it with `make up`."
            raise NotRunning(message) from None
        except _Fault as fault:
            if fault.faultCode == Faults.SHUTDOWN_STATE:
                raise NotRunning("shutting down") from None
            raise

    def _program_on(self, port: int) -> str:
        return next((p.name for p in self.spec.programs if p.port == port), "the broker proxy")

    def _write_config(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.var_dir / "traces").mkdir(parents=True, exist_ok=True)
        self.socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.conf_path.write_text(render_config(self.spec, self.socket_path))

    def _start_supervisord(self) -> None:
        run_id = uuid.uuid4().hex
        self._run_id_file.write_text(run_id)
        # Shared settings (some secret) reach the programs through supervisord's own environment, so they are
        # never written to the config file. MSA_RUN_ID marks every process of this run for down()'s sweep.
        env = {k: v for k, v in os.environ.items() if k not in ("PORT", "INSTANCE_ID")}
        env |= self.spec.env | {"MSA_RUN_ID": run_id}
        # What the programs import, imported once by supervisord and shared (msa_cli.supervise). MSA_PRELOAD in the
        # caller's environment overrides the spec's list; empty turns preloading off.
        env.setdefault(PRELOAD_ENV, " ".join(self.spec.preload))
        # supervisord forks into the background and this first process exits once it has (or fails on a bad
        # config), after the preload.
        proc = subprocess.run(
            [sys.executable, "-m", "msa_cli.supervise", "-c", str(self.conf_path)],
            env=env,
            cwd=self.spec.directory,
            capture_output=True,
            text=True,
            timeout=15,
        )
        if proc.returncode != 0:
            raise TopologyError(f"supervisord did not start:\n{proc.stderr.strip() or proc.stdout.strip()}")
        deadline = time.monotonic() + 10
        while not self.is_running():
            if time.monotonic() >= deadline:
                log = _tail(self.log_dir / "supervisord.log", 20)
                self.down()
                raise TopologyError(f"supervisord did not come up; its log says:\n{log}")
            time.sleep(POLL)

    def _supervisord_pid(self) -> int | None:
        # Asked, not read from the pidfile: a stale pidfile may name an unrelated process by now. A supervisord
        # that no longer answers is still found by the run-id sweep.
        try:
            return self._rpc().supervisor.getPID()
        except (OSError, xmlrpc.client.Error):
            return None

    def _leftover_pids(self) -> list[int]:
        """Live processes carrying this var dir's run id: supervisord, its programs and anything they spawned.
        Linux only (/proc); elsewhere down() relies on supervisord's own process-group handling."""
        try:
            run_id = self._run_id_file.read_text().strip()
        except OSError:
            return []
        return processes_carrying("MSA_RUN_ID", run_id)

    def _unsettled(self) -> list[tuple[str, list[str]]]:
        # Healthy, and alive for startsecs: supervisord says RUNNING, so it is not about to crash-loop.
        states = {i["name"]: i["statename"] for i in self._call("getAllProcessInfo")}
        return [
            (f"{p.name}: supervisord state {states.get(p.name, '?')}", [p.name])
            for p in self.spec.programs
            if states.get(p.name) != "RUNNING"
        ]

    def _timeout_report(self, missing: list[tuple[str, list[str]]], timeout: float) -> str:
        try:
            states = {i["name"]: i["statename"] for i in self._rpc().supervisor.getAllProcessInfo()}
        except (OSError, xmlrpc.client.Error):
            states = {}
        return self._report_with_logs(
            missing,
            timeout,
            lambda name: f"{name} [{states.get(name, '?')}] — last lines of {self.log_path(name)}:",
            f"\nStopped everything. All logs: {self.log_dir}",
        )


_Fault = xmlrpc.client.Fault


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
    except OSError:
        return ""
