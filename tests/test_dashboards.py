"""The provisioned Grafana dashboard shows real data: every metric its PromQL names is exported, with a sample, by
the running services; every label it groups by exists once Prometheus' relabelling (deploy/prometheus) applied;
and Prometheus keeps exactly the programs that serve /metrics.

A local-mode topology stands in for the containers: same programs, same /metrics. Some series only exist once
something happened (a retry, a breaker's first change of state), so the test makes it happen, then heals."""

from __future__ import annotations

import importlib.util
import json
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from support import Api, Stack, assert_healed, msa
from test_config_refresh import edited, refresh, wait_for
from test_workshop_01_kill_an_instance import resilience
from test_workshop_02_slow_dependency import close_breakers

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
# Words of PromQL that are not metric names (functions and aggregations are recognised by the "(" after them).
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
            "offset", "inf", "nan"}
PROMETHEUS_OWN = {"up"}  # set by Prometheus for every target, never exported


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # strings (label values, legend text)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)  # label matchers, range and subquery selectors
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    names = re.findall(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", expr)
    return {n for n in names if n.lower() not in KEYWORDS}


def grouping_labels(expr: str) -> set[str]:
    return {label.strip() for group in re.findall(r"\bby\s*\(([^)]*)\)", expr) for label in group.split(",")}


def panels() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every provisioned dashboard."""
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            found += [(f"{path.name}: {panel['title']}", t["expr"]) for t in panel.get("targets", []) if t.get("expr")]
    return found


def samples(text: str) -> dict[str, list[dict[str, str]]]:
    """The exposition format's sample lines, by metric name: name → the label sets of its samples."""
    out: dict[str, list[dict[str, str]]] = {}
    for m in re.finditer(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? \S+", text, re.MULTILINE):
        out.setdefault(m.group(1), []).append(dict(re.findall(r'(\w+)="((?:\\.|[^"\\])*)"', m.group(2) or "")))
    return out


def _deploy_tests() -> Any:
    """deploy/tests/test_compose.py, for its relabel(): one implementation of Prometheus' relabelling to trust."""
    spec = importlib.util.spec_from_file_location("deploy_test_compose", ROOT / "deploy/tests/test_compose.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


relabel = _deploy_tests().relabel


def test_the_parser_finds_metric_names_only():
    assert metric_names('sum by (service) (rate(msa_client_attempts_total{job="msa"}[$__rate_interval]))') \
        == {"msa_client_attempts_total"}
    assert metric_names('up{job="msa"} or on (instance) process_resident_memory_bytes') \
        == {"up", "process_resident_memory_bytes"}


def provoke_retries_and_a_breaker(stack: Stack, api: Api) -> None:
    """Series that appear only when something happens: a retry (msa_client_retries_total) and a breaker's first
    change of state (msa_breaker_state). Catalog answering 503 makes order retry (503 is retried, and does not
    count for the breaker); an error storm of 500s opens order's breaker, as in workshop 3. Then heal."""
    known = sorted(api.products())[0]
    assert api.place([{"sku": known, "quantity": 1}]).status_code == 201
    fresh = lambda: [{"sku": f"NONE-{uuid.uuid4().hex[:6]}", "quantity": 1}]
    msa(stack, "chaos", "errors", "catalog", "--status", "503", "--route", "/products")
    try:
        for _ in range(3):
            api.place(fresh())
    finally:
        msa(stack, "chaos", "heal")
    with edited(stack, "order.yml", "breaker: {fail_max: 2, reset_timeout_s: 1}\n"):
        refresh(stack, "order")
        wait_for(lambda: all(stack.admin(p)["settings"]["breaker"]["fail_max"] == 2 for p in ("order-1", "order-2")),
                 what="the breaker settings")
        msa(stack, "chaos", "errors", "catalog", "--status", "500", "--route", "/products")
        try:
            wait_for(lambda: api.place(fresh()) is not None and any(
                resilience(stack, p).get("catalog", {}).get("breaker", {}).get("state") == "open"
                for p in ("order-1", "order-2")), timeout=15, what="a breaker to open")
        finally:
            msa(stack, "chaos", "heal")
        close_breakers(stack, api, known)
    assert_healed(stack)


def test_every_dashboard_metric_has_a_sample_and_every_grouping_label_exists(stack: Stack, api: Api):
    # Traffic first: orders exercise the client calls (order → user, catalog) and the outbox of every service.
    for _ in range(3):
        r = api.place([{"sku": "BOOK-DDD", "quantity": 1}], **{"Idempotency-Key": uuid.uuid4().hex})
        assert r.status_code == 201, r.text
    provoke_retries_and_a_breaker(stack, api)

    job = next(sc for sc in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"] if sc["job_name"] == "msa")
    exported: dict[str, list[dict[str, str]]] = {}
    serving = set()
    # Every program compose also runs (local mode's discovery and faultproxy are stand-ins for Consul, Toxiproxy).
    ours = {p.name: p.registers[0] for p in stack.topology.spec.programs if p.registers}
    for program, service in {**ours, "config-server": "config-server"}.items():
        r = httpx.get(stack.topology.url(program) + "/metrics", timeout=10)
        if r.status_code != 200:
            continue
        serving.add(service)
        # What Prometheus would store: the target's labels after relabelling, a clashing scraped label renamed to
        # exported_* (honor_labels is off), then metric_relabel_configs.
        target = relabel(job["relabel_configs"], {"__meta_consul_service": service,
                                                  "__meta_consul_service_id": program, "job": job["job_name"]})
        assert target is not None, f"Prometheus would not scrape {program}, which serves /metrics"
        target = {k: v for k, v in target.items() if not k.startswith("__")}
        for name, label_sets in samples(r.text).items():
            for labels in label_sets:
                merged = {**{f"exported_{k}" if k in target else k: v for k, v in labels.items()}, **target}
                series = relabel(job.get("metric_relabel_configs", []), merged)
                if series is not None:
                    exported.setdefault(name, []).append(series)
    assert serving == {"user", "catalog", "order"}, f"/metrics is served by {serving}: update prometheus.yml's keep"

    missing, ungrouped = [], []
    for title, expr in panels():
        for name in metric_names(expr) - PROMETHEUS_OWN:
            if not exported.get(name):
                missing.append(f"{title}: {name}")
            elif labels_missing := grouping_labels(expr) - {k for series in exported[name] for k in series}:
                ungrouped.append(f"{title}: {name} has no label {sorted(labels_missing)}")
    assert not missing, "dashboard panels whose metric no running service exports: " + "; ".join(missing)
    assert not ungrouped, "; ".join(ungrouped)
