"""The `msa` command. Each command is a thin layer over runner.Topology: it prints, the runner does.

Expected failures (RabbitMQ down, a port taken, nothing running) end in one clear message and a non-zero exit,
never a traceback. Later commands (`msa chaos ...`, `msa load`) go beside these, e.g. as `app.add_typer(...)`.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

from . import load as load_generator
from . import status_view
from .canary import canary
from .chaos import chaos
from .compose import ComposeTopology
from .logs_cmd import logs
from .trace_cmd import trace
from .preflight import mask_url
from .runner import AlreadyRunning, NotRunning, Topology, TopologyError
from .spec import default_spec

app = typer.Typer(
    name="msa",
    help="Run the msa-sandbox topology as local processes and look at it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(highlight=False)
err = Console(stderr=True, highlight=False)



class Target(str, Enum):
    local = "local"
    compose = "compose"


_state: dict[str, Path | str | None] = {"var_dir": None, "target": None}


def target() -> str:
    """`local` (supervisord, spec.default_spec) or `compose` (docker-compose.yml): --target, else $MSA_TARGET."""
    return str(_state["target"] or os.environ.get("MSA_TARGET") or Target.local.value)


def build_topology() -> Topology | ComposeTopology:
    """The topology every command acts on (tests replace this to run stand-in programs)."""
    if target() == Target.compose.value:
        try:
            return ComposeTopology()
        except TopologyError as exc:
            raise fail(str(exc)) from None
    return Topology(default_spec(var_dir=_state["var_dir"]))


def is_compose(topo: object) -> bool:
    return isinstance(topo, ComposeTopology)


def admin_token() -> str:
    """The admin token of the target: $MSA_ADMIN_TOKEN; in compose mode also MSA_ADMIN_TOKEN from its `.env`."""
    from . import compose, spec

    return compose.admin_token() if target() == Target.compose.value else spec.admin_token()


@app.callback()
def _options(
    var_dir: Annotated[
        Path | None,
        typer.Option(help="Where runtime state, logs and traces live [default: <repo>/var, or $MSA_VAR_DIR]"),
    ] = None,
    target: Annotated[
        Target,
        typer.Option(envvar="MSA_TARGET", case_sensitive=False,
                     help="local: the processes of `make up`; compose: the docker compose stack (docker-compose.yml)"),
    ] = Target.local,
) -> None:
    _state["var_dir"] = var_dir
    _state["target"] = target.value


app.add_typer(chaos, name="chaos")
app.add_typer(canary, name="canary")
app.command()(logs)
app.command("trace")(trace)


def fail(message: str, code: int = 1) -> typer.Exit:
    # markup=False: messages quote supervisord states like [BACKOFF], which rich would take for markup.
    err.print(message, style="red", markup=False, soft_wrap=True)
    return typer.Exit(code)


@app.command()
def up(
    timeout: Annotated[
        float | None, typer.Option(help="Seconds to wait for everything to be healthy [default: 20; compose: 300]")
    ] = None,
) -> None:
    """Start the whole topology and wait until every instance is healthy."""
    topo = build_topology()
    try:
        with console.status("Starting: waiting for every instance to register as healthy…"):
            elapsed = topo.up() if timeout is None else topo.up(timeout)
    except AlreadyRunning:
        console.print("[green]Already up.[/] (`make status` shows its health, `make down` stops it.)")
        print_urls(topo)
        return
    except TopologyError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("Interrupted; stopped everything.", 130) from None
    print_urls(topo)
    if is_compose(topo):
        console.print(f"[green]Up in {elapsed:.1f} s.[/] Crashed containers are restarted by compose "
                      "(`restart: unless-stopped`). `msa --target compose status` shows health, "
                      "`msa --target compose down` stops everything.", soft_wrap=True)
        return
    console.print(
        f"[green]Up in {elapsed:.1f} s.[/] Crashed processes are restarted by supervisord. "
        "`make status` shows health, `make down` stops everything."
    )


@app.command()
def down() -> None:
    """Stop everything; afterwards nothing of ours is running or listening."""
    topo = build_topology()
    try:
        with console.status("Stopping…"):
            stopped = topo.down()
    except TopologyError as exc:
        raise fail(str(exc)) from None
    console.print("Stopped. Nothing is left running." if stopped else "Nothing was running.")


@app.command()
def status() -> None:
    """What runs, its health, whether discovery lists it as passing, and what each instance reports (breakers,
    outbox backlog, dead letters, config version, faults); then the synthetic probe's last result. Exit 1 unless
    every program is healthy and passing (a failing probe is shown, not counted: it is a symptom to look into)."""
    topo = build_topology()
    try:
        rows = topo.status()
    except NotRunning as exc:
        console.print(str(exc), markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(status_view.status_table(rows))
    figures = status_view.gather(rows, admin_token())
    if figures:
        console.print(status_view.figures_table(figures))
    probe = next((r for r in rows if r.name == "probe" and r.healthy), None)
    if probe is not None:
        with httpx.Client(timeout=2) as client:
            console.print(status_view.probe_line(status_view.probe_result(client, probe.url)), soft_wrap=True)
    if not all(r.healthy and r.passing is not False for r in rows):
        raise typer.Exit(1)


def urls_table(topo: Topology) -> Table:
    spec = topo.spec
    table = Table(title="msa-sandbox", title_justify="left")
    table.add_column("")
    table.add_column("URL", overflow="fold")  # never truncated with "…": a person copies these
    table.add_column("API docs")
    for p in spec.programs:
        home = p.url if p.home == "/" else p.url + p.home
        table.add_row(p.name, home, p.docs or "")
    table.add_row("RabbitMQ", mask_url(spec.amqp_url), "")
    return table


def print_urls(topo: Topology) -> None:
    console.print(urls_table(topo))
    if is_compose(topo):
        console.print("logs:   docker compose logs -f <service>\ntraces: http://127.0.0.1:16686 (Jaeger)",
                      soft_wrap=True)
        return
    var = topo.spec.var_dir
    console.print(f"logs:   {_shown(var / 'log')}/<program>.log\ntraces: {_shown(var / 'traces')}", soft_wrap=True)


def _shown(path: Path) -> str:
    # var/log reads better than /home/me/src/msa-sandbox/var/log when run from the repo.
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else str(path)


def main() -> None:
    app(prog_name="msa")


@app.command()
def load(
    rate: Annotated[float, typer.Option(min=0.1, max=load_generator.MAX_RATE, help="user steps per second")] = 10.0,
    seconds: Annotated[float, typer.Option(min=1, max=load_generator.MAX_SECONDS, help="how long")] = 30.0,
) -> None:
    """Realistic traffic through the gateway, reported live: success rate and latency, second by second."""
    import asyncio

    import httpx

    gateway = build_topology().spec.program("gateway").url
    try:
        report = asyncio.run(load_generator.run(gateway, rate, seconds))
    except httpx.HTTPError as exc:
        raise fail(f"the gateway at {gateway} is not answering ({type(exc).__name__}); is the sandbox up?") from None
    except KeyboardInterrupt:
        raise fail("Interrupted.", 130) from None
    failed = sum(report.total.failures.values())
    console.print(f"{report.total.requests} requests, {failed} failed.")
    if failed:
        raise typer.Exit(1)
