"""The console's HTTP face, all under /console (the gateway's `console` route forwards the prefix as it is): the
page and its static files, the live snapshot (server-sent events), the traces, and the operator-only controls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter, HTTPException, Path as PathParam, Request
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field

from .access import OperatorOnly
from .chaos import Broker, Crash, Errors, Latency
from .traces import TraceSource

STATIC = Path(__file__).parent / "static"
router = APIRouter(prefix="/console", tags=["console"])


class Did(BaseModel):
    did: list[str]  # what the action did, one line per instance or link


class LoadRate(BaseModel):
    rate: float = Field(ge=0, le=1000)  # orders/s; above the configured maximum it is capped, and says so


@router.get("", include_in_schema=False)
async def to_page() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=308)


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    # no-cache: a restarted console with a new page must not be shadowed by the browser's copy.
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/api/snapshot")
async def snapshot(request: Request) -> dict[str, Any]:
    """Everything the page shows, once (the stream sends the same every tick)."""
    return await request.app.state.collector.current()


# Out of the OpenAPI document: an endless answer, which no generated client (the docs' "try it", schemathesis) can
# wait out. console/README.md describes it.
@router.get("/api/stream", response_class=EventSourceResponse, include_in_schema=False)
async def stream(request: Request) -> AsyncIterator[ServerSentEvent]:
    """The snapshot as server-sent events (`event: snapshot`), one per tick while the page is open."""
    collector = request.app.state.collector
    queue = collector.subscribe()
    try:
        yield ServerSentEvent(event="snapshot", data=await collector.current(), retry=2000)
        while True:
            yield ServerSentEvent(event="snapshot", data=await queue.get())
    finally:
        collector.unsubscribe(queue)


@router.get("/api/me")
async def me(who: OperatorOnly) -> dict[str, str]:
    """Who the presented credential makes you: 401/403 unless an operator."""
    return {"operator": who.name, "via": who.via}


@router.get("/api/traces")
async def recent_traces(request: Request, limit: int = 20) -> dict[str, Any]:
    source: TraceSource = request.app.state.traces
    try:
        return {"source": source.where, "traces": await source.recent(max(1, min(limit, 100)))}
    except httpx.HTTPError as exc:
        raise HTTPException(502, f"traces at {source.where} are not answering: {exc}") from None


@router.get("/api/traces/{trace_id}")
async def one_trace(request: Request, trace_id: str = PathParam(pattern=r"^(0x)?[0-9a-fA-F]{1,32}$")
                    ) -> dict[str, Any]:
    source: TraceSource = request.app.state.traces
    try:
        found = await source.one(trace_id)
    except httpx.HTTPError as exc:
        raise HTTPException(502, f"traces at {source.where} are not answering: {exc}") from None
    if found is None:
        raise HTTPException(404, f"no trace {trace_id} (not arrived yet, or expired)")
    return found


@router.post("/api/chaos/crash")
async def crash(request: Request, body: Crash, _who: OperatorOnly) -> Did:
    return Did(did=await request.app.state.chaos.crash(body))


@router.post("/api/chaos/latency")
async def latency(request: Request, body: Latency, _who: OperatorOnly) -> Did:
    return Did(did=await request.app.state.chaos.latency(body))


@router.post("/api/chaos/errors")
async def errors(request: Request, body: Errors, _who: OperatorOnly) -> Did:
    return Did(did=await request.app.state.chaos.errors(body))


@router.post("/api/chaos/broker")
async def broker(request: Request, body: Broker, _who: OperatorOnly) -> Did:
    return Did(did=await request.app.state.chaos.broker(body))


@router.post("/api/chaos/heal")
async def heal(request: Request, _who: OperatorOnly) -> Did:
    return Did(did=await request.app.state.chaos.heal())


@router.post("/api/load")
async def load(request: Request, body: LoadRate, _who: OperatorOnly) -> Did:
    generator = request.app.state.load
    said = generator.set_rate(body.rate)
    if body.rate > generator.max_rate:
        said += f" (capped: at most {generator.max_rate:g} orders/s)"
    await asyncio.sleep(0)  # let the generator start before the answer, so the next snapshot shows it running
    return Did(did=[said])
