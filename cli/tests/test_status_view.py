"""`msa status`'s view: the figures read from an instance's /metrics (made here by prometheus_client itself, in a
registry of the test's own), the probe's line, and the tables as a person sees them."""

from __future__ import annotations

import io
from datetime import datetime, timezone

from prometheus_client import CollectorRegistry, Gauge, Info, generate_latest
from rich.console import Console

from msa_cli.http_checks import ProgramStatus
from msa_cli.status_view import (InstanceFigures, figures_from_metrics, figures_table, probe_line, status_table)


def exposition(breakers: dict[str, int], backlog: int | None, dlq: int | None, version: str | None) -> str:
    registry = CollectorRegistry()
    state = Gauge("msa_breaker_state", "breaker", ["service"], registry=registry)
    for service, value in breakers.items():
        state.labels(service).set(value)
    if backlog is not None:
        Gauge("msa_outbox_backlog", "backlog", registry=registry).set(backlog)
    if dlq is not None:
        queues = Gauge("msa_queue_messages", "queues", ["queue"], registry=registry)
        queues.labels("main").set(7)
        queues.labels("dlq").set(dlq)
    if version is not None:
        Info("msa_config", "config", registry=registry).info({"config_version": version, "source": "config-server"})
    return generate_latest(registry).decode()


def rendered(renderable: object) -> str:
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(renderable)
    return out.getvalue()


def test_an_order_instance_with_an_open_breaker_a_backlog_and_dead_letters():
    text = exposition({"catalog": 2, "user": 0}, backlog=12, dlq=3, version="4f2a9c1e77d0b3aa")
    assert figures_from_metrics(text) == {"breakers": "catalog: open", "outbox": "12", "dlq": "3",
                                          "config": "4f2a9c1e"}


def test_closed_breakers_and_what_an_instance_does_not_have():
    # The gateway: breakers, no outbox, no queues of its own.
    assert figures_from_metrics(exposition({"user": 0, "order": 0}, None, None, "v1")) == {
        "breakers": "closed", "outbox": "–", "dlq": "–", "config": "v1"}
    assert figures_from_metrics(exposition({}, 0, 0, None)) == {"breakers": "–", "outbox": "0", "dlq": "0",
                                                                "config": "–"}
    assert figures_from_metrics(exposition({"catalog": 1}, 0, None, "v1"))["breakers"] == "catalog: half-open"


def test_the_tables_fit_80_columns_and_never_cut_a_name():
    rows = [ProgramStatus("config-server", "RUNNING", 101, 8888, "http://127.0.0.1:8888", True, "200", None),
            ProgramStatus("catalog-2", "RUNNING", 102, 8202, "http://127.0.0.1:8202", True, "200", True),
            ProgramStatus("order-1", "BACKOFF", None, 8301, "http://127.0.0.1:8301", False, "refused", False)]
    text = rendered(status_table(rows))
    assert all(len(line) <= 80 for line in text.splitlines())
    for name in ("config-server", "catalog-2", "order-1", "BACKOFF", "refused"):
        assert name in text
    figures = {"order-2": InstanceFigures("catalog: open, user: half-open", "12", "3", "4f2a9c1e", "latency /orders")}
    text = rendered(figures_table(figures))
    assert all(len(line) <= 80 for line in text.splitlines())
    row = next(line for line in text.splitlines() if "order-2" in line)
    assert "12" in row and "3" in row and "4f2a9c1e" in row and "catalog: open" in text and "latency" in text


def test_the_probe_line_says_ok_failing_paused_or_not_yet():
    now = datetime(2026, 12, 7, 9, 0, 10, tzinfo=timezone.utc).timestamp()
    ok = {"ok": True, "enabled": True, "finished_at": "2026-12-07T09:00:04Z", "duration_ms": 412.0, "runs": 30,
          "failures": 2, "period_s": 10}
    assert probe_line(ok, now) == ("probe: [green]OK[/] — a synthetic order placed, confirmed and cancelled in "
                                   "0.41 s, 6 s ago (30 runs, 2 failed)")
    # A reason with brackets in it is shown as it is, not taken for markup.
    failing = {**ok, "ok": False, "step": "place", "error": "503 [b]Dependency unavailable[/b]"}
    shown = " ".join(rendered(probe_line(failing, now)).split())
    assert shown == "probe: FAILING at place: 503 [b]Dependency unavailable[/b] (6 s ago; 30 runs, 2 failed)"
    assert probe_line({**ok, "enabled": False}, now).startswith("probe: paused")
    assert probe_line({"enabled": True, "finished_at": None, "period_s": 10}).startswith("probe: no transaction")
    assert "not answering" in probe_line(None)
