"""`msa logs [NAME…] [--trace ID] [--level L] [--since 5m] [--follow] [--json]`: every program's log, merged by time
(msa_cli.logview). Also runnable alone, as `python -m msa_cli.logs_cmd …` (the black-box tests do)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from . import context, logview
from .spec import default_spec

__all__ = ["logs"]


def _msa_option(ctx: typer.Context, key: str) -> str | Path | None:
    """`msa --var-dir …/--target …` when run as `msa logs` (app.py's callback keeps them in context.state); None
    when run alone (then that state, if set at all, belongs to some other invocation)."""
    if ctx.parent is None:
        return None
    return context.state.get(key)


def logs(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(
        help="Programs (catalog-2, gateway, supervisord) or services (catalog: every instance) [default: all]",
        show_default=False)] = None,
    trace: Annotated[str | None, typer.Option(help="Only lines of this trace (the x-trace-id header; 0x optional)")]
    = None,
    level: Annotated[str | None, typer.Option(help="Only this level and above: DEBUG, INFO, WARNING, ERROR")] = None,
    since: Annotated[str | None, typer.Option(help="Only lines since 30s, 5m, 2h, 1d ago or an ISO time")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing lines as they are written")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Each line's JSON object, with `program` added")] = False,
    var_dir: Annotated[Path | None, typer.Option(
        help="The var dir whose log/ to read [default: <repo>/var, or $MSA_VAR_DIR]")] = None,
    seconds: Annotated[float | None, typer.Option(help="Stop --follow after this many seconds")] = None,
) -> None:
    """Every program's log as one time-ordered view; local mode reads <var dir>/log/*.log, compose mode
    `docker compose logs`."""
    try:
        keep = logview.Filter(tuple(names or ()), trace, level, logview.parse_since(since) if since else None)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    emit = logview.printer(json_, sys.stdout, Console(highlight=False, soft_wrap=True))
    target = _msa_option(ctx, "target") or os.environ.get("MSA_TARGET") or "local"
    try:
        if target == "compose":
            logview.run_compose(keep.since, follow, keep, emit, seconds)
            return
        log_dir = Path(var_dir or _msa_option(ctx, "var_dir") or default_spec().var_dir) / "log"
        if not log_dir.is_dir():
            Console(stderr=True).print(f"No logs at {log_dir} (nothing has run there yet: `make up`).", style="red",
                                       markup=False)
            raise typer.Exit(1)
        if follow:
            logview.follow_files(log_dir, keep, emit, seconds)
        else:
            for line in logview.merged([logview.FileTail(p) for p in logview.log_files(log_dir, keep)], keep):
                emit(line)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None  # Ctrl-C ends --follow: that is how it is meant to end, not an error
    except BrokenPipeError:
        # `msa logs | head`: the reader has gone; say nothing more (stdout cannot take it) and exit quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None
    except RuntimeError as exc:  # TopologyError (a compose file problem) or docker compose failing
        Console(stderr=True).print(str(exc), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None


if __name__ == "__main__":
    typer.run(logs)
