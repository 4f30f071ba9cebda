"""`msa logs`: every program's log as one time-ordered stream, filtered by program, service, trace, level and time.

Local mode: supervisord writes each program's stdout+stderr to `<var dir>/log/<program>.log` (supervisor_config)
and its own to `supervisord.log`. The kit's programs write one JSON object a line (msa_kit.logs.JsonFormatter: ts,
level, logger, msg, service, instance, trace_id/span_id inside a trace, exc; the gateway's access log has the same
envelope plus method/path/status…). Other lines — supervisord's, the config server's and discovery's plain
`asctime LEVEL …` formatter, tracebacks — are kept: a plain line with a leading timestamp has that time; any other
line (a traceback's continuation) takes the time and level of the line before it in its file, so it stays beside it.

Compose mode: `docker compose logs --timestamps` (lines `<service>  | <docker time> <line>`), the same parsing.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.text import Text

__all__ = ["LEVELS", "FileTail", "Filter", "LogLine", "compose_lines", "follow_files", "merged", "parse_line",
           "parse_since", "render", "to_json"]

LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
# supervisord's own spellings (and the usual aliases), so `--level warning` keeps supervisord's WARN lines.
_ALIASES = {"WARN": "WARNING", "ERRO": "ERROR", "CRIT": "CRITICAL", "FATAL": "CRITICAL", "DEBG": "DEBUG",
            "TRAC": "DEBUG", "BLAT": "DEBUG"}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)  # the time of a file's lines before its first timestamp
# `2024-05-01 12:00:00,123 INFO …`: logging's default asctime (local time), used by supervisord and the plain
# formatters.
_PLAIN = re.compile(r"^(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[,.]\d+)?)\s+([A-Z]{4,8})\b")
_UVICORN = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL):\s+")
_COMPOSE = re.compile(r"^(?P<prefix>[^\s|]+)\s*\|\s?(?P<rest>.*)$")
_DOCKER_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d))\s?(.*)$")
_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
REORDER_WINDOW_S = 2.0  # how far out of order a file's lines may be (see in_order)


@dataclass(frozen=True)
class LogLine:
    time: datetime  # aware, UTC
    program: str  # the file it came from (local) or the compose service: catalog-2, gateway, supervisord
    service: str  # the service of the instance: catalog for catalog-2
    level: str  # one of LEVELS
    message: str
    trace_id: str | None  # 32 lowercase hex digits, as JsonFormatter writes them
    raw: dict[str, Any] | None  # the JSON object of the line; None for a plain line
    text: str = field(default="", compare=False)  # the line as written
    timed: bool = field(default=True, compare=False)  # False: its time is borrowed from the line before


def _service_of(program: str) -> str:
    # catalog-2 → catalog; a canary (msa_cli.canary) is named after its version: catalog-v2 → catalog.
    return re.sub(r"-v?\d+$", "", program)


def _level(name: object, default: str = "INFO") -> str:
    name = str(name or "").upper()
    name = _ALIASES.get(name, name)
    return name if name in LEVELS else default


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace(",", "."))
    except ValueError:
        return None
    # A naive time is the writer's local time (logging's asctime); JsonFormatter's always carries its Z.
    return (t if t.tzinfo else t.astimezone()).astimezone(timezone.utc)


def _message(doc: dict[str, Any]) -> str:
    if "msg" in doc or "message" in doc:
        return str(doc.get("msg", doc.get("message")))
    if "method" in doc and "status" in doc:  # the gateway's access log has no msg: say what it records
        return f"{doc['method']} {doc.get('path', '')} → {doc['status']} {doc.get('upstream') or '-'} " \
               f"{doc.get('ms', '')} ms".rstrip()
    return json.dumps({k: v for k, v in doc.items() if k not in ("ts", "level", "service", "instance")})


def parse_line(text: str, program: str, previous: LogLine | None = None,
               fallback_time: datetime | None = None) -> LogLine:
    """One line of `program`'s log. `previous` (the line before it in the same file) lends its time and level to a
    line that has neither; `fallback_time` (docker's timestamp) is preferred to that when given."""
    text = text.rstrip("\r\n")
    prev_time = fallback_time or (previous.time if previous else _EPOCH)
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            trace = doc.get("trace_id")
            return LogLine(
                time=_parse_time(doc.get("ts") or doc.get("time")) or prev_time,
                program=program,
                service=str(doc.get("service") or _service_of(program)),
                level=_level(doc.get("level")),
                message=_message(doc),
                trace_id=str(trace).lower() if trace else None,
                raw=doc,
                text=text,
            )
    m = _PLAIN.match(text)
    t = _parse_time(m.group(1)) if m else None
    if m and t and (m.group(2) in LEVELS or m.group(2) in _ALIASES):
        return LogLine(t, program, _service_of(program), _level(m.group(2)), text[m.end():].lstrip(), None, None,
                       text)
    if u := _UVICORN.match(text):  # uvicorn's default `INFO:     …`: a level, but no time
        return LogLine(prev_time, program, _service_of(program), _level(u.group(1)), text[u.end():], None, None,
                       text, timed=fallback_time is not None)
    # A continuation (a traceback, a wrapped message): beside the line it continues, at its level.
    return LogLine(prev_time, program, _service_of(program), previous.level if previous else "INFO", text, None,
                   None, text, timed=fallback_time is not None)


# ---- filters ----------------------------------------------------------------------------------------------------


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """`30s`, `5m`, `2h`, `1d` ago, or an ISO time (naive: local time). ValueError for anything else."""
    value = value.strip()
    now = now or datetime.now(timezone.utc)
    if m := _AGO.match(value):
        return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    t = _parse_time(value)
    if t is None:
        raise ValueError(f"--since {value!r}: give a duration (30s, 5m, 2h, 1d) or an ISO time (2024-05-01T12:00:00Z)")
    return t


def normalize_trace(trace_id: str) -> str:
    t = trace_id.strip().lower()
    return t[2:] if t.startswith("0x") else t


@dataclass(frozen=True)
class Filter:
    names: tuple[str, ...] = ()  # programs (catalog-2) or services (catalog: all its instances)
    trace: str | None = None
    level: str | None = None
    since: datetime | None = None

    def __post_init__(self) -> None:
        if self.level is not None and self.level.upper() not in LEVELS and self.level.upper() not in _ALIASES:
            raise ValueError(f"--level {self.level!r}: one of {', '.join(LEVELS)}")
        if self.trace is not None:
            object.__setattr__(self, "trace", normalize_trace(self.trace))

    def wants_program(self, program: str) -> bool:
        """Whether a file (or compose service) can hold wanted lines at all; its service is the name's stem."""
        return not self.names or program in self.names or _service_of(program) in self.names

    def __call__(self, line: LogLine) -> bool:
        if self.names and line.program not in self.names and line.service not in self.names:
            return False
        if self.trace is not None and line.trace_id != self.trace:
            return False
        if self.level is not None and LEVELS[line.level] < LEVELS[_level(self.level)]:
            return False
        return self.since is None or line.time >= self.since


# ---- local mode: the files of <var dir>/log -------------------------------------------------------------------


class FileTail:
    """One log file, read from where the last read stopped; only whole lines (a writer may be mid-line)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.program = path.stem
        self.offset = 0
        self.previous: LogLine | None = None

    def lines(self, final: bool = False) -> Iterator[LogLine]:
        """The lines written since the last call. `final`: also a last line without its newline (nobody will
        finish it for a one-off read)."""
        try:
            f = self.path.open("rb")
        except OSError:
            return
        with f:
            f.seek(0, 2)
            if f.tell() < self.offset:  # truncated or replaced: start again from its beginning
                self.offset, self.previous = 0, None
            f.seek(self.offset)
            # Lines before the file's first timestamp (uvicorn's `INFO: Started server process`) wait for it and
            # take its time, so they sort with the program's start, not at 1970 (nor fall out of a --since).
            leading: list[LogLine] = []
            for raw in f:
                if not raw.endswith(b"\n") and not final:
                    break
                self.offset += len(raw)
                self.previous = line = parse_line(raw.decode(errors="replace"), self.program, self.previous)
                if line.time == _EPOCH and not line.timed:
                    leading.append(line)
                    continue
                yield from (replace(x, time=line.time) for x in leading)
                leading = []
                yield line
            yield from leading


def log_files(log_dir: Path, keep: Filter | None = None) -> list[Path]:
    return sorted(p for p in log_dir.glob("*.log") if keep is None or keep.wants_program(p.stem))


def in_order(lines: Iterable[LogLine], window: float = REORDER_WINDOW_S) -> Iterator[LogLine]:
    """A file's lines in time order. A file is nearly so already, but not quite: the gateway's access lines come
    from a writer thread in 50 ms batches, after `logging` lines stamped later. So hold each line until one `window`
    seconds newer has been read; ties keep the file's order (a traceback stays under its line)."""
    held: list[tuple[datetime, int, LogLine]] = []
    for seq, line in enumerate(lines):
        heapq.heappush(held, (line.time, seq, line))
        while held[0][0] < line.time - timedelta(seconds=window):
            yield heapq.heappop(held)[2]
    while held:
        yield heapq.heappop(held)[2]


def merged(tails: Iterable[FileTail], keep: Filter | None = None, final: bool = True) -> Iterator[LogLine]:
    """Every file's lines so far, merged by time: a heap merge of the per-file streams (each read once, line by
    line, whatever its size)."""
    lines = heapq.merge(*(in_order(t.lines(final)) for t in tails), key=lambda line: line.time)
    return (line for line in lines if keep is None or keep(line))


def follow_files(log_dir: Path, keep: Filter, emit: Callable[[LogLine], None], seconds: float | None = None,
                 poll: float = 0.2) -> None:
    """What is in the files now, then what is appended to them (and to files that appear later), until `seconds`
    have passed (None: until KeyboardInterrupt, which the caller turns into a clean exit)."""
    deadline = None if seconds is None else time.monotonic() + seconds
    tails: dict[Path, FileTail] = {}
    while True:
        for path in log_files(log_dir, keep):
            tails.setdefault(path, FileTail(path))
        for line in merged(tails.values(), keep, final=False):
            emit(line)
        if deadline is not None and time.monotonic() >= deadline:
            return
        time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))


# ---- compose mode: docker compose logs --------------------------------------------------------------------------


def compose_command(since: datetime | None, follow: bool) -> tuple[list[str], Callable[[str], str]]:
    """The `docker compose … logs` argv (MSA_DOCKER, the compose file and project as the other compose commands
    use them) and a function naming the program of a line's prefix."""
    from .compose import TOOLS, ComposeTopology

    topo = ComposeTopology()
    tool_program = {service: program for program, service in TOOLS.items()}  # consul → discovery
    args = ["logs", "--no-color", "--timestamps"]
    if since is not None:
        args += ["--since", since.strftime("%Y-%m-%dT%H:%M:%SZ")]
    if follow:
        args.append("--follow")
    services = set(topo.services)

    def program(prefix: str) -> str:
        # Compose prefixes a line with the service (`catalog-1`), the service and replica (`catalog-1-1`) or the
        # container (`msa-sandbox-catalog-1-1`), by version; name it after its compose service when we can.
        for name in (prefix, prefix.removeprefix(f"{topo.project}-")):
            for candidate in (name, re.sub(r"-\d+$", "", name)):
                if candidate in services:
                    return tool_program.get(candidate, candidate)
        return prefix

    return topo.compose_command(*args), program


def compose_lines(stream: TextIO, program: Callable[[str], str] = lambda p: p) -> Iterator[LogLine]:
    """Lines of `docker compose logs [--timestamps]` output, in the order given."""
    previous: dict[str, LogLine] = {}
    for text in stream:
        m = _COMPOSE.match(text.rstrip("\r\n"))
        if not m:
            continue  # compose's own chatter (`Attaching to …`)
        name, rest = program(m.group("prefix")), m.group("rest")
        stamp = None
        if d := _DOCKER_TIME.match(rest):
            stamp, rest = _parse_time(d.group(1)), d.group(2)
        previous[name] = line = parse_line(rest, name, previous.get(name), stamp)
        yield line


def compose_merged(lines: Iterable[LogLine]) -> Iterator[LogLine]:
    """Compose prints each container's lines in order but interleaves containers as it reads them: merge by time."""
    per_program: dict[str, list[LogLine]] = {}
    for line in lines:
        per_program.setdefault(line.program, []).append(line)
    return heapq.merge(*(in_order(v) for v in per_program.values()), key=lambda line: line.time)


def run_compose(since: datetime | None, follow: bool, keep: Filter, emit: Callable[[LogLine], None],
                seconds: float | None = None) -> None:
    argv, program = compose_command(since, follow)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
    except FileNotFoundError:
        raise RuntimeError(f"`{argv[0]}` is not installed or not on PATH (set MSA_DOCKER to the docker CLI)") from None
    assert proc.stdout is not None and proc.stderr is not None
    timer = None
    if seconds is not None:  # bound a --follow (tests); a one-off read ends when compose has printed everything
        timer = threading.Timer(seconds, proc.terminate)
        timer.start()
    try:
        lines = compose_lines(proc.stdout, program)
        for line in (lines if follow else compose_merged(lines)):
            if keep(line):
                emit(line)
    finally:
        if timer:
            timer.cancel()
        if proc.poll() is None:
            proc.terminate()
        rc = proc.wait()
        error = proc.stderr.read().strip()
    if rc not in (0, -signal.SIGTERM):  # SIGTERM: ours, at the end of --seconds
        raise RuntimeError(f"`docker compose logs` failed (exit {rc}): {error.splitlines()[-1] if error else ''}")


# ---- output -----------------------------------------------------------------------------------------------------

_LEVEL_STYLE = {"DEBUG": "dim", "INFO": "green", "WARNING": "yellow", "ERROR": "red", "CRITICAL": "bold white on red"}
_PROGRAM_STYLES = ("cyan", "magenta", "blue", "bright_green", "bright_cyan", "bright_magenta", "bright_blue",
                   "yellow")


def render(line: LogLine, width: int = 14) -> Text:
    """`12:03:04.123 catalog-2      INFO     message  [trace 4bf92f35]`, the level in its colour and as a word (so it
    reads without colour too), each program in a colour of its own (stable across runs)."""
    colour = _PROGRAM_STYLES[int(hashlib.md5(line.program.encode()).hexdigest(), 16) % len(_PROGRAM_STYLES)]
    out = Text()
    out.append(line.time.strftime("%H:%M:%S.%f")[:-3], style="dim")
    out.append(" ")
    out.append(line.program.ljust(width), style=colour)
    out.append(" ")
    out.append(line.level.ljust(8), style=_LEVEL_STYLE[line.level])
    out.append(" ")
    out.append(line.message, style="red" if LEVELS[line.level] >= LEVELS["ERROR"] else "")
    if line.trace_id:
        out.append(f"  [trace {line.trace_id[:8]}]", style="dim")
    if line.raw and line.raw.get("exc"):
        out.append("\n" + "\n".join("    " + x for x in str(line.raw["exc"]).splitlines()), style="red")
    return out


def to_json(line: LogLine) -> str:
    """The line's own JSON object with `program` added; a plain line becomes one too (ts, level, msg, plain), so
    every output line parses."""
    if line.raw is not None:
        return json.dumps({**line.raw, "program": line.program})
    ts = line.time.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return json.dumps({"ts": ts, "level": line.level, "service": line.service, "msg": line.text,
                       "program": line.program, "plain": True})


def printer(json_output: bool, out: TextIO, console: Console | None = None) -> Callable[[LogLine], None]:
    console = console or Console(file=out, highlight=False, soft_wrap=True)

    def emit(line: LogLine) -> None:
        if json_output:
            out.write(to_json(line) + "\n")  # not through rich: it would wrap long lines
        else:
            console.print(render(line))
        out.flush()  # one line at a time, so `--follow | grep` sees each line as it comes

    return emit
