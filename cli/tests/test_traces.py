"""`msa trace`: loading spans (local JSON lines, Jaeger's query API), choosing a trace, drawing its waterfall.

The golden file is the waterfall of data/trace.jsonl (a real order's trace, the test namespace removed) as
Console(width=120, color_system=None).export_text() gives it. After a deliberate change to the rendering, regenerate
it with `MSA_UPDATE_GOLDEN=1 .venv/bin/python -m pytest cli/tests/test_traces.py -q` and review the diff.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import typer
from rich.console import Console
from click.testing import Result
from typer.testing import CliRunner

from msa_cli import trace_cmd
from msa_cli import traces as tr

DATA = Path(__file__).parent / "data"
TRACE_ID = "f2e8b4e4566c762a919c4ccda8ada96e"  # data/trace.jsonl's
ORDER_SERVER = "412195a1ed02247e"  # order-1's POST /orders span in it


def text_of(renderable: object, width: int = 120) -> str:
    console = Console(width=width, color_system=None, record=True, file=open(os.devnull, "w"))
    console.print(renderable)
    # Trailing blanks are rich's cell padding: not part of the picture, and editors strip them from the golden file.
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


def var_with(tmp_path: Path, *lines: str, name: str = "x.jsonl") -> Path:
    (tmp_path / "traces").mkdir(exist_ok=True)
    with open(tmp_path / "traces" / name, "a") as f:
        f.writelines(lines)
    return tmp_path


def fixture_lines() -> list[str]:
    return (DATA / "trace.jsonl").read_text().splitlines(keepends=True)


def span_line(trace_id: str, span_id: str, parent: str | None, service: str, name: str, start: str, end: str,
              kind: str = "SERVER", status: str = "UNSET") -> str:
    return json.dumps({
        "name": name, "context": {"trace_id": f"0x{trace_id}", "span_id": f"0x{span_id}", "trace_state": "[]"},
        "kind": f"SpanKind.{kind}", "parent_id": f"0x{parent}" if parent else None,
        "start_time": f"2026-12-08T21:28:{start}Z", "end_time": f"2026-12-08T21:28:{end}Z",
        "status": {"status_code": status}, "attributes": {}, "events": [], "links": [],
        "resource": {"attributes": {"service.name": service, "service.instance.id": f"{service}-1"}}}) + "\n"


def test_waterfall_of_a_stored_trace_matches_the_golden_file(tmp_path: Path):
    shutil.copy(DATA / "trace.jsonl", var_with(tmp_path) / "traces" / "x.jsonl")
    got = text_of(tr.render_waterfall(tr.local_spans(tmp_path), width=120))
    golden = DATA / "trace.golden.txt"
    if os.environ.get("MSA_UPDATE_GOLDEN"):
        golden.write_text(got)
    assert got == golden.read_text(), "rendering changed: MSA_UPDATE_GOLDEN=1 regenerates data/trace.golden.txt"


def test_waterfall_rows_nest_children_and_show_the_broker_wait():
    spans = [tr._from_json_line(json.loads(line)) for line in fixture_lines()]
    lines = text_of(tr.render_waterfall(spans)).splitlines()
    at, end = lines[1].index("operation"), lines[1].index("start ms") - 2
    ops = [line[at:end].rstrip() for line in lines[2:]]
    assert ops[:2] == ["POST orders", "  POST /orders"]  # the gateway's span, then order's under it
    # each hop one level deeper than the span it continues, in time order
    assert ops.index("    order.placed send") < ops.index("      order.placed receive") \
        < ops.index("        stock.reserved send") < ops.index("          stock.reserved receive")
    assert ops[2].startswith("    GET user/internal/users/0ab9") and ops[2].endswith("…")  # cut, not the bar
    assert ops[3:6] == ["      GET /internal/users/{user_id}", "    GET catalog/products", "      GET /products"]
    receive = next(line for line in lines if "order.placed receive" in line)
    # consumer start − producer start: 17.651054 − 17.647793 s
    assert receive.rstrip().endswith("3.26 ms") and "░" in receive


def test_a_partly_written_last_line_is_skipped(tmp_path: Path):
    lines = fixture_lines()
    var_with(tmp_path, *lines, lines[0][: len(lines[0]) // 2])  # a batch being written: its last line cut short
    assert len(tr.local_spans(tmp_path)) == len(lines)
    assert len(tr.local_spans(tmp_path, "0x" + TRACE_ID.upper())) == len(lines)  # 0x and case do not matter
    assert tr.local_spans(tmp_path, "0" * 32) == []


def test_a_span_whose_parent_has_not_arrived_is_shown_and_named(tmp_path: Path):
    var_with(tmp_path, *(line for line in fixture_lines() if f'"0x{ORDER_SERVER}"' not in line.split('"kind"')[0]))
    spans = tr.local_spans(tmp_path)
    assert len(spans) == 9
    text = text_of(tr.render_waterfall(spans))
    assert f"'s parent 0x{ORDER_SERVER} has not arrived" in text
    notes = [line for line in text.splitlines() if "has not arrived" in line]
    assert len(notes) == 3  # one line per span left without its parent: order's user call, catalog call, publish
    assert "span 0x86c0e073cd9bd3f9 (GET user/" in notes[0] and "(order.placed send)" in notes[2]
    assert "GET /products" in text and "stock.reserved receive" in text  # what is there is still drawn


def several_traces(tmp_path: Path) -> Path:
    """The stored order, plus a slow failed trace and a quick later one."""
    return var_with(tmp_path, *fixture_lines(),
                    span_line("e" * 32, "1" * 16, None, "gateway", "POST orders", "10.000000", "12.500000",
                              status="ERROR"),
                    span_line("e" * 32, "2" * 16, "1" * 16, "order", "POST /orders", "10.100000", "12.400000",
                              status="ERROR"),
                    span_line("d" * 32, "3" * 16, None, "gateway", "GET catalog", "20.000000", "20.010000"))


def run(*args: str) -> Result:
    app = typer.Typer()
    app.command()(trace_cmd.trace)  # one command: typer runs it without a subcommand name
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "160", "MSA_TARGET": "local"})


def test_list_shows_every_trace_newest_first(tmp_path: Path):
    result = run("--list", "--var-dir", str(several_traces(tmp_path)))
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines()[1:] if line.strip()]
    assert [r.split()[0] for r in rows] == ["d" * 32, "e" * 32, TRACE_ID]  # the order's trace is a day older
    order = next(r for r in rows if r.startswith(TRACE_ID))
    assert "gateway POST orders" in order and " 10 " in order and "catalog, gateway, order, user" in order
    failed = next(r for r in rows if r.startswith("e" * 32))
    assert "2.50 s" in failed and failed.rstrip().endswith("2")


def test_slowest_errors_and_service_choose_the_trace(tmp_path: Path):
    var = str(several_traces(tmp_path))
    assert "0x" + "e" * 32 in run("--slowest", "--var-dir", var).output
    assert "0x" + "e" * 32 in run("--errors", "--var-dir", var).output
    assert "0x" + "d" * 32 in run("--var-dir", var).output  # no id: the newest
    assert "0x" + TRACE_ID in run("--service", "catalog", "--slowest", "--var-dir", var).output
    by_id = run("0x" + TRACE_ID, "--var-dir", var)
    assert by_id.exit_code == 0 and "order.placed receive" in by_id.output
    assert "ERROR" in run("--errors", "--var-dir", var).output
    missing = run("0" * 32, "--var-dir", var)
    assert missing.exit_code == 1 and "No spans of trace" in missing.output
    assert run("--errors", "--service", "user", "--var-dir", var).exit_code == 1


def test_choose_orders_by_start_or_duration():
    spans = [tr._from_json_line(json.loads(line)) for line in fixture_lines()]
    quick = tr.Span("d" * 32, "3" * 16, None, "gateway", "gateway", "GET", "SERVER", spans[-1].end + 10,
                    spans[-1].end + 20)
    found = tr.group([*spans, quick])
    assert [t.trace_id for t in trace_cmd.choose(found)] == ["d" * 32, TRACE_ID]
    assert [t.trace_id for t in trace_cmd.choose(found, slowest=True)] == [TRACE_ID, "d" * 32]
    assert trace_cmd.choose(found, errors=True) == []


@pytest.fixture
def jaeger() -> Iterator[str]:
    """A stand-in for Jaeger's query API, serving a canned document on a free loopback port."""
    doc = (DATA / "jaeger_trace.json").read_bytes()
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            seen.append(self.path)
            if self.path == "/api/services":
                body, code = json.dumps({"data": ["gateway", "order"], "total": 2}).encode(), 200
            elif self.path.startswith("/api/traces?") or self.path == "/api/traces/07a1c0ffee0000000000000000000042":
                body, code = doc, 200
            else:
                body, code = b'{"data": null, "errors": [{"code": 404, "msg": "trace not found"}]}', 404
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_jaeger_loader_reads_kind_parent_service_and_status(jaeger: str):
    spans = {s.span_id: s for s in tr.jaeger_spans(jaeger, "0x7a1c0ffee0000000000000000000042")}
    assert len(spans) == 4
    root, server, send, receive = (spans[c * 8] for c in ("a1", "b2", "c3", "d4"))
    assert root.trace_id == "07a1c0ffee0000000000000000000042"  # Jaeger's leading zero dropped, restored
    assert (root.parent_id, root.kind, root.service, root.instance) == (None, "SERVER", "gateway", "gateway")
    assert (send.parent_id, send.kind, send.instance) == ("b2" * 8, "PRODUCER", "order-2")
    assert server.start - root.start == 5000 and server.duration == 30000  # µs, as Jaeger gives them
    assert receive.error and receive.description == "OutOfStock" and receive.kind == "CONSUMER"
    assert "span.kind" not in receive.attributes and "error" not in receive.attributes
    assert not send.error and receive.attributes["messaging.destination"] == "msa.events"
    assert tr.jaeger_spans(jaeger, "1" * 32) == []  # not (yet) in Jaeger


def test_jaeger_recent_asks_every_service_and_counts_a_trace_once(jaeger: str):
    found = tr.group(tr.jaeger_recent(jaeger, limit=5))
    assert len(found) == 1 and len(found[0].spans) == 4  # found through gateway and order: one trace


def test_compose_target_reads_jaeger(jaeger: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(trace_cmd, "JAEGER_URL", jaeger)
    app = typer.Typer()
    app.command()(trace_cmd.trace)
    result = CliRunner().invoke(app, ["--last"], env={"COLUMNS": "160", "MSA_TARGET": "compose"})
    assert result.exit_code == 0, result.output
    assert "order.placed receive" in result.output and "ERROR" in result.output and "4.00 ms" in result.output
    listed = run("--list", "--jaeger", jaeger)
    assert "07a1c0ffee0000000000000000000042" in listed.output and "gateway POST orders" in listed.output
