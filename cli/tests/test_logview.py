"""msa_cli.logview and the `logs` command: parsing, merging, filters, output, --follow and the compose source, on
hand-written log files (the shapes JsonFormatter, the gateway's access log, supervisord and uvicorn write)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from msa_cli import logs_cmd, logview
from msa_cli.logview import FileTail, Filter, LogLine, merged, parse_line, parse_since

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER = "0af7651916cd43dd8448eb211c80319c"


def j(ts: str, msg: str, instance: str = "catalog-1", level: str = "INFO", **extra: object) -> str:
    service = instance.rsplit("-", 1)[0] if instance[-1].isdigit() else instance
    return json.dumps({"ts": f"2024-05-01T12:00:{ts}Z", "level": level, "logger": "x", "msg": msg,
                       "service": service, "instance": instance, **extra})


def access(ts: str, trace: str = TRACE) -> str:
    return json.dumps({"ts": f"2024-05-01T12:00:{ts}Z", "level": "INFO", "service": "gateway", "instance": "gateway",
                       "logger": "access", "method": "POST", "path": "/api/orders", "route": "orders",
                       "upstream": "order-1", "status": 201, "user": "u", "trace_id": trace, "ms": 12.5})


@pytest.fixture
def var(tmp_path: Path) -> Path:
    log = tmp_path / "log"
    log.mkdir()
    (log / "catalog-1.log").write_text("\n".join([
        j("00.100", "seeded 5 product(s)"),
        j("02.000", "reserve failed", level="ERROR", trace_id=TRACE, span_id="00f067aa0ba902b7"),
        "Traceback (most recent call last):",  # not JSON: stays under the line before, at its time and level
        "ValueError: no stock",
        j("04.000", "other order", trace_id=OTHER),
    ]) + "\n")
    (log / "catalog-2.log").write_text(j("01.500", "registered", "catalog-2") + "\n")
    # The access line of 01.000 is written after a logging line stamped later (the writer thread's batches).
    (log / "gateway.log").write_text("\n".join([j("01.010", "order instances", "gateway", trace_id=TRACE),
                                                access("01.000"), access("03.000", OTHER)]) + "\n")
    (log / "order-1.log").write_text(j("01.200", "catalog unavailable", "order-1", "WARNING", trace_id=TRACE) + "\n")
    (log / "supervisord.log").write_text("2024-05-01 12:00:00,500 WARN exited: catalog-1 (exit status 1)\n")
    (log / "config-server.log").write_text("INFO:     Started server process [1]\n"
                                           "2024-05-01 12:00:00,300 INFO msa_config_server serving config\n")
    return tmp_path


@pytest.fixture(autouse=True)
def _utc_and_local(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("MSA_TARGET", "MSA_VAR_DIR", "MSA_DOCKER", "MSA_COMPOSE_FILE"):
        monkeypatch.delenv(name, raising=False)
    # Plain lines carry local time (logging's asctime); the files above are written as if local time were UTC.
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if saved is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = saved
    time.tzset()


def lines_of(var: Path, keep: Filter | None = None) -> list[LogLine]:
    return list(merged([FileTail(p) for p in logview.log_files(var / "log", keep)], keep))


# ---- parsing ----------------------------------------------------------------------------------------------------


def test_a_json_line_keeps_its_keys():
    line = parse_line(j("02.000", "boom", level="ERROR", trace_id=TRACE.upper()) + "\n", "catalog-1")
    assert line.time == datetime(2024, 5, 1, 12, 0, 2, tzinfo=timezone.utc)
    assert (line.program, line.service, line.level, line.message) == ("catalog-1", "catalog", "ERROR", "boom")
    assert line.trace_id == TRACE and line.raw is not None and line.raw["logger"] == "x"


def test_an_access_line_says_what_it_records():
    line = parse_line(access("01.000"), "gateway")
    assert line.message == "POST /api/orders → 201 order-1 12.5 ms" and line.trace_id == TRACE


def test_plain_lines_supervisord_uvicorn_and_continuations():
    sup = parse_line("2024-05-01 12:00:00,500 CRIT Supervisor is running as root\n", "supervisord")
    assert (sup.time, sup.level, sup.message) == (datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=timezone.utc),
                                                  "CRITICAL", "Supervisor is running as root")
    assert sup.raw is None and sup.service == "supervisord"
    uv = parse_line("WARNING:  Invalid HTTP request received.", "config-server", sup)
    assert (uv.time, uv.level, uv.message) == (sup.time, "WARNING", "Invalid HTTP request received.")
    cont = parse_line('  File "x.py", line 1', "supervisord", sup)
    assert (cont.time, cont.level, cont.message, cont.trace_id) == (sup.time, "CRITICAL", '  File "x.py", line 1', None)
    assert parse_line("{not json", "order-2").message == "{not json"


def test_a_files_leading_lines_without_a_time_take_its_first_time(var: Path):
    lines = list(FileTail(var / "log" / "config-server.log").lines(final=True))
    assert [line.time for line in lines] == [datetime(2024, 5, 1, 12, 0, 0, 300000, tzinfo=timezone.utc)] * 2
    assert lines[0].message == "Started server process [1]"


# ---- merging and filters -----------------------------------------------------------------------------------------


def test_every_file_merged_in_time_order(var: Path):
    lines = lines_of(var)
    assert [line.time for line in lines] == sorted(line.time for line in lines)
    assert [(line.program, line.message) for line in lines][:6] == [
        ("catalog-1", "seeded 5 product(s)"), ("config-server", "Started server process [1]"),
        ("config-server", "msa_config_server serving config"), ("supervisord", "exited: catalog-1 (exit status 1)"),
        ("gateway", "POST /api/orders → 201 order-1 12.5 ms"), ("gateway", "order instances")]
    # The traceback stays right under its line, in its file's order.
    messages = [line.message for line in lines]
    i = messages.index("reserve failed")
    assert messages[i + 1:i + 3] == ["Traceback (most recent call last):", "ValueError: no stock"]


def test_a_service_name_selects_all_its_instances_and_a_program_name_one(var: Path):
    assert {line.program for line in lines_of(var, Filter(("catalog",)))} == {"catalog-1", "catalog-2"}
    assert {line.program for line in lines_of(var, Filter(("catalog-2", "gateway")))} == {"catalog-2", "gateway"}
    assert [line.program for line in lines_of(var, Filter(("supervisord",)))] == ["supervisord"]
    # A canary (msa canary start catalog) is an instance of its service too.
    (var / "log" / "catalog-v2.log").write_text(j("09.000", "v2 here", "catalog-v2") + "\nplain v2 line\n")
    assert {line.program for line in lines_of(var, Filter(("catalog",)))} == {"catalog-1", "catalog-2", "catalog-v2"}
    assert len(lines_of(var, Filter(("catalog-v2",)))) == 2


@pytest.mark.parametrize("given", [TRACE, TRACE.upper(), "0x" + TRACE, "0X" + TRACE.upper(), f" {TRACE} "])
def test_trace_filter_with_or_without_0x_in_any_case(var: Path, given: str):
    lines = lines_of(var, Filter(trace=given))
    assert [(line.program, line.message) for line in lines] == [
        ("gateway", "POST /api/orders → 201 order-1 12.5 ms"), ("gateway", "order instances"),
        ("order-1", "catalog unavailable"), ("catalog-1", "reserve failed")]


def test_level_filter_keeps_that_level_and_above(var: Path):
    got = {(line.program, line.level) for line in lines_of(var, Filter(level="warning"))}
    assert got == {("supervisord", "WARNING"), ("order-1", "WARNING"), ("catalog-1", "ERROR")}
    assert {line.level for line in lines_of(var, Filter(level="ERROR"))} == {"ERROR"}  # with its traceback
    assert len(lines_of(var, Filter(level="ERROR"))) == 3
    with pytest.raises(ValueError, match="--level"):
        Filter(level="LOUD")


def test_since_filter(var: Path):
    since = datetime(2024, 5, 1, 12, 0, 2, tzinfo=timezone.utc)
    assert [line.message for line in lines_of(var, Filter(since=since))] == [
        "reserve failed", "Traceback (most recent call last):", "ValueError: no stock",
        "POST /api/orders → 201 order-1 12.5 ms", "other order"]


def test_parse_since():
    now = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    assert parse_since("5m", now) == now - timedelta(minutes=5)
    assert parse_since("30s", now) == now - timedelta(seconds=30)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("1.5d", now) == now - timedelta(hours=36)
    assert parse_since("2024-05-01T10:00:00Z", now) == datetime(2024, 5, 1, 10, tzinfo=timezone.utc)
    assert parse_since("2024-05-01T12:00:00+02:00", now) == datetime(2024, 5, 1, 10, tzinfo=timezone.utc)
    assert parse_since("2024-05-01 10:00", now) == datetime(2024, 5, 1, 10, tzinfo=timezone.utc)  # local (TZ=UTC)
    for bad in ("5 minutes", "yesterday", "-5m", ""):
        with pytest.raises(ValueError, match="--since"):
            parse_since(bad, now)


# ---- the command: output ------------------------------------------------------------------------------------------

cli = typer.Typer()
cli.command()(logs_cmd.logs)
runner = CliRunner()


def test_json_output_is_the_original_objects_with_program(var: Path):
    r = runner.invoke(cli, ["--json", "--var-dir", str(var), "--trace", "0x" + TRACE, "gateway", "catalog"])
    assert r.exit_code == 0, r.output
    docs = [json.loads(line) for line in r.output.splitlines()]
    assert [d["program"] for d in docs] == ["gateway", "gateway", "catalog-1"]
    assert docs[0] == {**json.loads(access("01.000")), "program": "gateway"}
    # A plain line becomes an object too, so every output line parses.
    r = runner.invoke(cli, ["--json", "--var-dir", str(var), "supervisord"])
    assert json.loads(r.output) == {"ts": "2024-05-01T12:00:00.500Z", "level": "WARNING", "service": "supervisord",
                                    "msg": "2024-05-01 12:00:00,500 WARN exited: catalog-1 (exit status 1)",
                                    "program": "supervisord", "plain": True}


def test_readable_output_has_time_program_level_message_and_short_trace(var: Path):
    r = runner.invoke(cli, ["--var-dir", str(var), "--level", "WARNING"])
    assert r.exit_code == 0, r.output
    out = r.output.splitlines()
    assert out[0].split() == ["12:00:00.500", "supervisord", "WARNING", "exited:", "catalog-1", "(exit", "status",
                              "1)"]
    assert out[1].split() == ["12:00:01.200", "order-1", "WARNING", "catalog", "unavailable", "[trace", "4bf92f35]"]
    assert out[2].startswith("12:00:02.000 catalog-1      ERROR    reserve failed  [trace 4bf92f35]")


def test_level_in_colour_and_as_text():
    text = logview.render(parse_line(j("02.000", "boom", level="ERROR"), "catalog-1"))
    assert "ERROR" in text.plain
    assert any(span.style == "red" and text.plain[span.start:span.end].strip() == "ERROR" for span in text.spans)


def test_the_default_var_dir_is_the_specs(var: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MSA_VAR_DIR", str(var))
    r = runner.invoke(cli, ["--json", "catalog-2"])
    assert r.exit_code == 0 and json.loads(r.output)["msg"] == "registered"


def test_bad_options_and_no_logs_are_one_clear_message(tmp_path: Path, var: Path):
    r = runner.invoke(cli, ["--var-dir", str(var), "--since", "soon"])
    assert r.exit_code == 2 and "--since" in r.output
    r = runner.invoke(cli, ["--var-dir", str(var), "--level", "LOUD"])
    assert r.exit_code == 2 and "--level" in r.output
    r = runner.invoke(cli, ["--var-dir", str(tmp_path / "nothing")])
    assert r.exit_code == 1 and "No logs at" in r.output


# ---- --follow --------------------------------------------------------------------------------------------------


def test_follow_prints_what_is_appended_to_any_file_until_seconds(var: Path):
    log = var / "log"

    def write() -> None:
        time.sleep(0.3)
        with (log / "order-1.log").open("a") as f:
            f.write(j("05.000", "appended", "order-1", trace_id=TRACE) + "\n")
            f.flush()
            f.write(j("06.000", "half", "order-1", trace_id=TRACE)[:20])  # a writer mid-line: wait for the rest
            f.flush()
            time.sleep(0.4)
            f.write(j("06.000", "half", "order-1", trace_id=TRACE)[20:] + "\n")
        (log / "order-2.log").write_text(j("07.000", "a new file", "order-2", trace_id=TRACE) + "\n")

    got: list[LogLine] = []
    writer = threading.Thread(target=write)
    writer.start()
    started = time.monotonic()
    logview.follow_files(log, Filter(("order",), trace=TRACE), got.append, seconds=1.5, poll=0.05)
    writer.join()
    assert 1.4 < time.monotonic() - started < 3
    assert [(line.program, line.message) for line in got] == [
        ("order-1", "catalog unavailable"), ("order-1", "appended"), ("order-1", "half"), ("order-2", "a new file")]


def test_follow_through_the_command_as_a_process(var: Path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "msa_cli.logs_cmd", "-f", "--seconds", "1.5", "--json",
                             "--var-dir", str(var), "catalog-2"], stdout=subprocess.PIPE, text=True, env=env)
    time.sleep(0.5)
    with (var / "log" / "catalog-2.log").open("a") as f:
        f.write(j("09.000", "later", "catalog-2") + "\n")
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert [json.loads(line)["msg"] for line in out.splitlines()] == ["registered", "later"]


def test_ctrl_c_ends_follow_cleanly(var: Path):
    proc = subprocess.Popen([sys.executable, "-m", "msa_cli.logs_cmd", "-f", "--var-dir", str(var), "catalog-2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    assert proc.stdout is not None
    assert "registered" in proc.stdout.readline()  # it is following now
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    assert proc.returncode == 0 and err == "", err


# ---- the compose source ------------------------------------------------------------------------------------------

COMPOSE_OUTPUT = "\n".join([
    "Attaching to catalog-1, gateway",  # compose's own line: not a log line
    f"gateway    | 2024-05-01T12:00:01.004000000Z {access('01.000')}",
    f"catalog-1  | 2024-05-01T12:00:00.100000000Z {j('00.100', 'seeded 5 product(s)')}",
    f"catalog-1  | 2024-05-01T12:00:02.001000000Z {j('02.000', 'reserve failed', level='ERROR', trace_id=TRACE)}",
    "catalog-1  | 2024-05-01T12:00:02.001500000Z Traceback (most recent call last):",
    "msa-sandbox-consul-1  | 2024-05-01T12:00:00.050000000Z 2024-05-01T12:00:00.050Z [INFO]  agent: started",
    f"order-1-1  | 2024-05-01T12:00:03.000000000Z {j('03.000', 'other', 'order-1', trace_id=OTHER)}",
]) + "\n"


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `docker` that records its argv and prints canned `docker compose logs --timestamps` output."""
    script, argv_log = tmp_path / "docker.py", tmp_path / "argv.json"
    (tmp_path / "canned.txt").write_text(COMPOSE_OUTPUT)
    script.write_text("import json, sys\n"
                      f"open({str(argv_log)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
                      f"sys.stdout.write(open({str(tmp_path / 'canned.txt')!r}).read())\n")
    monkeypatch.setenv("MSA_DOCKER", f"{sys.executable} {script}")
    monkeypatch.setenv("MSA_TARGET", "compose")
    return argv_log


def test_compose_logs_parsed_merged_and_filtered(fake_docker: Path):
    r = runner.invoke(cli, ["--json", "--since", "2024-05-01T11:00:00Z"])
    assert r.exit_code == 0, r.output
    docs = [json.loads(line) for line in r.output.splitlines()]
    assert [(d["program"], d["msg"] if "msg" in d else d["path"]) for d in docs] == [
        ("discovery", "2024-05-01T12:00:00.050Z [INFO]  agent: started"),  # consul plays discovery, as in compose.py
        ("catalog-1", "seeded 5 product(s)"),
        ("gateway", "/api/orders"),
        ("catalog-1", "reserve failed"),
        ("catalog-1", "Traceback (most recent call last):"),  # docker's timestamp dates a plain line
        ("order-1", "other"),
    ]
    argv = json.loads(fake_docker.read_text())
    assert argv[0] == "compose" and argv[argv.index("-p") + 1] == "msa-sandbox"
    assert argv[argv.index("-f") + 1].endswith("docker-compose.yml")
    assert argv[argv.index("-p") + 2:] == ["logs", "--no-color", "--timestamps", "--since", "2024-05-01T11:00:00Z"]

    r = runner.invoke(cli, ["--json", "--trace", TRACE.upper(), "catalog", "gateway"])
    assert [json.loads(line)["program"] for line in r.output.splitlines()] == ["gateway", "catalog-1"]


def test_compose_follow_passes_follow_and_stops_after_seconds(fake_docker: Path):
    r = runner.invoke(cli, ["--follow", "--seconds", "5", "--level", "ERROR"])
    assert r.exit_code == 0, r.output
    assert "reserve failed" in r.output and "ERROR" in r.output and "seeded" not in r.output
    assert json.loads(fake_docker.read_text())[-1] == "--follow"


def test_compose_failure_is_one_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MSA_TARGET", "compose")
    monkeypatch.setenv("MSA_DOCKER", f"{sys.executable} -c \"import sys; sys.exit('no engine')\"")
    r = runner.invoke(cli, [])
    assert r.exit_code == 1 and "docker compose logs" in r.output and "no engine" in r.output


def test_as_msa_logs_the_msa_options_count(var: Path, fake_docker: Path, monkeypatch: pytest.MonkeyPatch):
    """`msa --var-dir X logs`, `msa --target compose logs`: the line for app.py, on a group of its own here (the
    real app stays as it is), with the real app's callback."""
    from msa_cli import app as app_module
    from msa_cli import context

    monkeypatch.setattr(context, "state", dict(context.state))
    monkeypatch.delenv("MSA_TARGET")
    msa = typer.Typer()
    msa.callback()(app_module._options)
    msa.command()(logs_cmd.logs)
    r = runner.invoke(msa, ["--var-dir", str(var), "logs", "--json", "catalog-2"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["msg"] == "registered"
    r = runner.invoke(msa, ["--target", "compose", "logs", "--json", "order"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["msg"] == "other"
