"""One trace as a terminal waterfall: spans from local JSON lines (`<var dir>/traces/*.jsonl`) or from Jaeger's HTTP
query API (the compose stack), grouped into traces and drawn with rich (`msa trace`, msa_cli.trace_cmd).

The bars are block characters, not colour, so the picture survives a plain terminal, a pipe and a golden file.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

import httpx
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

__all__ = ["Span", "Trace", "local_spans", "jaeger_spans", "jaeger_recent", "group", "render_waterfall",
           "render_list", "norm_id", "waterfall_rows", "summary"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def norm_id(value: str, digits: int = 32) -> str:
    """Ids compare as lowercase hex without `0x`, zero-padded: Jaeger drops leading zeros, the exporter writes 0x."""
    value = value.strip().lower()
    return (value[2:] if value.startswith("0x") else value).zfill(digits)


@dataclass(frozen=True)
class Span:
    trace_id: str  # 32 hex digits, no 0x
    span_id: str  # 16 hex digits, no 0x
    parent_id: str | None
    service: str
    instance: str
    name: str
    kind: str  # SERVER, CLIENT, PRODUCER, CONSUMER or INTERNAL
    start: int  # µs since the epoch: what Jaeger gives, and the exporter's ISO times are µs-precise
    end: int
    status: str = "UNSET"  # UNSET, OK or ERROR
    description: str = ""
    attributes: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def error(self) -> bool:
        return self.status == "ERROR"

    @property
    def duration(self) -> int:
        return max(0, self.end - self.start)


def _us(iso: str) -> int:
    """`2026-11-24T21:28:13.996426Z` → µs since the epoch, in integers (floats would lose the last digit)."""
    when = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_json_line(doc: dict[str, Any]) -> Span:
    resource = (doc.get("resource") or {}).get("attributes") or {}
    status = doc.get("status") or {}
    start = _us(doc["start_time"])
    parent = doc.get("parent_id")
    return Span(
        trace_id=norm_id(doc["context"]["trace_id"]), span_id=norm_id(doc["context"]["span_id"], 16),
        parent_id=norm_id(parent, 16) if parent else None,
        service=str(resource.get("service.name", "?")), instance=str(resource.get("service.instance.id", "")),
        name=doc["name"], kind=str(doc.get("kind", "")).removeprefix("SpanKind."),
        start=start, end=_us(doc["end_time"]) if doc.get("end_time") else start,
        status=status.get("status_code", "UNSET"), description=status.get("description") or "",
        attributes=doc.get("attributes") or {})


def local_spans(var_dir: Path | str, trace_id: str | None = None, *, tail_bytes: int | None = None) -> list[Span]:
    """Every span under `<var_dir>/traces/*.jsonl` (of one trace, when given); `tail_bytes`: only from the last so
    many bytes of each file (the recent traces, without reading a long day's files whole).

    A process may be half-way through writing a batch: a line that does not parse (the last, cut short; with
    `tail_bytes` also the first) is skipped, it will be whole on the next read."""
    wanted = f'"0x{norm_id(trace_id)}"' if trace_id else None
    spans: list[Span] = []
    for path in sorted(Path(var_dir, "traces").glob("*.jsonl")):
        with open(path, encoding="utf-8", errors="replace") as lines:
            if tail_bytes is not None:
                lines.seek(max(0, path.stat().st_size - tail_bytes))
            for line in lines:
                if wanted is not None and wanted not in line:  # a substring test is far cheaper than json.loads
                    continue
                try:
                    spans.append(_from_json_line(json.loads(line)))
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue
    return spans


def _tags(tags: Iterable[dict[str, Any]] | None) -> dict[str, Any]:
    return {t["key"]: t.get("value") for t in tags or () if "key" in t}


def _from_jaeger(doc: dict[str, Any]) -> list[Span]:
    """The spans of one entry of Jaeger's `data` list. Jaeger turns OTel's kind and status into tags (`span.kind`,
    `otel.status_code`, `error`); they are read back here and left out of the attributes."""
    processes = {pid: (p.get("serviceName", "?"), _tags(p.get("tags")))
                 for pid, p in (doc.get("processes") or {}).items()}
    spans = []
    for raw in doc.get("spans") or ():
        tags = _tags(raw.get("tags"))
        service, ptags = processes.get(raw.get("processID", ""), ("?", {}))
        refs = raw.get("references") or []
        parent = next((r for r in refs if r.get("refType") == "CHILD_OF"), refs[0] if refs else None)
        error = tags.pop("otel.status_code", None) == "ERROR" or tags.pop("error", False) in (True, "true")
        tags.pop("error", None)
        start = int(raw["startTime"])
        spans.append(Span(
            trace_id=norm_id(raw.get("traceID") or doc["traceID"]), span_id=norm_id(raw["spanID"], 16),
            parent_id=norm_id(parent["spanID"], 16) if parent else None,
            service=service, instance=str(ptags.get("service.instance.id", "")), name=raw.get("operationName", ""),
            kind=str(tags.pop("span.kind", "internal")).upper(), start=start, end=start + int(raw.get("duration", 0)),
            status="ERROR" if error else "UNSET", description=str(tags.pop("otel.status_description", "")),
            attributes=tags))
    return spans


def jaeger_spans(base_url: str, trace_id: str) -> list[Span]:
    """One trace from Jaeger's query API; [] while Jaeger does not know it (404: not arrived yet, or expired)."""
    with httpx.Client(timeout=10) as http:
        r = http.get(f"{base_url.rstrip('/')}/api/traces/{norm_id(trace_id)}")
        if r.status_code == 404:
            return []
        r.raise_for_status()
        return [s for doc in r.json().get("data") or () for s in _from_jaeger(doc)]


def jaeger_recent(base_url: str, limit: int = 20, service: str | None = None, lookback: str = "1h") -> list[Span]:
    """The spans of recent traces. Jaeger searches one service at a time, so without `service` every service it
    knows is asked; a trace found through several services is the same trace (spans are deduplicated in group)."""
    base = base_url.rstrip("/")
    with httpx.Client(timeout=10) as http:
        services = [service] if service else (http.get(f"{base}/api/services").raise_for_status().json().get("data")
                                              or [])
        spans: list[Span] = []
        for name in services:
            r = http.get(f"{base}/api/traces", params={"service": name, "limit": limit, "lookback": lookback})
            r.raise_for_status()
            spans += [s for doc in r.json().get("data") or () for s in _from_jaeger(doc)]
    return spans


@dataclass
class Trace:
    trace_id: str
    spans: list[Span]  # by start time

    @property
    def start(self) -> int:
        return self.spans[0].start

    @property
    def end(self) -> int:
        return max(s.end for s in self.spans)

    @property
    def duration(self) -> int:
        return self.end - self.start

    @property
    def root(self) -> Span:
        """The span without a parent (the gateway's); while it has not arrived, the earliest span."""
        return next((s for s in self.spans if s.parent_id is None), self.spans[0])

    @property
    def services(self) -> list[str]:
        return sorted({s.service for s in self.spans})

    @property
    def errors(self) -> int:
        return sum(s.error for s in self.spans)

    def orphans(self) -> dict[str, list[Span]]:
        """Missing parent id → the spans here that name it: a trace still arriving, or one whose span was lost."""
        ids = {s.span_id for s in self.spans}
        out: dict[str, list[Span]] = defaultdict(list)
        for s in self.spans:
            if s.parent_id is not None and s.parent_id not in ids:
                out[s.parent_id].append(s)
        return dict(out)


def group(spans: Iterable[Span]) -> list[Trace]:
    """Spans → traces, oldest first. The same span read twice (Jaeger asked per service) counts once."""
    by_trace: dict[str, dict[str, Span]] = defaultdict(dict)
    for s in spans:
        by_trace[s.trace_id].setdefault(s.span_id, s)
    traces = [Trace(tid, sorted(found.values(), key=lambda s: (s.start, s.span_id))) for tid, found in by_trace.items()]
    return sorted(traces, key=lambda t: (t.start, t.trace_id))


def _ms(us: int) -> str:
    if us >= 10_000_000:
        return f"{us / 1e6:.1f} s"
    if us >= 1_000_000:
        return f"{us / 1e6:.2f} s"
    return f"{us / 1000:.1f} ms" if us >= 10_000 else f"{us / 1000:.2f} ms"


def _when(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _operation(span: Span, parent: Span | None) -> str:
    """aio_pika names a publish `<exchange>,<routing key> send` and a delivery `<exchange> receive`; every event goes
    through the one exchange, so the routing key is what tells the hops apart — shown for both ends."""
    destination = str(span.attributes.get("messaging.destination", ""))
    if span.kind == "PRODUCER" and "," in destination:
        return f"{destination.split(',', 1)[1]} send"
    if span.kind == "CONSUMER" and parent is not None and parent.kind == "PRODUCER":
        parent_dest = str(parent.attributes.get("messaging.destination", ""))
        if "," in parent_dest:
            return f"{parent_dest.split(',', 1)[1]} receive"
    url = span.attributes.get("http.url")
    if span.kind == "CLIENT" and isinstance(url, str) and " " not in span.name:
        # A client span is named by its method alone; the logical host (the service called) and path say what.
        parts = urlsplit(url)
        return f"{span.name} {parts.netloc}{parts.path}"
    return span.name


def _queued(span: Span, parent: Span | None) -> int | None:
    """How long a message waited between publisher and consumer: consumer start − producer START. Not − producer
    end: the publish span ends when the broker confirms, which is often after the consumer has begun (a negative
    wait); its start is when the message left the outbox relay."""
    if span.kind == "CONSUMER" and parent is not None and parent.kind == "PRODUCER":
        return span.start - parent.start
    return None


def _short(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


_EIGHTHS = " ▏▎▍▌▋▊▉"


def _bar(span: Span, queued: int | None, t0: int, total: int, width: int) -> str:
    """The span on the trace's time axis, to an eighth of a cell at its end; the broker wait before a delivery in
    light shade. Every span gets at least a sliver, however short, so no row looks empty."""
    scale = width / total if total > 0 else 0.0
    start = min(width - 1, int((span.start - t0) * scale))
    end = max(start + 1 / 8, min(float(width), (span.end - t0) * scale))
    cells = end - start
    full, eighths = int(cells), round((cells - int(cells)) * 8)
    if eighths == 8:
        full, eighths = full + 1, 0
    body = "█" * full + (_EIGHTHS[eighths] if eighths else "")
    if queued:
        wait_from = max(0, min(start, int((span.start - queued - t0) * scale)))
        return (" " * wait_from + "░" * (start - wait_from) + body).ljust(width)[:width]
    return (" " * start + body).ljust(width)[:width]


def _rows(trace: Trace) -> list[tuple[int, Span, Span | None]]:
    """Depth-first, children by start time; spans whose parent has not arrived start at the top level, in time."""
    by_id = {s.span_id: s for s in trace.spans}
    children: dict[str | None, list[Span]] = defaultdict(list)
    for s in trace.spans:  # already by start time
        children[s.parent_id if s.parent_id in by_id else None].append(s)
    out: list[tuple[int, Span, Span | None]] = []

    def walk(span: Span, depth: int) -> None:
        out.append((depth, span, by_id.get(span.parent_id or "")))
        for child in children.get(span.span_id, ()):
            walk(child, depth + 1)

    for top in children.get(None, ()):
        walk(top, 0)
    return out


def render_waterfall(spans: Iterable[Span], width: int = 120) -> RenderableType:
    """One trace (the spans of one trace id) as a table, one row per span, on a common time axis `width` wide."""
    traces = group(spans)
    if not traces:
        return Text("no spans")
    trace = traces[0] if len(traces) == 1 else max(traces, key=lambda t: len(t.spans))
    t0, total = trace.start, trace.duration
    rows = _rows(trace)
    cells = []
    for depth, span, parent in rows:
        queued = _queued(span, parent)
        status = "ERROR" if span.error else ("ok" if span.status == "OK" else "")
        cells.append((span.instance or span.service, "  " * depth + _operation(span, parent),
                      f"+{_ms(span.start - t0).removesuffix(' ms')}", _ms(span.duration), status,
                      _ms(queued) if queued is not None else "", span, queued))
    headers = ("service", "operation", "start ms", "duration", "status", "queued")
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    # Seven columns, two spaces between each (box=None, padding (0, 1), no edge padding). The bar takes what is
    # left, but at least a quarter of the width: a long operation is cut (…) rather than the time axis squeezed.
    spare = width - 6 * 2 - sum(widths) + widths[1]
    bar_width = max(10, width // 4, spare - widths[1])
    widths[1] = max(12, min(widths[1], spare - bar_width))
    table = Table(box=None, padding=(0, 1), pad_edge=False, show_edge=False, header_style="bold")
    table.add_column("service", no_wrap=True)
    table.add_column("operation", no_wrap=True, overflow="ellipsis", max_width=widths[1])
    table.add_column("start ms", justify="right", no_wrap=True)
    table.add_column(f"0 … {_ms(total)}", no_wrap=True, width=bar_width, min_width=bar_width, max_width=bar_width)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("queued", justify="right", no_wrap=True)
    for service, op, start, dur, status, queued_text, span, queued in cells:
        style = "red" if span.error else ("magenta" if span.kind in ("PRODUCER", "CONSUMER") else "cyan")
        table.add_row(service, op, start, Text(_bar(span, queued, t0, total, bar_width), style=style), dur,
                      Text(status, style="bold red" if span.error else ""), queued_text,
                      style="red" if span.error else None)
    title = Text.assemble(("trace ", "bold"), (f"0x{trace.trace_id}", "bold"),
                          f"  {len(trace.spans)} spans · {len(trace.services)} services · {_ms(total)} · "
                          f"{_when(t0)}" + (f" · {trace.errors} error{'s' * (trace.errors > 1)}" if trace.errors
                                            else ""))
    notes = [Text(f"span 0x{s.span_id} ({_short(_operation(s, None), 40)})'s parent 0x{parent_id} has not arrived",
                  style="yellow")
             for parent_id, kids in trace.orphans().items() for s in kids]
    return Group(title, table, *notes)


def render_list(traces: Iterable[Trace]) -> RenderableType:
    """`msa trace --list`: one row a trace, newest first, with the id to pass to `msa trace`."""
    table = Table(box=None, padding=(0, 1), pad_edge=False, show_edge=False, header_style="bold")
    for name, justify in (("trace id", "left"), ("start (UTC)", "left"), ("root operation", "left"),
                          ("duration", "right"), ("spans", "right"), ("services", "left"), ("errors", "right")):
        table.add_column(name, justify=justify, no_wrap=True,  # type: ignore[arg-type]
                         overflow="ellipsis", max_width=40 if name == "root operation" else None)
    for t in sorted(traces, key=lambda t: t.start, reverse=True):
        root = t.root
        table.add_row(t.trace_id, _when(t.start)[5:-4], f"{root.service} {root.name}", _ms(t.duration),
                      str(len(t.spans)), ", ".join(t.services),
                      Text(str(t.errors), style="bold red") if t.errors else "0",
                      style="red" if t.errors else None)
    return table


def waterfall_rows(trace: Trace) -> list[dict[str, Any]]:
    """The waterfall's rows as data (the web console draws them): what `render_waterfall` shows, in µs from the
    trace's start."""
    t0 = trace.start
    out = []
    for depth, span, parent in _rows(trace):
        queued = _queued(span, parent)
        out.append({"depth": depth, "span_id": span.span_id, "service": span.service, "instance": span.instance,
                    "operation": _operation(span, parent), "kind": span.kind, "offset_us": span.start - t0,
                    "duration_us": span.duration, "queued_us": queued, "error": span.error,
                    "description": span.description})
    return out


def summary(trace: Trace) -> dict[str, Any]:
    """One line of the recent traces list, as data."""
    root = trace.root
    return {"trace_id": trace.trace_id, "operation": _operation(root, None), "service": root.service,
            "started": _when(trace.start), "duration_us": trace.duration, "spans": len(trace.spans),
            "services": trace.services, "errors": trace.errors}
