"""The web console's API through the gateway (console/README.md): what the page shows is what the sandbox is, and
every control that breaks something answers only an operator — the admin token or an admin user's token."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from support import ADMIN_TOKEN, Api, Stack, assert_healed

pytestmark = pytest.mark.integration
PROBLEM = "application/problem+json"

# Every control the page uses, with a valid body: refused without an operator before the body matters.
CONTROLS = [
    ("/console/api/chaos/crash", {"instance": "catalog-2"}),
    ("/console/api/chaos/latency", {"instance": "catalog-2", "ms": 500}),
    ("/console/api/chaos/errors", {"service": "catalog", "status": 503, "probability": 0.5}),
    ("/console/api/chaos/broker", {"action": "cut"}),
    ("/console/api/chaos/heal", {}),
    ("/console/api/load", {"rate": 5}),
]


def snapshot(stack: Stack) -> dict[str, Any]:
    r = httpx.get(stack.gateway + "/console/api/snapshot", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def instances(snap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["id"]: i for s in snap["services"] for i in s["instances"]}


def wait_for_snapshot(stack: Stack, ok: Any, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        snap = snapshot(stack)
        if ok(snap):
            return snap
        assert time.monotonic() < deadline, f"the console never showed it; last snapshot: {snap}"
        time.sleep(0.3)


def test_the_snapshot_shows_every_instance_its_figures_and_the_calls_between_services(stack: Stack, api: Api):
    snapshot(stack)  # the console starts watching (a closed console watches nothing)
    sku = next(iter(api.products()))
    for _ in range(3):
        assert api.place([{"sku": sku, "quantity": 1}]).status_code == 201
    snap = wait_for_snapshot(stack, lambda s: any(c["from"] == "gateway" and c["to"] == "order" and c["rate"] > 0
                                                  for c in s["calls"]))
    seen = instances(snap)
    assert set(stack.instances) <= set(seen), f"missing: {set(stack.instances) - set(seen)}"
    assert all(seen[name]["health"] == "passing" for name in stack.instances), seen
    catalog = seen["catalog-1"]
    # An event of the orders just placed may still wait in the outbox: a count, not necessarily 0.
    assert catalog["queues"].keys() == {"main", "retry", "dlq"} and isinstance(catalog["outbox"], int)
    assert catalog["config_version"], "the config version the instance runs"
    assert seen["order-1"]["breakers"].get("catalog") == "closed" or seen["order-2"]["breakers"].get("catalog")
    assert snap["broker"]["link"] == "up"
    flows = {(f["from"], f["to"], f["event_type"]) for f in snap["flows"]}
    assert ("order", "catalog", "order.placed") in flows and ("catalog", "order", "stock.reserved") in flows


def test_every_control_refuses_anyone_but_an_operator(stack: Stack, api: Api):
    for path, body in CONTROLS:
        anonymous = httpx.post(stack.gateway + path, json=body, timeout=10)
        assert anonymous.status_code == 401, (path, anonymous.text)
        assert anonymous.headers["content-type"] == PROBLEM and "operator" in anonymous.json()["detail"]
        wrong = httpx.post(stack.gateway + path, json=body, headers={"Authorization": "Bearer not-the-token"},
                           timeout=10)
        assert wrong.status_code == 401 and wrong.headers["content-type"] == PROBLEM, (path, wrong.text)
        user = httpx.post(stack.gateway + path, json=body, headers=api.auth, timeout=10)
        assert user.status_code == 403 and user.headers["content-type"] == PROBLEM, (path, user.text)
        assert "not an admin" in user.json()["detail"]
    assert httpx.get(stack.gateway + "/console/api/me", headers=api.auth, timeout=10).status_code == 403
    # Nothing was done: no fault in force, the broker link up.
    snap = snapshot(stack)
    assert not any(i["faults"] for i in instances(snap).values()) and snap["broker"]["link"] == "up"
    assert not snap["load"]["running"]


def test_an_operator_is_the_admin_token_or_an_admin_users_token(stack: Stack):
    token = httpx.get(stack.gateway + "/console/api/me", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                      timeout=10)
    assert token.json() == {"operator": "admin token", "via": "token"}
    admin = Api(stack.gateway).log_in_as_admin()
    assert httpx.get(stack.gateway + "/console/api/me", headers=admin.auth, timeout=10).json() == \
        {"operator": "admin", "via": "jwt"}


def test_bad_input_is_a_problem_naming_the_field(stack: Stack):
    operator = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for path, body, field in [("/console/api/chaos/latency", {"instance": "catalog-2", "ms": -1}, "ms"),
                              ("/console/api/chaos/errors", {"instance": "catalog-2", "status": 200}, "status"),
                              ("/console/api/chaos/broker", {"action": "explode"}, "action"),
                              ("/console/api/load", {"rate": "fast"}, "rate"),
                              ("/console/api/chaos/latency", {"ms": 5}, "body")]:
        r = httpx.post(stack.gateway + path, json=body, headers=operator, timeout=10)
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, (path, r.text)
        assert field in r.json()["detail"], (path, r.json())
    r = httpx.post(stack.gateway + "/console/api/chaos/crash", json={"instance": "catalog-9"}, headers=operator,
                   timeout=10)
    assert r.status_code == 404 and "catalog-9" in r.json()["detail"]


def test_a_fault_added_from_the_console_shows_on_the_instance_and_heal_removes_it(stack: Stack):
    operator = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        r = httpx.post(stack.gateway + "/console/api/chaos/latency", json={"instance": "catalog-2", "ms": 300},
                       headers=operator, timeout=10)
        assert r.status_code == 200 and r.json()["did"][0].startswith("catalog-2: +300 ms"), r.text
        wait_for_snapshot(stack, lambda s: instances(s)["catalog-2"]["faults"] == ["latency 300 ms"])
        assert stack.admin("catalog-2", "/admin/faults")["faults"][0]["latency_ms"] == 300
        r = httpx.post(stack.gateway + "/console/api/chaos/broker", json={"action": "cut"}, headers=operator,
                       timeout=10)
        assert r.status_code == 200, r.text
        wait_for_snapshot(stack, lambda s: s["broker"]["link"] == "cut")
    finally:
        r = httpx.post(stack.gateway + "/console/api/chaos/heal", headers=operator, timeout=30)
        assert r.status_code == 200, r.text
    snap = wait_for_snapshot(stack, lambda s: s["broker"]["link"] == "up" and not instances(s)["catalog-2"]["faults"])
    assert "catalog-2: 1 fault(s) removed" in r.json()["did"], r.json()
    assert snap["broker"]["toxics"] == []
    assert_healed(stack)


def test_the_traces_list_and_a_waterfall(stack: Stack, api: Api):
    sku = next(iter(api.products()))
    placed = api.place([{"sku": sku, "quantity": 1}])
    assert placed.status_code == 201
    trace_id = placed.headers["x-trace-id"]
    deadline = time.monotonic() + 15
    while True:
        listed = httpx.get(stack.gateway + "/console/api/traces", params={"limit": 50}, timeout=10).json()
        found = [t for t in listed["traces"] if t["trace_id"] == trace_id]
        if found and {"gateway", "order", "catalog"} <= set(found[0]["services"]):
            break
        assert time.monotonic() < deadline, f"trace {trace_id} not listed: {listed}"
        time.sleep(0.3)
    assert not any(set(t["services"]) <= {"gateway", "console"} for t in listed["traces"]), "the page's own calls"
    trace = httpx.get(stack.gateway + f"/console/api/traces/{trace_id}", timeout=10).json()
    rows = trace["rows"]
    assert rows[0]["depth"] == 0 and rows[0]["offset_us"] == 0 and rows[0]["service"] == "gateway"
    assert any(r["operation"].startswith("order.placed") for r in rows), [r["operation"] for r in rows]
    assert all(0 <= r["offset_us"] <= trace["duration_us"] for r in rows)
    missing = httpx.get(stack.gateway + "/console/api/traces/" + "0" * 31 + "1", timeout=10)
    assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM


def test_the_load_generator_is_bounded_and_stops(stack: Stack):
    operator = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    r = httpx.post(stack.gateway + "/console/api/load", json={"rate": 900}, headers=operator, timeout=10)
    try:
        assert r.status_code == 200 and "capped: at most 50 orders/s" in r.json()["did"][0], r.text
        httpx.post(stack.gateway + "/console/api/load", json={"rate": 5}, headers=operator, timeout=10)
        snap = wait_for_snapshot(stack, lambda s: sum(x["ok"] for x in s["load"]["seconds"]) >= 5)
        assert snap["load"]["rate"] == 5 and snap["load"]["running"]
    finally:
        httpx.post(stack.gateway + "/console/api/load", json={"rate": 0}, headers=operator, timeout=10)
    snap = wait_for_snapshot(stack, lambda s: not s["load"]["running"])
    assert sum(x["failed"] for x in snap["load"]["seconds"]) == 0, snap["load"]
