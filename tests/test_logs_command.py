"""`msa logs --trace <id>`: one order's lines from every program that logged them, and nothing of any other trace.

Black box: the real topology (the session's `stack`), an order placed through the gateway, and the command run as a
separate process on the stack's var dir, as a person would run it after `make up`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def msa_logs(var_dir: Path, *args: str) -> list[dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "msa_cli.logs_cmd", *args, "--json", "--var-dir", str(var_dir)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def traced_programs(var_dir: Path, trace_id: str) -> set[str]:
    """The programs whose log files hold a line of this trace, read directly (not through the command)."""
    found = set()
    for path in (var_dir / "log").glob("*.log"):
        for text in path.read_text(errors="replace").splitlines():
            if trace_id in text and text.startswith("{") and json.loads(text).get("trace_id") == trace_id:
                found.add(path.stem)
    return found


def test_logs_of_one_trace_come_from_every_program_that_logged_it_and_from_no_other_trace(stack, api):
    r = api.place([{"sku": "BOOK-DDD", "quantity": 1}])
    assert r.status_code in (201, 202), r.text
    trace_id = r.headers["x-trace-id"]
    assert api.wait_final(r.json()["id"])["status"] == "CONFIRMED"
    # Log lines reach the files a little after the answer (the gateway's access line is written by a thread in
    # 50 ms batches; consumers log as they apply the saga's events): wait for every service the order crossed —
    # the gateway's access line, order's "placed", catalog's and order's and user's "applied <event>".
    services = {"gateway", "order", "catalog", "user"}
    deadline = time.monotonic() + 15
    while True:
        expected = traced_programs(stack.var_dir, trace_id)
        if {p.rsplit("-", 1)[0] if p != "gateway" else p for p in expected} >= services \
                or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    print(f"\ntrace {trace_id}: logged by {sorted(expected)}")
    assert {p if p == "gateway" else p.rsplit("-", 1)[0] for p in expected} >= services

    lines = msa_logs(stack.var_dir, "--trace", "0x" + trace_id.upper())
    assert lines, "no line of the order's trace"
    assert {line["program"] for line in lines} == expected
    assert {line["trace_id"] for line in lines} == {trace_id}
    access = [line for line in lines if line.get("logger") == "access"]
    assert [(a["method"], a["path"], a["status"]) for a in access] == [("POST", "/api/orders", r.status_code)]
    assert [line["ts"] for line in lines] == sorted(line["ts"] for line in lines)

    # A service name selects its instances; the other programs' lines of the trace drop out.
    assert {line["program"] for line in msa_logs(stack.var_dir, "--trace", trace_id, "gateway")} == {"gateway"}


def test_logs_merge_every_program_in_time_order(stack):
    lines = msa_logs(stack.var_dir)
    programs = {line["program"] for line in lines}
    # Every program of the topology wrote something at start (e.g. `registered …`), and supervisord its own lines.
    assert {p.name for p in stack.topology.spec.programs} | {"supervisord"} <= programs
    stamps = [line["ts"] for line in lines]
    assert stamps == sorted(stamps)
    assert all(line["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL") for line in lines)
