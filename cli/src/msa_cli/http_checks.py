"""What "ready", "passing" and a status row mean, asked over HTTP only: each program's health endpoint, and
discovery's Consul API. The same for every process manager: supervisord (runner.Topology) or docker compose
(compose.ComposeTopology).

"Up" means what a client would need, not merely "processes exist": discovery and the config server answer
/health, and discovery lists the expected number of passing instances of every service.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from .errors import StartupTimeout, TopologyError
from .spec import Program, TopologySpec

__all__ = ["POLL", "HttpChecks", "ProgramStatus"]

# Seconds between two looks while waiting for something to happen.
POLL = 0.1


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
    """The checks of the module doc, for self.spec. A subclass says what its process manager thinks of each program
    (_unsettled), what a program's log ends with (log_tail) and how to explain a timeout (_timeout_report).
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
                time.sleep(POLL)

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
                time.sleep(POLL)

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

    def log_tail(self, program: str, lines: int = 20) -> str:
        """The last lines of a program's log; none where the process manager keeps no log."""
        return ""

    def _unsettled(self) -> list[tuple[str, list[str]]]:
        """Programs that answer but that the process manager does not count as settled yet."""
        return []

    def _timeout_report(self, missing: list[tuple[str, list[str]]], timeout: float) -> str:
        return "\n".join(_not_ready(missing, timeout))

    def _report_with_logs(
        self, missing: list[tuple[str, list[str]]], timeout: float, heading: Callable[[str], str], closing: str
    ) -> str:
        """A timeout report for a person: what is missing, then under heading(program) the end of the log of each
        program that would explain it, then closing (what became of the topology)."""
        lines = _not_ready(missing, timeout)
        for name in dict.fromkeys(n for _, names in missing for n in names):
            lines.append(f"\n{heading(name)}")
            lines.append(_indent(self.log_tail(name, 15)) or "    (empty)")
        lines.append(closing)
        return "\n".join(lines)

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


def _not_ready(missing: list[tuple[str, list[str]]], timeout: float) -> list[str]:
    return [f"Not ready after {timeout:.0f} s:"] + [f"  - {what}" for what, _ in missing]


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


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())
