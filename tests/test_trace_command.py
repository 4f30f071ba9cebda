"""`msa trace <id>` on a real order's trace: every hop of the saga drawn, each under the span it continues."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from support import Api, Stack

pytestmark = pytest.mark.integration

HOPS = ("order.placed", "stock.reserved")


def complete(spans: list[dict]) -> bool:
    """Both hops published and consumed, four services: processes export in their own batches, so a consume span
    can be on disk before the publish span it continues (test_order_flow says why)."""
    sent = {s["context"]["span_id"] for s in spans if s["kind"] == "SpanKind.PRODUCER"
            and any(s["name"].endswith(f"{event} send") for event in HOPS)}
    return (len(sent) >= 2 and sum(s["kind"] == "SpanKind.CONSUMER" and s["parent_id"] in sent for s in spans) >= 2
            and len({s["resource"]["attributes"]["service.name"] for s in spans}) >= 4)


def test_trace_command_draws_one_order_across_http_and_both_broker_hops(stack: Stack, api: Api):
    r = api.place([{"sku": "BOOK-DDD", "quantity": 1}])
    trace_id = r.headers["x-trace-id"]
    assert api.wait_final(r.json()["id"])["status"] == "CONFIRMED"
    deadline = time.monotonic() + 20
    while not complete(stack.spans(trace_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert complete(stack.spans(trace_id)), [s["name"] for s in stack.spans(trace_id)]

    run = subprocess.run([sys.executable, "-m", "msa_cli.trace_cmd", trace_id, "--var-dir", str(stack.var_dir)],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COLUMNS": "160", "MSA_TARGET": "local"})
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"trace 0x{trace_id}"), run.stdout
    at, end = lines[1].index("operation"), lines[1].index("start ms") - 2
    rows = [(line[:at].strip(), line[at:end].rstrip(), line[end:]) for line in lines[2:] if line[:at].strip()]
    services = {service.rsplit("-", 1)[0] for service, _, _ in rows}
    assert {"gateway", "order", "catalog", "user"} <= services, run.stdout
    for _, _, rest in rows:  # every row has its duration
        assert re.search(r"\d(\.\d+)? (ms|s)\b", rest), run.stdout
    ops = [op for _, op, _ in rows]

    def row(name: str, after: int = -1) -> tuple[int, int]:
        """The first row of `name` after row `after`, and its depth (indentation)."""
        index = next(i for i, op in enumerate(ops) if i > after and op.strip() == name)
        return index, (len(ops[index]) - len(ops[index].lstrip())) // 2

    gateway = row("POST orders")
    order = row("POST /orders", gateway[0])
    send = row("order.placed send", order[0])
    receive = row("order.placed receive", send[0])
    reply = row("stock.reserved send", receive[0])
    confirm = row("stock.reserved receive", reply[0])
    # each one a child of the one before: after its parent, and one level deeper
    depths = [depth for _, depth in (gateway, order, send, receive, reply, confirm)]
    assert depths == [0, 1, 2, 3, 4, 5], run.stdout
    assert "has not arrived" not in run.stdout
    assert re.search(r"\d (ms|s)\s*$", lines[2 + receive[0]]), "the broker wait is shown on a delivery's row"
