"""`make bench`: every performance figure of the sandbox, measured side by side with its reference, in one table.

    .venv/bin/python bench/harness.py             # the full run (~6-8 min): several runs per figure, medians
    .venv/bin/python bench/harness.py --quick     # the CI run (~2 min): one small run per figure
    .venv/bin/python bench/harness.py --readme    # rewrite README.md's Performance block from var/bench/latest.json
    .venv/bin/python bench/harness.py --only gateway,stack   # some benchmarks only (not written to latest.json)

It finds every `bench/*_bench.py` and runs each in a process of its own (so one benchmark's event loop, environment
or crash cannot touch the next). A benchmark module that defines

    def figures(quick: bool) -> list[dict]

takes part in the table: each dict is one figure (the keys are listed under FIGURE below). ROWS is the table of
issue #9: the figures, their targets and how a target is judged. A row whose benchmark has not measured it reads
"not yet measured" and names the file that would; a figure a benchmark reports that ROWS does not know is added
at the end as "report". A module without `figures` is still run as a script (`--quick` in quick mode), so it
cannot rot, but adds no row.

Nothing here passes or fails on time (a shared, noisy machine): "met?" is information. The exit status is 1 only
when a benchmark crashed or left a process running. Every process a benchmark starts inherits
MSA_BENCH_RUN=<id>; after each benchmark the harness looks for live processes carrying it, reports and kills them.

Writes var/bench/<timestamp>.json and var/bench/latest.json (quick runs: quick-<timestamp>.json and
latest-quick.json), and each benchmark's own output to var/bench/logs/<timestamp>/<name>.log.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = ROOT / "var" / "bench"
README = ROOT / "README.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
INSTALL = "apt-get install -y wrk nginx-light"
# Benchmarks run in this order (the start-up figure first, on the quietest machine); any other *_bench.py after.
ORDER = ("stack", "gateway", "events", "resilience", "discovery")
TIME_LIMIT_S = {False: 420.0, True: 150.0}  # per benchmark (full, quick): a hung benchmark is killed, not waited on

# A figure, as a benchmark's figures() returns it (only `key` and `runs` are required):
FIGURE = {
    "key": "gateway.c1.rps — matches a row of ROWS (or is added at the end as 'report')",
    "label": "what it is, for rows ROWS does not know",
    "unit": "s | MB | req/s | ms | events/s | errors ...",
    "runs": "[float] the measured value of each run (several in a full run: the table shows the median, min–max)",
    "reference": "[float] the reference measured in the same runs (or absent)",
    "reference_label": "what the reference is, e.g. 'nginx, 1 worker'",
    "also": "{label: [float]} further references, shown beside the main one",
    "skipped": "why it was not measured (a missing tool: say how to install it)",
    "note": "anything a reader needs to weigh the figure",
}


@dataclass(frozen=True)
class Row:
    key: str
    figure: str
    target: str
    met: Callable[[dict], bool | None] | None  # the summarized figure (see summarize) → target met
    module: str  # the benchmark that measures it: bench/<module>_bench.py
    compare: str = "ratio"  # the ratio column: "ratio" (measured/reference, ×), "pct" (as a %), "delta" (m − r)


def _le(limit: float) -> Callable[[dict], bool]:
    return lambda fig: fig["median"] <= limit


def _lt(limit: float) -> Callable[[dict], bool]:
    return lambda fig: fig["median"] < limit


def _share(at_least: float) -> Callable[[dict], bool | None]:
    # Judged on the ratio the table shows: each run against the reference of that same run, then the median.
    # No reference (its tool is missing): no verdict.
    return lambda fig: fig["ratio"] >= at_least if fig.get("ratio") is not None else None


ROWS: tuple[Row, ...] = (
    Row("up.seconds", "`make up` → every instance passing in discovery", "≤ 3 s", _le(3.0), "stack"),
    Row("stack.memory_mb", "whole local stack memory (PSS), idle after `make up`", "≤ 450 MB", _le(450.0), "stack"),
    Row("stack.memory_mb_loaded", "whole local stack memory (PSS), after the order load", "≤ 450 MB", _le(450.0),
        "stack"),
    Row("gateway.c1.rps", "gateway req/s, 1 connection", "≥ 60% of nginx", _share(0.6), "gateway", "pct"),
    Row("gateway.c1.p50_ms", "gateway p50, 1 connection", "< 1 ms added", lambda m, r: r is not None and m - r < 1,
        "gateway", "delta"),
    Row("gateway.c1.p99_ms", "gateway p99, 1 connection", "report", None, "gateway", "delta"),
    Row("gateway.c50.rps", "gateway req/s, 50 connections", "≥ 60% of nginx", _share(0.6), "gateway", "pct"),
    Row("gateway.c50.p50_ms", "gateway p50, 50 connections", "report", None, "gateway"),
    Row("gateway.c50.p99_ms", "gateway p99, 50 connections", "report", None, "gateway"),
    # The gateway's alternatives (issue #17: bench/README.md, "HTTP: kept libraries vs the hand-written stack"):
    # req/s against nginx, latency against the gateway (granian, the kit's client) in the same runs.
    *(row for name, label in (("uvicorn", "on uvicorn (httptools)"),
                              ("aiohttp_upstream", "with aiohttp's client upstream"))
      for row in (Row(f"gateway.{name}.c1.rps", f"gateway {label} req/s, 1 connection", "report", None, "gateway",
                      "pct"),
                  Row(f"gateway.{name}.c50.rps", f"gateway {label} req/s, 50 connections", "≥ 60% of nginx",
                      _share(0.6), "gateway", "pct"),
                  Row(f"gateway.{name}.c1.p50_ms", f"gateway {label} p50, 1 connection", "report", None,
                      "gateway", "delta"),
                  Row(f"gateway.{name}.c50.p99_ms", f"gateway {label} p99, 50 connections", "report", None,
                      "gateway", "delta"))),
    Row("client.kit.calls_s", "service call through the kit's stack on msa_kit.http1, calls/s", "report", None,
        "client"),
    Row("client.aiohttp.calls_s", "… on httpx-aiohttp (vs the kit's client)", "report", None, "client", "pct"),
    Row("client.kit.cpu_us", "service call on msa_kit.http1, caller's CPU µs per call", "report", None, "client"),
    Row("client.aiohttp.cpu_us", "… on httpx-aiohttp (vs the kit's client)", "report", None, "client"),
    Row("orders.cpu_ms", "CPU per confirmed order, every process summed", "≤ 6 ms", _le(6.0), "stack"),
    *(Row(f"orders.cpu_ms.{name}", f"… of which {name}", "report", None, "stack")
      for name in ("order", "catalog", "user", "gateway", "broker", "faultproxy", "supervisord", "config-server",
                   "discovery", "probe", "console")),
    Row("orders.place.rps", "order placement through the gateway, req/s", "report", None, "stack"),
    Row("orders.place.p50_ms", "order placement through the gateway, p50", "report", None, "stack"),
    Row("orders.place.p99_ms", "order placement through the gateway, p99", "report", None, "stack"),
    Row("backends.pg.place_p50_ms", "order placement p50 on PostgreSQL (closed loop)", "report", None, "backends",
        "ratio"),
    Row("backends.pg.place_rps", "order placement req/s on PostgreSQL (closed loop)", "report", None, "backends",
        "pct"),
    Row("saga.r50.p50_ms", "order placed → CONFIRMED at 50 orders/s, p50", "report", None, "events"),
    Row("saga.r50.p99_ms", "order placed → CONFIRMED at 50 orders/s, p99", "< 100 ms", _lt(100.0), "events"),
    Row("saga.r200.p50_ms", "order placed → CONFIRMED at 200 orders/s, p50", "report", None, "events"),
    Row("saga.r200.p99_ms", "order placed → CONFIRMED at 200 orders/s, p99", "report", None, "events"),
    Row("events.rps", "events/s outbox → broker → consumer", "≥ 50% of raw", _share(0.5), "events", "pct"),
    Row("failover.errors", "failover: client errors, one of two instances killed under load", "0",
        lambda m, _r: m == 0, "resilience"),
    Row("failover.eject_s", "failover: time to eject the killed instance", "< 1 s", _lt(1.0), "resilience"),
    Row("breaker.failfast_p99_ms", "breaker open: fail-fast p99", "< 20 ms", _lt(20.0), "resilience"),
    Row("discovery.notify.p50_ms", "discovery blocking query: change → notify p50", "report", None, "discovery"),
    Row("discovery.notify.p99_ms", "discovery blocking query: change → notify p99", "< 200 ms", _lt(200.0),
        "discovery"),
    Row("discovery.loaded.notify.p50_ms", "… under load (heartbeats, watchers, readers), p50", "report", None,
        "discovery"),
    Row("discovery.loaded.notify.p99_ms", "… under load (heartbeats, watchers, readers), p99", "< 200 ms",
        _lt(200.0), "discovery"),
)


# ---- running the benchmarks ----------------------------------------------------------------------------------------

def discover() -> list[str]:
    names = [p.name[: -len("_bench.py")] for p in BENCH.glob("*_bench.py")]
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def run_child(name: str, quick: bool, out: Path) -> None:
    """In the child process: import bench/<name>_bench.py and write what figures(quick) returns to `out`."""
    sys.path[:0] = [str(BENCH), str(ROOT)]
    spec = importlib.util.spec_from_file_location(f"{name}_bench", BENCH / f"{name}_bench.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    if not hasattr(module, "figures"):
        out.write_text(json.dumps({"figures": None}))
        return
    figures = module.figures(quick)
    out.write_text(json.dumps({"figures": figures}))


def run_module(name: str, quick: bool, log_dir: Path, run_marker: str) -> dict:
    """One benchmark in a process (and session) of its own; its output to a log; bounded in time."""
    log = log_dir / f"{name}.log"
    result_file = log_dir / f"{name}.json"
    env = {**os.environ, "MSA_BENCH_RUN": run_marker, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--out", str(result_file)]
    cmd += ["--quick"] if quick else []
    started = time.monotonic()
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            rc = proc.wait(TIME_LIMIT_S[quick])
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the benchmark and what it started directly
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = None
    took = time.monotonic() - started
    outcome: dict = {"seconds": round(took, 1), "log": str(log.relative_to(ROOT)), "ok": rc == 0}
    if rc is None:
        outcome["error"] = f"killed after {TIME_LIMIT_S[quick]:.0f} s"
    elif rc != 0:
        outcome["error"] = f"exit status {rc}: " + _tail(log, 12)
    if rc == 0:
        data = json.loads(result_file.read_text())
        outcome["figures"] = data["figures"]
        if data["figures"] is None:  # no figures(): run it as a script, so that at least it cannot rot
            with log.open("ab") as f:
                f.write(b"\n--- no figures(): run as a script ---\n")
                script = subprocess.run([sys.executable, str(BENCH / f"{name}_bench.py"), *(["--quick"] * quick)],
                                        stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                        timeout=TIME_LIMIT_S[quick])
            outcome["ok"] = script.returncode == 0
            outcome["note"] = "no figures(quick) function: ran as a script, its figures are in the log only"
            if script.returncode:
                outcome["error"] = f"as a script: exit status {script.returncode}: " + _tail(log, 12)
    left = leftovers(run_marker)
    if left:
        outcome["ok"] = False
        outcome["leftovers"] = left
        for pid, _ in left:
            _kill(pid)
    return outcome


def leftovers(marker: str) -> list[tuple[int, str]]:
    """Live processes started by a benchmark of this run (they carry MSA_BENCH_RUN=<marker>), but not us."""
    from msa_cli.processes import processes_carrying

    found = []
    for pid in processes_carrying("MSA_BENCH_RUN", marker):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        found.append((pid, cmdline[:120]))
    return found


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---- figures → the table -------------------------------------------------------------------------------------------

def machine() -> dict:
    info: dict = {"nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                  "python": platform.python_version(), "kernel": platform.release()}
    try:
        mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal:"))
        info["ram_gb"] = round(mem_kb / 1024 / 1024, 1)
    except (OSError, StopIteration):
        pass
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor() or "?"
    return info


def _num(value: float, unit: str) -> str:
    if value != value:  # NaN
        return "–"
    if unit in ("req/s", "events/s", "orders/s") or abs(value) >= 1000:
        return f"{value:,.0f}"
    if unit in ("errors", "count"):
        return f"{value:.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(values: list[float], unit: str) -> str:
    med = statistics.median(values)
    text = f"{_num(med, unit)} {unit}".strip()
    if len(values) > 1 and min(values) != max(values):
        text += f" ({_num(min(values), unit)}–{_num(max(values), unit)})"
    return text


def _valid(v: object) -> bool:
    return isinstance(v, (int, float)) and v == v  # not None, not NaN (a run that could not measure it)


def summarize(raw: dict) -> dict:
    """Medians, spread and the per-run paired ratio of one figure (as figures() returned it). A run's value may be
    None or NaN (that run could not measure it): it is left out, and the figure says how many runs count."""
    out = dict(raw)
    all_runs, all_ref = list(raw.get("runs") or []), list(raw.get("reference") or [])
    out["runs"] = [float(v) if _valid(v) else None for v in all_runs]  # NaN is not JSON
    runs = [float(v) for v in all_runs if _valid(v)]
    ref = [float(v) for v in all_ref if _valid(v)]
    if all_ref:
        out["reference"] = [float(v) if _valid(v) else None for v in all_ref]
    for name, values in (raw.get("also") or {}).items():
        out.setdefault("also", {})[name] = [float(v) for v in values if _valid(v)]
    if runs:
        out |= {"median": statistics.median(runs), "min": min(runs), "max": max(runs), "n": len(runs),
                "of": len(all_runs)}
    if ref:
        out |= {"reference_median": statistics.median(ref), "reference_min": min(ref), "reference_max": max(ref)}
    pairs = [(m, r) for m, r in zip(all_runs, all_ref) if _valid(m) and _valid(r) and r]
    if pairs and len(all_runs) == len(all_ref):
        # Paired: each run's figure against the reference measured in that same run, then the median.
        out["ratio"] = statistics.median(m / r for m, r in pairs)
        out["delta"] = statistics.median(m - r for m, r in pairs)
    elif runs and ref and statistics.median(ref):
        out["ratio"] = statistics.median(runs) / statistics.median(ref)
        out["delta"] = statistics.median(runs) - statistics.median(ref)
    return out


def build_rows(figures: dict[str, dict], modules: dict[str, dict]) -> list[dict]:
    rows = []
    known = {r.key for r in ROWS}
    for row in ROWS:
        fig = figures.get(row.key)
        rows.append(_row(row.figure, row.target, row.met, row.compare, fig, row.module, modules))
    for key, fig in figures.items():
        if key not in known:
            rows.append(_row(fig.get("label") or key, "report", None, "ratio", fig, "", modules))
    return rows


def _row(label: str, target: str, met: Callable | None, compare: str, fig: dict | None, module: str,
         modules: dict[str, dict]) -> dict:
    row = {"figure": label, "target": target, "measured": "", "reference": "", "ratio": "", "met": "",
           "note": ""}
    if fig is None or "median" not in fig:
        if fig and fig.get("skipped"):
            row["measured"] = f"skipped: {fig['skipped']}"
        elif module and module not in modules and (BENCH / f"{module}_bench.py").exists():
            row["measured"] = f"{module}: not run this time (--only)"
        elif module and module not in modules:
            row["measured"] = f"{module}: not yet measured (bench/{module}_bench.py does not exist yet)"
        elif module and not modules[module].get("ok") and modules[module].get("error"):
            row["measured"] = f"{module}: not measured, the benchmark crashed (see {modules[module]['log']})"
        elif fig and fig.get("runs"):
            row["measured"] = f"no value in any of its {len(fig['runs'])} run(s)"
        elif module and modules[module].get("figures") is None:
            row["measured"] = f"{module}: not yet measured (bench/{module}_bench.py has no figures(quick))"
        else:
            row["measured"] = "not measured in this run" + (" (full run only)" if modules.get(module, {}).get(
                "quick") else "")
        row["met"] = "–"
        return row
    unit = fig.get("unit", "")
    row["measured"] = _cell([v for v in fig["runs"] if v is not None], unit)
    if fig["n"] < fig["of"]:
        row["measured"] += f" [{fig['n']} of {fig['of']} runs gave a value]"
    row["note"] = fig.get("note", "")
    refs = []
    ref_values = [v for v in fig.get("reference") or [] if v is not None]
    if ref_values:
        refs.append(_cell(ref_values, unit) + (f" {fig['reference_label']}" if fig.get("reference_label") else ""))
    elif fig.get("reference_label"):
        refs.append(fig["reference_label"])
    for name, values in (fig.get("also") or {}).items():
        if values:
            refs.append(f"{name}: {_cell(values, unit)}")
    row["reference"] = "; ".join(refs)
    if "ratio" in fig:
        if compare == "pct":
            row["ratio"] = f"{fig['ratio']:.0%}"
        elif compare == "delta":
            row["ratio"] = f"{fig['delta']:+.2f} {unit}".strip()
        else:
            row["ratio"] = f"×{fig['ratio']:.2f}"
    if met is None:
        row["met"] = "–"
    else:
        try:
            ok = met(fig)
        except (TypeError, ZeroDivisionError):
            ok = None
        row["met"] = "–" if ok is None else ("yes" if ok else "NO")
    return row


def text_table(rows: list[dict]) -> str:
    cols = ("figure", "measured", "reference", "ratio", "target", "met")
    heads = ("figure", "measured (median, min–max)", "reference (same run)", "ratio", "target", "met?")
    width = {c: max(len(h), *(len(r[c]) for r in rows)) for c, h in zip(cols, heads)}
    lines = [" | ".join(h.ljust(width[c]) for c, h in zip(cols, heads)),
             "-+-".join("-" * width[c] for c in cols)]
    for r in rows:
        lines.append(" | ".join(r[c].ljust(width[c]) for c in cols))
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    out = ["| figure | measured (median, min–max) | reference (same run) | ratio | target | met? |",
           "|---|---|---|---:|---|:---:|"]
    for r in rows:
        cells = [r[c].replace("|", "\\|") for c in ("figure", "measured", "reference", "ratio", "target", "met")]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def notes(figures: dict[str, dict], modules: dict[str, dict]) -> list[str]:
    out = []
    seen = set()
    for key, fig in figures.items():
        note = fig.get("note")
        if note and note not in seen:
            seen.add(note)
            out.append(f"{key}: {note}")
    for name, m in modules.items():
        if m.get("note"):
            out.append(f"{name}: {m['note']}")
        if m.get("error"):
            last = m["error"].strip().splitlines()
            out.append(f"{name}: CRASHED — {last[0]} … {last[-1]} (log: {m['log']})" if len(last) > 1 else
                       f"{name}: CRASHED — {m['error']} (log: {m['log']})")
        for pid, cmd in m.get("leftovers") or []:
            out.append(f"{name}: left a process running (killed): {pid} {cmd}")
    return out


# ---- the README block ----------------------------------------------------------------------------------------------

def readme_block(report: dict) -> str:
    m = report["machine"]
    when = report["started"][:16].replace("T", " ")
    load = ", ".join(f"{x:.1f}" for x in report.get("loadavg_before", []))
    lines = [
        BEGIN,
        f"Measured {when} UTC with `{report['command']}` ({'quick mode, 1 run' if report['quick'] else 'full run'}"
        f", {report['duration_s'] / 60:.1f} min) on {m['nproc']} cores ({m['cpu']}), {m['ram_gb']} GB RAM, "
        f"Python {m['python']}; load average before the run: {load}. Everything — the stack, the references and "
        f"the load generators — shared those cores. Medians of the runs, min–max in brackets; the ratio pairs "
        f"each run with the reference measured in that same run.",
        "",
        markdown_table(report["rows"]),
        "",
    ]
    for note in report.get("notes", []):
        lines.append(f"- {note}")
    lines.append(END)
    return "\n".join(lines)


def rewrite_readme(latest: Path) -> None:
    report = json.loads(latest.read_text())
    report["rows"] = build_rows(report["figures"], report["modules"])  # today's rules on the stored figures
    text = README.read_text()
    block = readme_block(report)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n## Performance\n\n" + block + "\n"
    README.write_text(text)
    print(f"README.md: Performance block rewritten from {latest.relative_to(ROOT)}")


# ---- main ----------------------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one small run of each benchmark (CI)")
    ap.add_argument("--readme", action="store_true", help="rewrite README.md's block from var/bench/latest.json")
    ap.add_argument("--only", help="comma-separated benchmark names (e.g. stack,gateway)")
    ap.add_argument("--command", default=None, help="how this run was started, for the report")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_child(args.child, args.quick, Path(args.out))
        return 0
    if args.readme:
        latest = OUT / "latest.json"
        if not latest.exists():
            print(f"no {latest.relative_to(ROOT)} yet: run `make bench` first")
            return 1
        rewrite_readme(latest)
        return 0

    names = discover()
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            print(f"no such benchmark: {', '.join(unknown)} (there are: {', '.join(names)})")
            return 2
        names = wanted
    started = dt.datetime.now(dt.timezone.utc)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    log_dir = OUT / "logs" / (("quick-" if args.quick else "") + stamp)
    log_dir.mkdir(parents=True, exist_ok=True)
    marker = uuid.uuid4().hex
    command = args.command or "bench/harness.py" + (" --quick" if args.quick else "")
    print(f"{command}: {len(names)} benchmarks ({', '.join(names)}), "
          f"{'quick' if args.quick else 'full'} mode; logs in {log_dir.relative_to(ROOT)}/", flush=True)
    if "resilience" not in names and not args.only:
        print("  resilience     not yet measured: bench/resilience_bench.py does not exist yet", flush=True)
    loadavg_before = list(os.getloadavg())
    t0 = time.monotonic()
    modules: dict[str, dict] = {}
    figures: dict[str, dict] = {}
    for name in names:
        print(f"  {name:<14} ", end="", flush=True)
        try:
            outcome = run_module(name, args.quick, log_dir, marker)
        except Exception:  # the harness itself must still print what it has
            outcome = {"ok": False, "error": traceback.format_exc(), "log": str(log_dir.relative_to(ROOT)),
                       "seconds": 0}
        outcome["quick"] = args.quick
        modules[name] = outcome
        for fig in outcome.get("figures") or []:
            figures[fig["key"]] = summarize(fig)
        status = "ok" if outcome["ok"] else "FAILED: " + (outcome.get("error") or "").splitlines()[0]
        print(f"{outcome['seconds']:6.1f} s  {status}", flush=True)
    duration = time.monotonic() - t0
    rows = build_rows(figures, modules)
    report = {
        "started": started.isoformat(timespec="seconds"), "command": command, "quick": args.quick,
        "duration_s": round(duration, 1), "machine": machine(), "loadavg_before": loadavg_before,
        "loadavg_after": list(os.getloadavg()),
        "modules": {n: {k: v for k, v in m.items() if k != "figures"} for n, m in modules.items()},
        "figures": figures, "rows": rows, "notes": notes(figures, modules),
    }
    name = ("quick-" if args.quick else "") + stamp + ".json"
    (OUT / name).write_text(json.dumps(report, indent=1))
    if not args.only:
        (OUT / ("latest-quick.json" if args.quick else "latest.json")).write_text(json.dumps(report, indent=1))

    print()
    print(text_table(rows))
    print()
    for note in report["notes"]:
        print(f"- {note}")
    left = leftovers(marker)
    print(f"\n{duration:.0f} s in all; machine: {report['machine']['nproc']} cores, {report['machine']['cpu']}; "
          f"report: var/bench/{name}" + ("" if args.quick or args.only else
                                          " (and latest.json; `bench/harness.py --readme` puts it in README.md)"))
    print("left running: " + (", ".join(f"{p} {c}" for p, c in left) if left else "nothing (no process carries "
                                                                                    "this run's MSA_BENCH_RUN)"))
    failed = [n for n, m in modules.items() if not m["ok"]]
    if failed:
        print(f"FAILED (crashed or left something running): {', '.join(failed)}")
    return 1 if failed or left else 0


if __name__ == "__main__":
    sys.exit(main())
