"""The `msa` command. Each command is a thin layer over runner.Topology: it prints, the runner does.

Expected failures (RabbitMQ down, a port taken, nothing running) end in one clear message and a non-zero exit,
never a traceback. Later commands (`msa chaos ...`, `msa load`) go beside these, e.g. as `app.add_typer(...)`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.table import Table

from . import load as load_generator
from . import context, contracts, status_view
from .canary import canary
from .chaos import chaos
from .locks import locks
from .logs_cmd import logs
from .trace_cmd import trace
from .preflight import mask_url
from .errors import AlreadyRunning, NotRunning, TopologyError
from .runner import Topology

app = typer.Typer(
    name="msa",
    help="Run the msa-sandbox topology as local processes and look at it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _options(
    var_dir: Annotated[
        Path | None,
        typer.Option(help="Where runtime state, logs and traces live [default: <repo>/var, or $MSA_VAR_DIR]"),
    ] = None,
    target: Annotated[
        context.Target,
        typer.Option(envvar="MSA_TARGET", case_sensitive=False,
                     help="local: the processes of `make up`; compose: the docker compose stack (docker-compose.yml)"),
    ] = context.Target.local,
) -> None:
    context.state["var_dir"] = var_dir
    context.state["target"] = target.value


app.add_typer(chaos, name="chaos")
app.add_typer(canary, name="canary")
app.add_typer(contracts.cli, name="contracts")
app.add_typer(locks, name="locks")
app.command()(logs)
app.command("trace")(trace)


@app.command()
def up(
    timeout: Annotated[
        float | None, typer.Option(help="Seconds to wait for everything to be healthy [default: 20; compose: 300]")
    ] = None,
) -> None:
    """Start the whole topology and wait until every instance is healthy."""
    topo = context.build_topology()
    try:
        with context.console.status("Starting: waiting for every instance to register as healthy…"):
            elapsed = topo.up() if timeout is None else topo.up(timeout)
    except AlreadyRunning:
        context.console.print("[green]Already up.[/] (`make status` shows its health, `make down` stops it.)")
        print_urls(topo)
        return
    except TopologyError as exc:
        raise context.fail(str(exc)) from None
    except KeyboardInterrupt:
        raise context.fail("Interrupted; stopped everything.", 130) from None
    print_urls(topo)
    if context.is_compose(topo):
        context.console.print(f"[green]Up in {elapsed:.1f} s.[/] Crashed containers are restarted by compose "
                      "(`restart: unless-stopped`). `msa --target compose status` shows health, "
                      "`msa --target compose down` stops everything.", soft_wrap=True)
        return
    context.console.print(
        f"[green]Up in {elapsed:.1f} s.[/] Crashed processes are restarted by supervisord. "
        "`make status` shows health, `make down` stops everything."
    )


@app.command()
def down() -> None:
    """Stop everything; afterwards nothing of ours is running or listening."""
    topo = context.build_topology()
    try:
        with context.console.status("Stopping…"):
            stopped = topo.down()
    except TopologyError as exc:
        raise context.fail(str(exc)) from None
    context.console.print("Stopped. Nothing is left running." if stopped else "Nothing was running.")


@app.command()
def status() -> None:
    """What runs, its health, whether discovery lists it as passing, and what each instance reports (breakers,
    outbox backlog, dead letters, config version, faults); then the synthetic probe's last result. Exit 1 unless
    every program is healthy and passing (a failing probe is shown, not counted: it is a symptom to look into)."""
    topo = context.build_topology()
    try:
        rows = topo.status()
    except NotRunning as exc:
        context.console.print(str(exc), markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    context.console.print(status_view.status_table(rows))
    figures = status_view.gather(rows, context.admin_token())
    if figures:
        context.console.print(status_view.figures_table(figures))
    probe = next((r for r in rows if r.name == "probe" and r.healthy), None)
    if probe is not None:
        with httpx.Client(timeout=2) as client:
            context.console.print(status_view.probe_line(status_view.probe_result(client, probe.url)), soft_wrap=True)
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
    context.console.print(urls_table(topo))
    if context.is_compose(topo):
        context.console.print("logs:   docker compose logs -f <service>\ntraces: http://127.0.0.1:16686 (Jaeger)",
                      soft_wrap=True)
        return
    var = topo.spec.var_dir
    context.console.print(f"logs:   {_shown(var / 'log')}/<program>.log\ntraces: {_shown(var / 'traces')}",
                          soft_wrap=True)


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

    gateway = context.build_topology().spec.program("gateway").url
    try:
        report = asyncio.run(load_generator.run(gateway, rate, seconds))
    except httpx.HTTPError as exc:
        raise context.fail(f"the gateway at {gateway} is not answering ({type(exc).__name__}); "
                           "is the sandbox up?") from None
    except KeyboardInterrupt:
        raise context.fail("Interrupted.", 130) from None
    failed = sum(report.total.failures.values())
    context.console.print(f"{report.total.requests} requests, {failed} failed.")
    if failed:
        raise typer.Exit(1)
