"""`msa trace [ID] [--last|--slowest] [--errors] [--service S] [--list] [--jaeger URL]`: one trace as a terminal
waterfall (msa_cli.traces). Local mode reads `<var dir>/traces/*.jsonl`; the compose target asks Jaeger.
Also runnable alone, as `python -m msa_cli.trace_cmd …` (the black-box test does)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console

from . import context
from . import traces as tr

__all__ = ["trace", "choose", "JAEGER_URL"]

JAEGER_URL = "http://127.0.0.1:16686"  # the compose stack's Jaeger query API (docker-compose.yml publishes it)


def choose(found: list[tr.Trace], *, slowest: bool = False, errors: bool = False,
           service: str | None = None) -> list[tr.Trace]:
    """The traces that pass the filters, best first: the slowest with --slowest, else the newest."""
    keep = [t for t in found if (not errors or t.errors) and (service is None or service in t.services)]
    return sorted(keep, key=(lambda t: t.duration) if slowest else (lambda t: t.start), reverse=True)


def _target_and_var_dir(var_dir: Path | None) -> tuple[str, Path | None]:
    """The target (`msa --target`, else $MSA_TARGET) and, for local, the var dir: --var-dir, else the topology's
    (`msa --var-dir`, $MSA_VAR_DIR, <repo>/var)."""
    target = context.target()
    if target == "compose" or var_dir is not None:
        return target, var_dir
    return target, Path(context.build_topology().spec.var_dir)  # type: ignore[union-attr]


def trace(
    trace_id: Annotated[str | None, typer.Argument(
        help="The trace to show (the x-trace-id header; 0x optional) [default: the newest, as --last]",
        show_default=False)] = None,
    last: Annotated[bool, typer.Option("--last", help="The newest trace (the default without an id)")] = False,
    slowest: Annotated[bool, typer.Option("--slowest", help="The longest trace")] = False,
    errors: Annotated[bool, typer.Option("--errors", help="Only traces with a span in ERROR")] = False,
    service: Annotated[str | None, typer.Option(help="Only traces with a span of this service (order, catalog…)")]
    = None,
    list_: Annotated[bool, typer.Option("--list", help="A table of recent traces instead of one waterfall")] = False,
    limit: Annotated[int, typer.Option(help="At most this many traces in --list (Jaeger: per service asked)")] = 20,
    jaeger: Annotated[str | None, typer.Option(
        help=f"Read spans from this Jaeger query API [default: {JAEGER_URL} with --target compose, else local files]",
        show_default=False)] = None,
    var_dir: Annotated[Path | None, typer.Option(
        help="The var dir whose traces/ to read [default: <repo>/var, or $MSA_VAR_DIR]")] = None,
) -> None:
    """One trace as a waterfall: every span on one time axis, children under their parents, the broker's wait."""
    if last and slowest:
        raise typer.BadParameter("--last and --slowest choose differently: give one")
    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    target, local_dir = _target_and_var_dir(var_dir)
    jaeger = jaeger or (JAEGER_URL if target == "compose" and var_dir is None else None)
    where = jaeger or str(Path(local_dir or ".") / "traces")
    try:
        if trace_id is not None and not list_:
            spans = tr.jaeger_spans(jaeger, trace_id) if jaeger else tr.local_spans(local_dir or ".", trace_id)
            found = tr.group(spans)
        else:
            found = tr.group(tr.jaeger_recent(jaeger, limit, service) if jaeger else tr.local_spans(local_dir or "."))
    except httpx.HTTPError as exc:
        err.print(f"Jaeger at {jaeger} did not answer: {exc} (is the compose stack up?)", style="red", markup=False)
        raise typer.Exit(1) from None
    chosen = choose(found, slowest=slowest, errors=errors, service=service)
    if list_:
        if not chosen:
            err.print(f"No traces at {where}{' that match' if errors or service else ''}.", style="red", markup=False)
            raise typer.Exit(1)
        out.print(tr.render_list(chosen[:limit]))
        return
    if not chosen:
        what = f"trace {trace_id}" if trace_id else "traces" + (" that match" if errors or service else "")
        err.print(f"No spans of {what} at {where} (yet? each process writes its spans every few hundred ms).",
                  style="red", markup=False)
        raise typer.Exit(1)
    out.print(tr.render_waterfall(chosen[0].spans, width=out.width))


if __name__ == "__main__":
    typer.run(trace)
