"""What every `msa` command shares: the target (local or compose), the topology it acts on, the admin token, and
how a command prints and fails. Its own module so that the commands (chaos, canary, trace, …) and app.py, which
gathers them, all import it, and none imports app.py (tests replace `context.build_topology`)."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console

from .compose import ComposeTopology
from .errors import TopologyError
from .runner import Topology
from .spec import Program, default_spec

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)


class Target(str, Enum):
    local = "local"
    compose = "compose"


# Set by the `msa` callback from --var-dir and --target.
state: dict[str, Path | str | None] = {"var_dir": None, "target": None}


def target() -> str:
    """`local` (supervisord, spec.default_spec) or `compose` (docker-compose.yml): --target, else $MSA_TARGET."""
    return str(state["target"] or os.environ.get("MSA_TARGET") or Target.local.value)


def build_topology() -> Topology | ComposeTopology:
    """The topology every command acts on (tests replace this to run stand-in programs)."""
    if target() == Target.compose.value:
        try:
            return ComposeTopology()
        except TopologyError as exc:
            raise fail(str(exc)) from None
    return Topology(default_spec(var_dir=state["var_dir"]))


def is_compose(topo: object) -> bool:
    return isinstance(topo, ComposeTopology)


def admin_token() -> str:
    """The admin token of the target: $MSA_ADMIN_TOKEN; in compose mode also MSA_ADMIN_TOKEN from its `.env`."""
    from . import compose_config, spec

    return compose_config.admin_token() if target() == Target.compose.value else spec.admin_token()


def fail(message: str, code: int = 1) -> typer.Exit:
    # markup=False: messages quote supervisord states like [BACKOFF], which rich would take for markup.
    err.print(message, style="red", markup=False, soft_wrap=True)
    return typer.Exit(code)


def admin_request(method: str, program: Program, path: str, *, absent_ok: bool = False, **kwargs: Any
                  ) -> httpx.Response | None:
    """Call an instance's admin API; `absent_ok`: None when it has no such endpoint (the gateway has no fault API)."""
    headers = {"Authorization": f"Bearer {admin_token()}"}
    try:
        r = httpx.request(method, program.url + path, headers=headers, timeout=5, **kwargs)
    except httpx.HTTPError as exc:
        status = "`msa --target compose status`" if target() == "compose" else "`make status`"
        raise fail(f"{program.name} is not answering at {program.url} ({type(exc).__name__}); "
                   f"is the sandbox up? {status}") from None
    if r.status_code == 404 and absent_ok:
        return None
    if r.status_code >= 400:
        detail = r.json().get("detail", r.text) if r.headers.get("content-type", "").endswith("json") else r.text
        raise fail(f"{program.name} refused: {r.status_code} {detail}")
    return r
