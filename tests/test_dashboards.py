"""The provisioned Grafana dashboard shows real data: every metric its PromQL names is exported, with a sample, by
the running services; every label it groups by exists once Prometheus' relabelling (deploy/prometheus) applied;
and Prometheus keeps exactly the programs that serve /metrics.

A local-mode topology stands in for the containers: same programs, same /metrics. Some series only exist once
something happened (a retry, a breaker's first change of state), so the test makes it happen, then heals."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from msa_cli.spec import free_ports
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


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """Each `name{label="value", …}` of a query: the metric and its matchers (label, operator, value)."""
    return [(name, re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:\\.|[^"\\])*)"', body))
            for name, body in re.findall(r"([a-zA-Z_:][\w:]*)\{([^}]*)\}", expr)]


def matches(series: dict[str, str], matchers: list[tuple[str, str, str]]) -> bool:
    """Whether a series passes PromQL's matchers (=, !=, =~, !~; regexes are anchored, as in PromQL)."""
    for label, op, value in matchers:
        have = series.get(label, "")
        ok = {"=": have == value, "!=": have != value,
              "=~": re.fullmatch(value, have) is not None, "!~": re.fullmatch(value, have) is None}[op]
        if not ok:
            return False
    return True


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
    """The exposition's samples, read with prometheus_client's own parser, by sample name (a counter's
    `…_total`, a histogram's `…_bucket`): name → the label sets of its samples."""
    out: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(dict(sample.labels))
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


def test_the_selector_parser_reads_matchers_as_promql_does():
    (sel,) = selectors('sum by (service) (rate(msa_queue_messages{job="msa",queue=~"main|retry"}[5m]))')
    assert sel == ("msa_queue_messages", [("job", "=", "msa"), ("queue", "=~", "main|retry")])
    assert matches({"job": "msa", "queue": "retry"}, sel[1])
    assert not matches({"job": "msa", "queue": "dlq"}, sel[1])
    assert not matches({"job": "msa", "queue": "mainly"}, [("queue", "=~", "main")])  # anchored
    assert matches({"service": "order"}, [("service", "!=", "gateway")])


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


@pytest.fixture(scope="module")
def provoked(stack: Stack) -> Stack:
    """The stack after the traffic that makes every series exist: orders (client calls order → user, catalog; the
    outbox of every service; the saga's outcomes), a cancel, then retries and a breaker's storm."""
    api = Api(stack.gateway).sign_up_and_log_in()
    for _ in range(3):
        r = api.place([{"sku": "BOOK-DDD", "quantity": 1}], **{"Idempotency-Key": uuid.uuid4().hex})
        assert r.status_code == 201, r.text
    order = api.wait_final(r.json()["id"])
    assert api.http.post(f"/api/orders/{order['id']}/cancel", headers=api.auth).status_code == 200
    provoke_retries_and_a_breaker(stack, api)
    return stack


def test_every_dashboard_metric_has_a_sample_and_every_grouping_label_exists(provoked: Stack):
    stack = provoked
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
    assert serving == {"user", "catalog", "order", "gateway", "probe", "console"}, \
        f"/metrics is served by {serving}: update prometheus.yml's keep"

    missing, ungrouped, unmatched = [], [], []
    for title, expr in panels():
        for name in metric_names(expr) - PROMETHEUS_OWN:
            if not exported.get(name):
                missing.append(f"{title}: {name}")
            elif labels_missing := grouping_labels(expr) - {k for series in exported[name] for k in series}:
                ungrouped.append(f"{title}: {name} has no label {sorted(labels_missing)}")
        # A matcher on a label value no series has (queue="dead_letter" where the value is "dlq") is an empty panel.
        for name, matchers in selectors(expr):
            if name not in PROMETHEUS_OWN and exported.get(name) and not any(
                    matches(series, matchers) for series in exported[name]):
                unmatched.append(f"{title}: no {name} series has {matchers}")
    assert not missing, "dashboard panels whose metric no running service exports: " + "; ".join(missing)
    assert not ungrouped, "; ".join(ungrouped)
    assert not unmatched, "; ".join(unmatched)


# ---- the same, asked of a real Prometheus ---------------------------------------------------------------------


@contextmanager
def prometheus_scraping(stack: Stack, tmp_path: Path) -> Iterator[str]:
    """Debian's Prometheus (deploy/test-tools.sh installs it) scraping every program of the test stack each second.
    Its build has no Consul discovery, so each target is static, with the labels deploy/prometheus's relabelling
    gives it (that relabelling is checked on its own in deploy/tests); the scraped series then go through the
    file's own metric_relabel_configs, in Prometheus itself."""
    binary = shutil.which("prometheus")
    assert binary, "needs Prometheus (Debian: apt-get install prometheus; deploy/test-tools.sh)"
    job = next(sc for sc in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"] if sc["job_name"] == "msa")
    targets = [{"targets": [f"127.0.0.1:{p.port}"], "labels": {"service": p.registers[0], "instance": p.name}}
               for p in stack.topology.spec.programs if p.registers]
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": "msa", "metrics_path": "/metrics", "static_configs": targets,
                                  "metric_relabel_configs": job["metric_relabel_configs"]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    (port,) = free_ports(1)
    process = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            try:
                if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_real_prometheus_finds_every_panels_series_and_evaluates_every_query(provoked: Stack, tmp_path: Path):
    stack = provoked
    with prometheus_scraping(stack, tmp_path) as prometheus:
        def query(expr: str) -> dict[str, Any]:
            r = httpx.get(prometheus + "/api/v1/query", params={"query": expr}, timeout=10)
            assert r.status_code == 200, f"{expr}: {r.text}"
            return r.json()["data"]

        def scraped_thrice() -> int:
            result = query('count(count_over_time(up{job="msa"}[10s]) >= 3)')["result"]
            return int(result[0]["value"][1]) if result else 0

        # Three scrapes of every target: a rate over 10 s has its two samples.
        targets = len([p for p in stack.topology.spec.programs if p.registers])
        wait_for(lambda: scraped_thrice() == targets, timeout=30, what="three scrapes of each target")
        down = query('up{job="msa"} == 0')["result"]
        assert not down, f"targets Prometheus could not scrape: {[d['metric']['instance'] for d in down]}"
        empty, failed = [], []
        for title, expr in panels():
            for name, matchers in selectors(expr):
                selector = name + "{" + ",".join(f'{label}{op}"{value}"' for label, op, value in matchers) + "}"
                if not query(selector)["result"]:
                    empty.append(f"{title}: {selector}")
            # The whole query, as Grafana sends it: a PromQL error (a label Prometheus does not have in a
            # `group_left`, a type mismatch) fails here; an empty answer is fine (no 5xx in the window, say).
            r = httpx.get(prometheus + "/api/v1/query",
                          params={"query": expr.replace("$__rate_interval", "10s")}, timeout=10)
            if r.status_code != 200 or r.json()["status"] != "success":
                failed.append(f"{title}: {r.text[:200]}")
        assert not empty, "panel selectors with no series in Prometheus: " + "; ".join(empty)
        assert not failed, "; ".join(failed)
