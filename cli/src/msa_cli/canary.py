"""`msa canary`: run one more instance of a service, registered under another `version`, beside the topology.

The gateway splits a route's calls between the versions by the weights in config-repo/gateway.yml
(`weights: {v1: 90, v2: 10}`, applied live by a bus refresh); this command only provides the v2 instance. It runs
under the same supervisord as everything else (so `make down` stops it too), on a free port, with `MSA_VERSION`
set: the kit registers that as the instance's `version` meta in discovery. Its log is var/log/<name>.log.

The program is added to the running supervisord (its config file gains a section; `reloadConfig` +
`addProcessGroup`) and removed the same way; `msa up` rewrites the file, so a canary never outlives a restart.

Against the compose stack (`msa --target compose canary …`) a canary is a service under the `canary` profile of
docker-compose.yml (catalog-v2): `docker compose --profile canary up -d catalog-v2` starts it, `rm --stop` removes it.
"""

from __future__ import annotations

import re
import time
import xmlrpc.client
from typing import Annotated

import httpx
import typer
from rich.table import Table

from . import context
from .compose import ComposeTopology
from .errors import TopologyError
from .runner import Topology
from .spec import Program, TopologySpec, free_ports
from .supervisor_config import render_config

canary = typer.Typer(help="Run an extra instance of a service under another version (for canary routing).",
                     no_args_is_help=True)

_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")





def canary_program(topo: Topology, service: str, version: str, port: int | None = None) -> Program:
    """The extra program: the same command as the service's first instance, another name, port and version."""
    if not _VERSION.match(version):
        raise TopologyError(f"version {version!r}: letters, digits, '.', '_' or '-' (e.g. v2)")
    first = next((p for p in topo.spec.programs if service in p.registers and p.name != service), None)
    if first is None:
        services = sorted({s for p in topo.spec.programs for s in p.registers} - {"gateway"})
        raise TopologyError(f"no service {service!r} to run a canary of (one of: {', '.join(services)})")
    name = f"{service}-{version}"
    return Program(name, first.command, port or free_ports(1)[0], registers=first.registers,
                   env={**first.env, "MSA_VERSION": version}, priority=first.priority)


def _section(spec: TopologySpec, program: Program) -> str:
    """supervisord's [program:…] section for one program, rendered exactly as `msa up` renders its own."""
    alone = TopologySpec(programs=(program,), var_dir=spec.var_dir, directory=spec.directory, discovery=None)
    text = render_config(alone, spec.var_dir / "run" / "unused.sock")
    return "\n" + text[text.index(f"[program:{program.name}]"):]


def _sections(conf: str) -> dict[str, str]:
    """Each [program:…] section of a supervisord config, by program name."""
    parts = re.split(r"(?m)^(?=\[)", conf)
    return {m.group(1): part for part in parts if (m := re.match(r"\[program:([^\]]+)\]", part))}


def running(topo: Topology) -> list[str]:
    """Programs running beside the topology's own (canaries), by name."""
    if isinstance(topo, ComposeTopology):
        return list(topo.canary_states())
    own = {p.name for p in topo.spec.programs}
    return [i["name"] for i in topo._call("getAllProcessInfo") if i["name"] not in own]


def start_canary(topo: Topology, service: str, version: str, port: int | None = None,
                 timeout: float = 30.0) -> Program:
    """Start the extra instance and wait until discovery lists it as passing (with its version)."""
    if isinstance(topo, ComposeTopology):
        return topo.start_canary(service, version, port, timeout=max(timeout, 120.0))
    program = canary_program(topo, service, version, port)
    if program.name in running(topo):
        raise TopologyError(f"{program.name} is already running (`msa canary stop {program.name}` first)")
    conf = topo.conf_path.read_text()
    topo.conf_path.write_text(conf + _section(topo.spec, program))
    try:
        rpc = topo._rpc().supervisor
        rpc.reloadConfig()
        rpc.addProcessGroup(program.name)  # starts it (autostart)
    except xmlrpc.client.Fault as fault:
        topo.conf_path.write_text(conf)
        raise TopologyError(f"supervisord would not add {program.name}: {fault.faultString}") from None
    deadline = time.monotonic() + timeout
    while True:
        try:
            entries = topo.passing(service)
        except httpx.HTTPError:
            entries = []
        if any(e["Service"]["Port"] == program.port for e in entries):
            return program
        if time.monotonic() > deadline:
            tail = topo.log_tail(program.name, 15)
            stop_canary(topo, program.name)
            raise TopologyError(f"{program.name} was not passing in discovery after {timeout:.0f} s; stopped it. "
                                f"Its log:\n{tail}")
        time.sleep(0.1)


def stop_canary(topo: Topology, name: str) -> None:
    """Stop the extra instance (SIGTERM: it deregisters at once) and remove it from supervisord."""
    if isinstance(topo, ComposeTopology):
        return topo.stop_canary(name)
    if name in {p.name for p in topo.spec.programs}:
        raise TopologyError(f"{name} is part of the topology, not a canary (for a crash: `msa chaos crash`)")
    rpc = topo._rpc().supervisor
    try:
        rpc.stopProcess(name, True)
    except xmlrpc.client.Fault as fault:
        if "BAD_NAME" in fault.faultString:
            raise TopologyError(f"no canary {name!r} is running") from None
        # NOT_RUNNING: already stopped (crashed out); remove it all the same
    rpc.removeProcessGroup(name)
    conf = topo.conf_path.read_text()
    section = _sections(conf).get(name)
    if section:
        topo.conf_path.write_text(conf.replace(section, "").rstrip("\n") + "\n")


# ---- the commands -------------------------------------------------------------------------------------------


@canary.command("start")
def start_command(service: Annotated[str, typer.Argument(help="e.g. catalog")],
                  version: Annotated[str, typer.Option(help="registered as the instance's `version` meta")] = "v2",
                  port: Annotated[int | None, typer.Option(help="[default: a free port]")] = None) -> None:
    """Start one more instance of a service as `version` (e.g. catalog-v2). A gateway route with `weights` sends it
    only its version's share; a route without them balances over every passing instance, the canary included."""
    topo = context.build_topology()
    try:
        with context.console.status(f"Starting {service}-{version}…"):
            program = start_canary(topo, service, version, port)
    except TopologyError as exc:
        raise context.fail(str(exc)) from None
    context.console.print(
        f"{program.name} passing at {program.url} (version {version}). Its share of a gateway route is the route's "
        f"`weights` in config-repo/gateway.yml (e.g. `weights: {{v1: 90, {version}: 10}}` on the `{service}` route; "
        "then POST /actuator/busrefresh on the config server). `msa canary stop` removes it.", soft_wrap=True)


@canary.command("stop")
def stop_command(name: Annotated[str | None, typer.Argument(help="e.g. catalog-v2 [default: every canary]")] = None
                 ) -> None:
    """Stop a canary instance (it deregisters at once) and remove it."""
    topo = context.build_topology()
    try:
        names = [name] if name else running(topo)
        for n in names:
            stop_canary(topo, n)
            context.console.print(f"{n} stopped and removed")
    except TopologyError as exc:
        raise context.fail(str(exc)) from None
    if not names:
        context.console.print("No canary is running.")


@canary.command("list")
def list_command() -> None:
    """Every registered instance of every service with its version, and the canaries' supervisord state."""
    topo = context.build_topology()
    try:
        if isinstance(topo, ComposeTopology):
            extra = topo.canary_states()
        else:
            extra = {i["name"]: i["statename"] for i in topo._call("getAllProcessInfo")
                     if i["name"] not in {p.name for p in topo.spec.programs}}
        table = Table(title="instances by version (discovery's passing set)", title_justify="left")
        for col in ("service", "instance", "version", "address", "canary"):
            table.add_column(col)
        listed = set()
        for service in topo.spec.expected:
            for e in topo.passing(service):
                s = e["Service"]
                listed.add(s["ID"])
                address = f"{s['Address']}:{s['Port']}"
                if isinstance(topo, ComposeTopology):  # where this machine reaches it
                    address += " → {}:{}".format(*topo.host_address(s["Address"], s["Port"]))
                table.add_row(service, s["ID"], (s.get("Meta") or {}).get("version", "v1"),
                              address, extra.get(s["ID"], ""))
        for n, state in extra.items():
            if n not in listed:
                table.add_row("", n, "", "", f"{state} (not passing)")
    except (TopologyError, httpx.HTTPError) as exc:
        raise context.fail(f"cannot list: {exc}") from None
    context.console.print(table)
