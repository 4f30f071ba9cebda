"""`msa status`'s view: per instance, what runs and its health, and what the instance itself reports — breaker
states toward its targets, outbox backlog, dead-letter queue depth, the config version it runs, active faults —
then the synthetic probe's last result.

The figures are read from each instance's /metrics with prometheus_client's parser: the same numbers Prometheus
stores and Grafana draws, so the terminal and the dashboard never disagree. Faults come from the admin API (they
are not a metric). Instances are asked in parallel, each with a short time-out: one hung instance costs the
command two seconds, not two seconds per question.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from rich.markup import escape
from rich.table import Table

from msa_kit.metrics import BREAKER_STATE_NAMES, samples

from .http_checks import ProgramStatus

UNKNOWN = "?"  # the instance would not say (unreachable, or no admin token)
NONE = "–"  # the instance has no such thing (the gateway has no outbox, the user service consumes no events)


@dataclass(frozen=True)
class InstanceFigures:
    breakers: str = NONE  # "closed" when every breaker is, else the ones that are not: "catalog: open"
    outbox: str = NONE
    dlq: str = NONE
    config: str = NONE
    faults: str = NONE


def figures_from_metrics(text: str) -> dict[str, str]:
    """The status columns an instance's /metrics answers: breakers, outbox, dlq, config."""
    found = samples(text)
    states = {labels.get("service", ""): BREAKER_STATE_NAMES.get(int(v), str(v)) for labels, v in
              found.get("msa_breaker_state", [])}
    not_closed = ", ".join(f"{svc}: {state}" for svc, state in sorted(states.items()) if state != "closed")
    out = {"breakers": not_closed or ("closed" if states else NONE)}
    backlog = found.get("msa_outbox_backlog")
    out["outbox"] = str(int(backlog[0][1])) if backlog else NONE
    dlq = [v for labels, v in found.get("msa_queue_messages", []) if labels.get("queue") == "dlq"]
    out["dlq"] = str(int(dlq[0])) if dlq else NONE
    info = [labels for labels, _ in found.get("msa_config_info", [])]
    out["config"] = short_version(info[0].get("config_version", "")) if info else NONE
    return out


def short_version(version: str) -> str:
    # A digest or a commit id: its first 8 characters tell two versions apart, as `git log --oneline` does.
    return version[:8] if version and version != "None" else NONE


def faults_text(doc: dict[str, Any]) -> str:
    active = ", ".join(f["kind"] + (f" {f['route']}" if f.get("route") else "") for f in doc.get("faults", []))
    return escape(active) or NONE


def instance_figures(client: httpx.Client, row: ProgramStatus, token: str) -> InstanceFigures:
    try:
        r = client.get(row.url + "/metrics")
        r.raise_for_status()
        metrics = figures_from_metrics(r.text)
    except (httpx.HTTPError, ValueError):
        metrics = {"breakers": UNKNOWN, "outbox": UNKNOWN, "dlq": UNKNOWN, "config": UNKNOWN}
    try:
        r = client.get(row.url + "/admin/faults", headers={"Authorization": f"Bearer {token}"})
        r.raise_for_status()
        faults = faults_text(r.json())
    except (httpx.HTTPError, ValueError, KeyError):
        faults = UNKNOWN
    return InstanceFigures(faults=faults, **metrics)


def gather(rows: list[ProgramStatus], token: str, timeout: float = 2.0) -> dict[str, InstanceFigures]:
    """Figures of every healthy registered instance, asked in parallel."""
    asked = [r for r in rows if r.passing is not None and r.healthy]
    if not asked:
        return {}
    with httpx.Client(timeout=timeout) as client, ThreadPoolExecutor(max_workers=min(8, len(asked))) as pool:
        return dict(zip((r.name for r in asked), pool.map(lambda r: instance_figures(client, r, token), asked)))


def status_table(rows: list[ProgramStatus]) -> Table:
    """What runs: the process manager's state, the health endpoint's answer, discovery's opinion."""
    table = Table()
    # Names and one-word states are never cut or folded: people read them, and type names into `msa chaos`.
    for col in ("program", "state", "pid", "port", "health", "passing"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        state = r.state if r.state == "RUNNING" else f"[yellow]{r.state}[/]"
        health = f"[green]{r.health}[/]" if r.healthy else f"[red]{r.health}[/]"
        passing = {None: NONE, True: "[green]yes[/]", False: "[red]no[/]"}[r.passing]
        table.add_row(r.name, state, str(r.pid or NONE), str(r.port), health, passing)
    return table


def figures_table(figures: dict[str, InstanceFigures]) -> Table:
    """What each instance reports about itself. A second table, not more columns: both fit 80 columns."""
    table = Table(title="reported by each instance (/metrics, /admin/faults)", title_justify="left")
    table.add_column("instance", no_wrap=True)
    table.add_column("breakers", overflow="fold")
    for col in ("outbox", "dlq"):
        table.add_column(col, no_wrap=True, justify="right")
    table.add_column("config", no_wrap=True)
    table.add_column("faults", overflow="fold")
    for name, f in figures.items():
        breakers = f.breakers if f.breakers in ("closed", NONE, UNKNOWN) else f"[yellow]{escape(f.breakers)}[/]"
        dlq = f"[red]{f.dlq}[/]" if f.dlq.isdigit() and int(f.dlq) > 0 else f.dlq
        faults = f.faults if f.faults in (NONE, UNKNOWN) else f"[red]{f.faults}[/]"
        table.add_row(name, breakers, f.outbox, dlq, escape(f.config), faults)
    return table


def probe_result(client: httpx.Client, url: str) -> dict[str, Any] | None:
    try:
        r = client.get(url + "/probe")
        r.raise_for_status()
        return r.json()
    except (httpx.HTTPError, ValueError):
        return None


def probe_line(doc: dict[str, Any] | None, now: float | None = None) -> str:
    """One line on the probe's last synthetic transaction (rich markup)."""
    if doc is None:
        return "probe: [yellow]not answering[/]"
    runs = doc.get("runs", 0)
    counts = f"{runs} run{'' if runs == 1 else 's'}, {doc.get('failures', 0)} failed"
    if not doc.get("enabled", True):
        return f"probe: paused (probe.enabled is false in config-repo/probe.yml; {counts})"
    if not doc.get("finished_at"):
        return f"probe: no transaction finished yet (one every {doc.get('period_s', '?')} s)"
    finished = datetime.fromisoformat(doc["finished_at"])  # ISO 8601 with its offset (Z on 3.11 too)
    ago = max(0.0, (now if now is not None else time.time()) - finished.timestamp())
    took = f"{doc.get('duration_ms', 0) / 1000:.2f} s"
    if doc.get("ok"):
        return f"probe: [green]OK[/] — a synthetic order placed, confirmed and cancelled in {took}, {ago:.0f} s ago " \
               f"({counts})"
    reason = escape(str(doc.get("error") or "no reason given"))
    return f"probe: [red]FAILING[/] at {escape(str(doc.get('step') or '?'))}: {reason} " \
           f"({ago:.0f} s ago; {counts})"
