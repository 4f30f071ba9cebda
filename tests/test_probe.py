"""The synthetic probe on the real topology: switched on live, it runs a transaction through the gateway every
period, tags its order synthetic (kept out of the business figures), notices an injected fault within two periods,
and recovers once the fault is healed. Test stacks start with it off (conftest.booted); these tests switch it on."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import pytest

from support import Stack, assert_healed, metric, msa
from test_config_refresh import edited, refresh, wait_for

pytestmark = pytest.mark.integration

PERIOD_S = 1.0
TIMEOUT_S = 3.0  # config-repo/probe.yml's timeout_s: a request in flight at the injection may take this long
# A YAML document of its own: merged key by key over probe.yml's (booted() appended `enabled: false` the same way).
ENABLED = f"---\nprobe: {{enabled: true, period_s: {PERIOD_S:g}}}\n"
PROBE_USER, PROBE_PASSWORD = "synthetic-probe", "synthetic-probe-demo-password"  # probe.yml's, under the demo key


def probe_metric(stack: Stack, name: str, **labels: str) -> float:
    return metric(stack, "probe", name, **labels)


def orders_metric(stack: Stack, name: str, **labels: str) -> float:
    """Summed over every order instance (one placed the order, either may have consumed the catalog's answer)."""
    return sum(metric(stack, p.name, name, **labels) for p in stack.topology.spec.programs if "order" in p.registers)


def probe_doc(stack: Stack) -> dict:
    r = httpx.get(stack.topology.url("probe") + "/probe", timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_probe_tags_its_orders_and_sees_a_fault_within_two_periods(stack: Stack):
    placed = lambda synthetic: orders_metric(stack, "msa_orders_placed_total", synthetic=synthetic)  # noqa: E731
    cancelled = lambda: orders_metric(stack, "msa_saga_outcomes_total", outcome="cancelled",  # noqa: E731
                                      synthetic="true")
    successes = lambda: probe_metric(stack, "msa_probe_runs_total", result="success")  # noqa: E731
    failures = lambda: probe_metric(stack, "msa_probe_runs_total", result="failure")  # noqa: E731
    before = {"synthetic": placed("true"), "business": placed("false"), "cancelled": cancelled(),
              "successes": successes()}
    with edited(stack, "probe.yml", ENABLED):
        refresh(stack, "probe")
        took = wait_for(lambda: successes() > before["successes"], timeout=15, what="a successful synthetic run")
        print(f"\nfirst synthetic transaction succeeded {took:.1f} s after the refresh")
        assert probe_metric(stack, "msa_probe_last_success") == 1
        # Its order is tagged: counted as synthetic, placed and cancelled; the business figure did not move.
        wait_for(lambda: cancelled() > before["cancelled"], timeout=5, what="the synthetic order's cancel counted")
        assert placed("true") > before["synthetic"]
        assert placed("false") == before["business"]
        doc = probe_doc(stack)
        order = as_probe_user(stack).get(f"/api/orders/{doc['order_id']}")
        assert order.status_code == 200 and order.json()["synthetic"] is True, order.text

        # A fault in the order service: the probe's failure counter rises within two periods.
        failed_before = failures()
        injected = time.monotonic()
        msa(stack, "chaos", "errors", "order", "--status", "500", "--route", "/orders")
        try:
            limit = 2 * PERIOD_S + TIMEOUT_S  # two periods, plus a request in flight at the injection
            took = wait_for(lambda: failures() > failed_before, timeout=limit + 0.5, what="the probe's failure")
            print(f"probe failure counted {took:.2f} s after the injection (limit {limit:g} s)")
            assert took <= limit
            doc = probe_doc(stack)
            assert doc["ok"] is False and doc["step"] in ("place", "confirm", "cancel") and "500" in doc["error"], doc
            assert probe_metric(stack, "msa_probe_failures_total", step=doc["step"]) >= 1
            assert probe_metric(stack, "msa_probe_last_success") == 0
        finally:
            msa(stack, "chaos", "heal")
        healed = time.monotonic()
        successes_at_heal = successes()
        # The gateway may still hold the order instances ejected or its breaker open for a while (~10 s).
        took = wait_for(lambda: successes() > successes_at_heal and probe_metric(stack, "msa_probe_last_success") == 1,
                        timeout=30, what="a successful synthetic run after the heal")
        print(f"probe green again {time.monotonic() - healed:.1f} s after the heal "
              f"({time.monotonic() - injected:.1f} s after the injection)")
    assert probe_doc(stack)["enabled"] is False  # probe.yml restored: paused again
    assert_healed(stack)


def test_get_probe_shows_the_last_result(stack: Stack):
    runs_before = probe_doc(stack)["runs"]
    with edited(stack, "probe.yml", ENABLED):
        refresh(stack, "probe")
        wait_for(lambda: probe_doc(stack)["runs"] > runs_before and probe_doc(stack)["ok"] is True, timeout=15,
                 what="a successful run on GET /probe")
        doc = probe_doc(stack)
    print(f"\nGET /probe: {doc}")
    assert doc["ok"] is True and doc["step"] is None and doc["error"] is None
    assert doc["enabled"] is True and doc["period_s"] == PERIOD_S and doc["runs"] >= 1 + runs_before
    assert doc["failures"] >= 0 and 0 < doc["duration_ms"] < 10_000
    finished = datetime.fromisoformat(doc["finished_at"].replace("Z", "+00:00"))
    assert doc["finished_at"].endswith("Z") and abs((datetime.now(UTC) - finished).total_seconds()) < 30
    # Neither the probe user's password nor a token reaches the probe's log.
    log = stack.topology.log_path("probe").read_text(errors="replace")
    assert PROBE_PASSWORD not in log and "access_token" not in log


def as_probe_user(stack: Stack) -> httpx.Client:
    http = httpx.Client(base_url=stack.gateway, timeout=10)
    r = http.post("/api/auth/token", data={"username": PROBE_USER, "password": PROBE_PASSWORD})
    assert r.status_code == 200, r.text
    http.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
    return http
