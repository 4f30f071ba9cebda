"""The local runner: a TopologySpec run as supervised processes under supervisord.

supervisord plays the part an orchestrator plays in production: it starts every instance, restarts one that
crashes (the auto-recovery lesson: `msa chaos kill` / Topology.kill) and stops them all as process groups.
We talk to it over XML-RPC on a unix socket, exactly as `supervisorctl -c var/run/supervisord.conf` does.

"Up" means what a client would need, not merely "processes exist": discovery and the config server answer
/health, and discovery lists the expected number of passing instances of every service.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
import xmlrpc.client
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from supervisor.xmlrpc import Faults, SupervisorTransport

from .preflight import broker_problem, ports_in_use
from .spec import Program, TopologySpec
from .supervise import PRELOAD_ENV

__all__ = [
    "AlreadyRunning",
    "BrokerUnreachable",
    "NotRunning",
    "PortsInUse",
    "ProgramStatus",
    "StartupTimeout",
    "Topology",
    "TopologyError",
]

# Linux allows 108 bytes in sun_path, macOS 104; leave room for the terminating NUL.
_MAX_SOCKET_PATH = 100
_POLL = 0.1


class TopologyError(RuntimeError):
    """An expected failure; str(error) is a message for a person, printed without a traceback."""


class BrokerUnreachable(TopologyError):
    pass


class PortsInUse(TopologyError):
    def __init__(self, message: str, ports: list[int]):
        super().__init__(message)
        self.ports = ports


class AlreadyRunning(TopologyError):
    pass


class NotRunning(TopologyError):
    pass


class StartupTimeout(TopologyError):
    def __init__(self, message: str, missing: list[str]):
        super().__init__(message)
        self.missing = missing


@dataclass(frozen=True)
class ProgramStatus:
    name: str
    state: str  # supervisord's state name: STARTING, RUNNING, BACKOFF, STOPPED, EXITED, FATAL, ...
    pid: int | None
    port: int
    url: str
    healthy: bool
    health: str  # what GET <health_path> said: "200", "503", "refused", "timeout"
    passing: bool | None  # listed as passing in discovery; None for programs that do not register


class HttpChecks:
    """What "ready" and "passing" mean, asked over HTTP only: each program's health endpoint, and discovery's
    Consul API. Shared by Topology (supervisord) and compose.ComposeTopology (docker compose); a subclass says
    what its process manager thinks of each program (_unsettled) and how to explain a timeout (_timeout_report).
    """

    spec: TopologySpec

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until every program is ready (see the module doc); raise StartupTimeout otherwise."""
        deadline = time.monotonic() + timeout
        with _client() as client:
            while True:
                missing = self._missing(client)
                if not missing:
                    return
                if time.monotonic() >= deadline:
                    raise StartupTimeout(self._timeout_report(missing, timeout), [m for m, _ in missing])
                time.sleep(_POLL)

    def passing(self, service: str) -> list[dict[str, Any]]:
        """Discovery's passing instances of a service (Consul's /v1/health/service/<name>?passing entries)."""
        with _client() as client:
            return self._passing(client, service)

    def wait_passing(self, service: str, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Wait until exactly `count` instances of `service` are passing (so it also waits for one to drop out)."""
        deadline = time.monotonic() + timeout
        with _client() as client:
            while True:
                try:
                    entries = self._passing(client, service)
                except httpx.HTTPError:
                    entries = []
                if len(entries) == count:
                    return entries
                if time.monotonic() >= deadline:
                    raise TopologyError(
                        f"{service}: {len(entries)} passing in discovery after {timeout:.0f} s, wanted {count}"
                    )
                time.sleep(_POLL)

    def url(self, program: str) -> str:
        return self.spec.program(program).url

    def status_rows(self, states: dict[str, tuple[str, int | None]]) -> list[ProgramStatus]:
        """One row per program: the process manager's (state, pid) by program name, health and passing by HTTP."""
        with _client() as client:
            passing_ports = self._passing_ports(client)
            rows = []
            for p in self.spec.programs:
                state, pid = states.get(p.name, ("UNKNOWN", None))
                healthy, health = _probe(client, p)
                rows.append(
                    ProgramStatus(
                        name=p.name,
                        state=state,
                        pid=pid,
                        port=p.port,
                        url=p.url,
                        healthy=healthy,
                        health=health,
                        passing=(p.port in passing_ports) if p.registers else None,
                    )
                )
        return rows

    # ---- hooks -----------------------------------------------------------------------------------------------

    def entry_port(self, entry: dict[str, Any]) -> int:
        """The port on which we reach the instance a discovery entry names (where the program's `port` is)."""
        return entry["Service"]["Port"]

    def _unsettled(self) -> list[tuple[str, list[str]]]:
        """Programs that answer but that the process manager does not count as settled yet."""
        return []

    def _timeout_report(self, missing: list[tuple[str, list[str]]], timeout: float) -> str:
        lines = [f"Not ready after {timeout:.0f} s:"]
        return "\n".join(lines + [f"  - {what}" for what, _ in missing])

    # ---- internals -------------------------------------------------------------------------------------------

    def _passing(self, client: httpx.Client, service: str) -> list[dict[str, Any]]:
        if not self.spec.discovery_url:
            return []
        headers = {"X-Consul-Token": self.spec.discovery_token} if self.spec.discovery_token else None
        r = client.get(f"{self.spec.discovery_url}/v1/health/service/{service}?passing", headers=headers)
        r.raise_for_status()
        return r.json() or []

    def _passing_ports(self, client: httpx.Client) -> set[int]:
        ports: set[int] = set()
        for service in self.spec.expected:
            try:
                ports |= {self.entry_port(e) for e in self._passing(client, service)}
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                pass
        return ports

    def _missing(self, client: httpx.Client) -> list[tuple[str, list[str]]]:
        """What is not ready yet: (description, programs whose logs would explain it)."""
        missing = []
        uses_discovery = self.spec.discovery is not None
        for p in self.spec.programs:
            if p.registers and uses_discovery:
                continue  # discovery's passing check speaks for these
            healthy, health = _probe(client, p)
            if not healthy:
                missing.append((f"{p.name}: GET {p.url}{p.health_path} → {health}", [p.name]))
        if uses_discovery and not any(names == [self.spec.discovery] for _, names in missing):
            missing += self._not_registered(client)
        if not missing:
            missing += self._unsettled()
        return missing

    def _not_registered(self, client: httpx.Client) -> list[tuple[str, list[str]]]:
        missing = []
        for service, want in self.spec.expected.items():
            try:
                entries = self._passing(client, service)
                got_ports = {self.entry_port(e) for e in entries}
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                entries, got_ports = [], set()
            if len(entries) < want:
                absent = [p.name for p in self.spec.programs if service in p.registers and p.port not in got_ports]
                missing.append(
                    (f"{service}: {len(entries)} of {want} passing in discovery (not yet: {', '.join(absent)})", absent)
                )
        return missing


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
        self.socket_path = _socket_path(self.run_dir)

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
        if not (supervisord_pid and _alive(supervisord_pid)) and not leftovers:
            return False

        while supervisord_pid and _alive(supervisord_pid) and time.monotonic() < deadline:
            time.sleep(_POLL)
        # supervisord exits only once its children are gone; anything still carrying our run id escaped its
        # process group (or supervisord itself died). Kill it: SIGKILL, so nothing is left to restart anything.
        for pid in {*self._leftover_pids(), *(p for p in children if _alive(p))}:
            _kill_group(pid)
        ports = [p.port for p in self.spec.programs]
        while (busy := ports_in_use(ports)) and time.monotonic() < deadline:
            time.sleep(_POLL)
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
            time.sleep(_POLL)

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
        lines = [f"Not ready after {timeout:.0f} s:"]
        lines += [f"  - {what}" for what, _ in missing]
        for name in dict.fromkeys(n for _, names in missing for n in names):
            state = states.get(name, "?")
            lines.append(f"\n{name} [{state}] — last lines of {self.log_path(name)}:")
            lines.append(_indent(self.log_tail(name, 15)) or "    (empty)")
        lines.append(f"\nStopped everything. All logs: {self.log_dir}")
        return "\n".join(lines)


_Fault = xmlrpc.client.Fault


def render_config(spec: TopologySpec, socket_path: Path) -> str:
    """supervisord.conf for a spec. Only per-program, non-secret settings go in here (see _start_supervisord)."""
    log_dir = spec.var_dir / "log"
    run_dir = spec.var_dir / "run"
    supervisorctl = [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(run_dir / "supervisord.conf")]
    out = [
        "; Written by `msa up`, rewritten on every start. To look inside while it runs:",
        ";   " + _esc(shlex.join(supervisorctl)),
        "",
        "[unix_http_server]",
        f"file={_esc(str(socket_path))}",
        "chmod=0700",
        "",
        "[supervisord]",
        f"logfile={_esc(str(log_dir / 'supervisord.log'))}",
        f"pidfile={_esc(str(run_dir / 'supervisord.pid'))}",
        f"childlogdir={_esc(str(log_dir))}",
        f"directory={_esc(str(spec.directory))}",
        "identifier=msa-sandbox",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_esc(str(socket_path))}",
    ]
    for p in spec.programs:
        env = {"HOST": "127.0.0.1", "PORT": str(p.port), "INSTANCE_ID": p.name} | p.env
        out += [
            "",
            f"[program:{p.name}]",
            f"command={_esc(shlex.join(p.command))}",
            f"directory={_esc(str(spec.directory))}",
            f"environment={','.join(f'{k}={_env_value(v)}' for k, v in env.items())}",
            f"priority={p.priority}",
            "autostart=true",
            "autorestart=true",
            # RUNNING after 1 s alive; a crash-looping program gets 20 tries before supervisord gives up (FATAL).
            "startsecs=1",
            "startretries=20",
            # Signal the whole process group, so nothing a program spawned outlives it.
            "stopasgroup=true",
            "killasgroup=true",
            "stopsignal=TERM",
            "stopwaitsecs=10",
            "redirect_stderr=true",
            f"stdout_logfile={_esc(str(log_dir / f'{p.name}.log'))}",
        ]
    return "\n".join(out) + "\n"


def _esc(value: str) -> str:
    # supervisord expands %(name)s in its config, so a literal % must be doubled.
    return value.replace("%", "%%")


def _env_value(value: str) -> str:
    # supervisord splits `environment=` with a non-POSIX shlex: quotes group, nothing escapes a quote, and it
    # strips quote characters from both ends of the value. Anything it would mangle is refused here instead.
    if value[:1] in ("'", '"') or value[-1:] in ("'", '"') or ('"' in value and "'" in value):
        raise ValueError(f"supervisord cannot pass this environment value unchanged: {value!r}")
    quote = "'" if '"' in value else '"'
    return _esc(f"{quote}{value}{quote}")


def _socket_path(run_dir: Path) -> Path:
    preferred = run_dir / "supervisor.sock"
    if len(str(preferred)) <= _MAX_SOCKET_PATH:
        return preferred
    # Too long for a unix socket address: a short directory derived from the var dir, so every later command
    # finds the same one without having to be told.
    digest = hashlib.sha1(str(run_dir).encode()).hexdigest()[:12]
    base = Path("/tmp") if Path("/tmp").is_dir() else Path(os.environ.get("TMPDIR", "."))
    return base / f"msa-{digest}" / "supervisor.sock"


@contextmanager
def _client() -> Iterator[httpx.Client]:
    # trust_env=False: an HTTP(S)_PROXY in the caller's environment must not capture calls to 127.0.0.1.
    with httpx.Client(timeout=httpx.Timeout(1.0), trust_env=False) as client:
        yield client


def _probe(client: httpx.Client, p: Program) -> tuple[bool, str]:
    try:
        r = client.get(f"{p.url}{p.health_path}")
    except httpx.ConnectError:
        return False, "refused"
    except httpx.TimeoutException:
        return False, "timeout"
    except httpx.HTTPError as exc:
        return False, type(exc).__name__
    return r.status_code == 200, str(r.status_code)


def processes_carrying(name: str, value: str) -> list[int]:
    """Live processes (not this one) whose environment has name=value: what a run started, however it was
    started and whoever its parent is now. Linux only (/proc)."""
    marker = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone, or not ours to read
        if marker in environ.split(b"\0") and _alive(pid):
            found.append(pid)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers signal 0 until its parent reaps it; for us it is gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _kill_group(pid: int) -> None:
    # supervisord makes every program a process-group leader; a leftover may have children of its own.
    for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            kill()
        except (ProcessLookupError, PermissionError):
            pass


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
    except OSError:
        return ""


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())

