"""`msa chaos`: break the running sandbox on purpose, and heal it.

HTTP faults go to each instance's admin API (the kit's fault injection); broker faults to the fault proxy between
the services and RabbitMQ (the broker itself is never touched); discovery and config-server outages are the
runner stopping and starting those programs. `msa chaos heal` undoes all of it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Awaitable, Callable

import httpx
import typer
from rich.table import Table

from msa_faultproxy.client import FaultProxyClient, FaultProxyError

from . import context
from .errors import TopologyError
from .runner import Topology
from .spec import Program

chaos = typer.Typer(help="Inject faults into the running sandbox, list them, heal them.", no_args_is_help=True)

Instance = Annotated[str | None, typer.Option("--instance", "-i", help="one instance, e.g. catalog-2 [default: all]")]
Route = Annotated[str, typer.Option(help="only paths starting with this, e.g. /products [default: every route]")]
Probability = Annotated[float, typer.Option(min=0.0, max=1.0, help="share of matching requests affected")]
OUTAGE_PROGRAMS = ("discovery", "config-server")





def targets(topo: Topology, service: str, instance: str | None) -> list[Program]:
    services = sorted({s for p in topo.spec.programs for s in p.registers})
    chosen = [p for p in topo.spec.programs if service in p.registers and (instance in (None, p.name))]
    if not chosen:
        known = ", ".join(p.name for p in topo.spec.programs if service in p.registers)
        what = f"instance {instance!r} of {service!r} (its instances: {known})" if known and instance \
            else f"service {service!r} (one of: {', '.join(services)})"
        raise context.fail(f"No {what}.")
    return chosen


def _inject(service: str, instance: str | None, fault: dict[str, Any]) -> None:
    topo = context.build_topology()
    for program in targets(topo, service, instance):
        body = {**fault, "instance": program.name}
        added = context.admin_request("POST", program, "/admin/faults", json=body).json()
        context.console.print(f"{program.name}: {fault['kind']} fault {added['id']} injected")


@chaos.command()
def latency(service: str, ms: Annotated[int, typer.Option(min=0, help="added delay")],
            jitter: Annotated[int, typer.Option(min=0, help="plus up to this much, at random")] = 0,
            probability: Probability = 1.0, route: Route = "", instance: Instance = None) -> None:
    """Slow a service down (timeouts, bulkheads and breakers are the lesson)."""
    _inject(service, instance, {"kind": "latency", "latency_ms": ms, "jitter_ms": jitter,
                                "probability": probability, "route": route})


@chaos.command()
def errors(service: str, status: Annotated[int, typer.Option(min=400, max=599)] = 500,
           probability: Probability = 1.0, route: Route = "", instance: Instance = None) -> None:
    """Make a service answer errors (the breaker opens; the fallback answers)."""
    _inject(service, instance, {"kind": "error", "status": status, "probability": probability, "route": route})


@chaos.command()
def hang(service: str, probability: Probability = 1.0, route: Route = "", instance: Instance = None) -> None:
    """Make a service never answer (only client timeouts save the caller)."""
    _inject(service, instance, {"kind": "hang", "probability": probability, "route": route})


@chaos.command()
def crash(service: str, instance: Instance = None,
          kill: Annotated[bool, typer.Option(help="SIGKILL from outside instead of a crash from inside")] = False
          ) -> None:
    """Crash instances; supervisord (compose: `restart: unless-stopped`) restarts them (auto-recovery is the lesson).
    In compose, --kill is `docker compose kill`, which the engine counts as a manual stop: no restart until
    `msa chaos heal` (or `docker compose start`)."""
    topo = context.build_topology()
    for program in targets(topo, service, instance):
        if kill:
            try:
                pid = topo.kill(program.name)
            except TopologyError as exc:
                raise context.fail(str(exc)) from None
            if context.is_compose(topo):
                service_name = topo.service(program.name)
                context.console.print(
                    f"{program.name}: SIGKILL sent (`docker compose kill -s KILL {service_name}`"
                    + (f", pid {pid}" if pid > 0 else "") + "); the engine counts a kill as a manual stop, so "
                    f"compose does not restart it: `msa --target compose chaos heal` or "
                    f"`docker compose start {service_name}` does", soft_wrap=True)
                continue
            context.console.print(f"{program.name}: SIGKILL sent to pid {pid}")
        else:
            context.admin_request("POST", program, "/admin/crash")
            context.console.print(f"{program.name}: crashing")


@chaos.command()
def cut(target: Annotated[str, typer.Argument(help="broker")],
        seconds: Annotated[float, typer.Option(min=0, max=600, help="restore after this long [default: stay cut]")] = 0,
        ) -> None:
    """Cut the network between the services and RabbitMQ (in the fault proxy; the broker is untouched)."""
    if target != "broker":
        raise context.fail(f"Can cut: broker (not {target!r}). For discovery or config-server: `msa chaos stop`.")
    proxy(lambda p: p.disable("rabbitmq"))
    context.console.print("broker link cut: services lose their AMQP connections; orders still land in the outbox")
    if seconds:
        time.sleep(seconds)
        proxy(lambda p: p.enable("rabbitmq"))
        context.console.print(f"broker link restored after {seconds:g} s")


@chaos.command("broker-latency")
def broker_latency(ms: Annotated[int, typer.Option(min=1, max=60_000)],
                   jitter: Annotated[int, typer.Option(min=0)] = 0) -> None:
    """Slow the link to RabbitMQ both ways."""
    for stream in ("upstream", "downstream"):
        proxy(lambda p: p.add_toxic("rabbitmq", "latency", {"latency": ms, "jitter": jitter}, stream=stream))
    context.console.print(f"broker link: +{ms} ms each way")


@chaos.command("broker-toxic")
def broker_toxic(kind: Annotated[str, typer.Argument(help="bandwidth | reset_peer | timeout | latency")],
                 attribute: Annotated[list[str], typer.Argument(help="e.g. rate=50 (KB/s), timeout=500 (ms)")],
                 stream: Annotated[str, typer.Option(help="upstream | downstream")] = "downstream") -> None:
    """Any toxic of the fault proxy on the link to RabbitMQ (Toxiproxy's names and attributes)."""
    try:
        attributes = {k: int(v) for k, v in (a.split("=", 1) for a in attribute)}
    except ValueError:
        raise context.fail(f"attributes are name=number, e.g. rate=50 (got {' '.join(attribute)!r})") from None
    added = proxy(lambda p: p.add_toxic("rabbitmq", kind, attributes, stream=stream))
    context.console.print(f"broker link: {added['name']} {added['attributes']} ({stream})")


@chaos.command()
def stop(program: Annotated[str, typer.Argument(help="discovery or config-server")]) -> None:
    """An infrastructure outage: stop discovery or the config server (services keep what they cached)."""
    if program not in OUTAGE_PROGRAMS:
        raise context.fail(f"Can stop: {', '.join(OUTAGE_PROGRAMS)} (for services: `msa chaos crash`).")
    try:
        topo = context.build_topology()
        topo.stop(program)
    except TopologyError as exc:
        raise context.fail(str(exc)) from None
    context.console.print(f"{program} stopped" + _as_container(topo, program))


@chaos.command()
def start(program: Annotated[str, typer.Argument(help="discovery or config-server")]) -> None:
    """End an outage started with `msa chaos stop`."""
    if program not in OUTAGE_PROGRAMS:
        raise context.fail(f"Can start: {', '.join(OUTAGE_PROGRAMS)}.")
    try:
        topo = context.build_topology()
        topo.start(program)
    except TopologyError as exc:
        raise context.fail(str(exc)) from None
    context.console.print(f"{program} started" + _as_container(topo, program))


def _as_container(topo: Topology, program: str) -> str:
    """ (the consul container)" in compose mode, where the program runs under another service name."""
    if not context.is_compose(topo) or topo.service(program) == program:
        return ""
    return f" (the {topo.service(program)} container)"


def stopped_infrastructure(topo: Topology) -> list[str]:
    """What heal restarts and list shows as stopped: discovery and the config server; in compose every program
    whose container is down (a `docker compose kill` is not restarted by compose)."""
    if context.is_compose(topo):
        return topo.stopped()
    return [name for name in OUTAGE_PROGRAMS if topo.pid(name) is None]


@chaos.command("list")
def list_faults() -> None:
    """Every fault in force: per instance, in the broker link, and stopped infrastructure."""
    topo = context.build_topology()
    table = Table(title="faults in force", title_justify="left")
    for col in ("where", "fault", "scope"):
        table.add_column(col)
    for program in (p for p in topo.spec.programs if p.registers):
        listed = context.admin_request("GET", program, "/admin/faults", absent_ok=True)
        for f in listed.json()["faults"] if listed is not None else []:
            what = {"latency": f"latency {f['latency_ms']}+{f['jitter_ms']} ms", "error": f"error {f['status']}",
                    "hang": "hang"}[f["kind"]]
            scope = f"route {f['route'] or '*'}, p={f['probability']:g}" + (" (config)" if f["id"].startswith("config")
                                                                           else f" ({f['id']})")
            table.add_row(program.name, what, scope)
    try:
        link = proxy(lambda p: p.proxy("rabbitmq"))
        if not link["enabled"]:
            table.add_row("broker link", "cut", "every service")
        for t in link["toxics"]:
            table.add_row("broker link", f"{t['type']} {t['attributes']}", t["stream"])
    except typer.Exit:
        table.add_row("broker link", "fault proxy not answering", "")
    try:
        for name in stopped_infrastructure(topo):
            table.add_row(name, "stopped", "")
    except TopologyError as exc:
        raise context.fail(str(exc)) from None
    context.console.print(table if table.rows else "No fault in force.")


@chaos.command()
def heal(timeout: Annotated[float, typer.Option(help="seconds to wait for everything to pass again")] = 30.0) -> None:
    """Remove every fault, restore the broker link, restart stopped infrastructure; wait until all is passing."""
    topo = context.build_topology()
    try:
        for name in stopped_infrastructure(topo):
            topo.start(name)
            context.console.print(f"{name} started")
        proxy(lambda p: p.reset())
        healed = 0
        deadline = time.monotonic() + timeout
        for program in (p for p in topo.spec.programs if p.registers):
            while True:  # a crashed instance may still be restarting
                try:
                    r = context.admin_request("DELETE", program, "/admin/faults", absent_ok=True)
                    healed += r.json()["healed"] if r is not None else 0
                    break
                except typer.Exit:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
        topo.wait_ready(max(1.0, deadline - time.monotonic()))
        while unready := not_ready(topo):  # e.g. still reconnecting to the broker after a cut
            if time.monotonic() > deadline:
                raise context.fail(f"not ready after {timeout:g} s (GET /ready): {', '.join(unready)}")
            time.sleep(0.2)
    except TopologyError as exc:
        raise context.fail(str(exc)) from None
    context.console.print(f"[green]Healed[/]: {healed} fault(s) removed, broker link restored, every instance passing "
                         "and ready.")


def not_ready(topo: Topology) -> list[str]:
    """Instances whose GET /ready (database, broker, config) is not 200; the gateway has no /ready."""
    unready = []
    with httpx.Client(timeout=2, trust_env=False) as client:
        for program in (p for p in topo.spec.programs if p.registers):
            try:
                status = client.get(program.url + "/ready").status_code
            except httpx.HTTPError:
                status = 0
            if status not in (200, 404):
                unready.append(program.name)
    return unready


def proxy(action: Callable[[FaultProxyClient], Awaitable[Any]]) -> Any:
    """Run one action against the fault proxy (its client lives in this call's event loop)."""
    url = context.build_topology().spec.env.get("FAULTPROXY_URL", "http://127.0.0.1:8474")

    async def go() -> Any:
        async with FaultProxyClient(url) as client:
            return await action(client)

    try:
        return asyncio.run(go())
    except (FaultProxyError, httpx.HTTPError) as exc:
        raise context.fail(f"the fault proxy at {url} refused or is not answering: {exc}") from None
