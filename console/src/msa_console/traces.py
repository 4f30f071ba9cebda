"""Where the console reads traces: the local JSON-lines files that every process writes in local mode, or Jaeger's
query API (compose) — the same readers as `msa trace` (msa_cli.traces), run off the event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msa_cli.traces as tr

RECENT_TAIL_BYTES = 4 << 20  # per file: recent traces without reading a long day's files whole
# The console page's own requests (its stream, snapshots, these lists) cross only the gateway and the console: not
# what a learner looks for, so such traces stay out of the recent list (they are still in the files and in Jaeger).
OWN = {"gateway", "console"}


class TraceSource:
    def __init__(self, var_dir: Path, jaeger_url: str = "") -> None:
        self.var_dir, self.jaeger_url = var_dir, jaeger_url.rstrip("/")

    @property
    def where(self) -> str:
        return self.jaeger_url or str(self.var_dir / "traces")

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        def read() -> list[tr.Span]:
            if self.jaeger_url:
                return tr.jaeger_recent(self.jaeger_url, limit=limit)
            return tr.local_spans(self.var_dir, tail_bytes=RECENT_TAIL_BYTES)

        traces = [t for t in tr.group(await asyncio.to_thread(read)) if not set(t.services) <= OWN]
        return [tr.summary(t) for t in reversed(traces[-limit:])]  # newest first

    async def one(self, trace_id: str) -> dict[str, Any] | None:
        def read() -> list[tr.Span]:
            if self.jaeger_url:
                return tr.jaeger_spans(self.jaeger_url, trace_id)
            return tr.local_spans(self.var_dir, trace_id)

        traces = tr.group(await asyncio.to_thread(read))
        if not traces:
            return None
        trace = max(traces, key=lambda t: len(t.spans))
        return {**tr.summary(trace), "rows": tr.waterfall_rows(trace)}
