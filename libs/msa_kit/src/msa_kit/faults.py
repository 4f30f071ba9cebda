"""Fault injection in the request path: latency, errors, hangs, crashes — the workshop's way to break things.

Faults come from two places: the service's configuration (`faults.http` in config-repo, applied live on refresh)
and the admin API (`POST /admin/faults`, in memory, healed by `DELETE /admin/faults`). Each names its scope: every
instance of the service or one (`instance`), every route or a path prefix (`route`). Operations endpoints are
never faulted, so an operator can always look and heal.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
from typing import Callable, Literal

from pydantic import BaseModel, Field, model_validator
from starlette.types import ASGIApp, Receive, Scope, Send

from .problems import PROBLEM_JSON

log = logging.getLogger(__name__)

EXEMPT = ("/health", "/ready", "/metrics", "/admin")


class HttpFault(BaseModel):
    kind: Literal["latency", "error", "hang"]
    latency_ms: int = Field(0, ge=0, le=600_000, description="latency: added delay")
    jitter_ms: int = Field(0, ge=0, le=600_000, description="latency: plus a uniform random 0..jitter")
    status: int = Field(503, ge=400, le=599, description="error: the status answered")
    probability: float = Field(1.0, ge=0.0, le=1.0, description="share of matching requests affected")
    route: str = Field("", description="path prefix; empty: every route")
    instance: str = Field("", description="instance id; empty: every instance of the service")
    id: str = ""

    def describe(self) -> str:
        """`latency 500 ms`, `error 503 p=0.5 on /products`: what it does, in a few words."""
        what = {"latency": f"latency {self.latency_ms}" + (f"+{self.jitter_ms}" if self.jitter_ms else "") + " ms",
                "error": f"error {self.status}", "hang": "hang"}[self.kind]
        return what + (f" p={self.probability:g}" if self.probability < 1 else "") + \
            (f" on {self.route}" if self.route else "")

    @model_validator(mode="after")
    def _sensible(self) -> "HttpFault":
        if self.kind == "latency" and not (self.latency_ms or self.jitter_ms):
            raise ValueError("a latency fault needs latency_ms or jitter_ms")
        return self


class FaultBook:
    """The faults in force on this instance: configured ones (live) plus those added through the admin API."""

    def __init__(self, instance_id: str, configured: Callable[[], list[HttpFault]]) -> None:
        self.instance_id, self.configured = instance_id, configured
        self.added: dict[str, HttpFault] = {}
        self._ids = itertools.count(1)

    def add(self, fault: HttpFault) -> HttpFault:
        fault = fault.model_copy(update={"id": f"f{next(self._ids)}"})
        self.added[fault.id] = fault
        log.warning("fault injected: %s", fault.model_dump(exclude_defaults=True))
        return fault

    def heal(self, fault_id: str | None = None) -> int:
        healed = [fault_id] if fault_id else list(self.added)
        n = sum(self.added.pop(f, None) is not None for f in healed)
        if n:
            log.warning("healed %d fault(s)", n)
        return n

    def active(self) -> list[HttpFault]:
        configured = [f.model_copy(update={"id": f"config-{i}"}) for i, f in enumerate(self.configured(), 1)]
        return [f for f in [*configured, *self.added.values()] if not f.instance or f.instance == self.instance_id]

    def matching(self, path: str) -> list[HttpFault]:
        if path.startswith(EXEMPT):
            return []
        return [f for f in self.active() if path.startswith(f.route) and random.random() < f.probability]


class FaultInjection:
    """ASGI middleware applying the matching faults before the application sees the request."""

    def __init__(self, app: ASGIApp, book: FaultBook) -> None:
        self.app, self.book = app, book

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (self.book.added or self.book.configured()):
            return await self.app(scope, receive, send)
        for fault in self.book.matching(scope["path"]):
            if fault.kind == "latency":
                await asyncio.sleep((fault.latency_ms + random.uniform(0, fault.jitter_ms)) / 1000)
            elif fault.kind == "hang":
                await asyncio.Event().wait()  # no answer until the client gives up (and disconnects)
            elif fault.kind == "error":
                body = (f'{{"type":"about:blank","title":"Injected fault","status":{fault.status},'
                        f'"detail":"fault {fault.id} on {self.book.instance_id}"}}').encode()
                await send({"type": "http.response.start", "status": fault.status,
                            "headers": [(b"content-type", PROBLEM_JSON.encode()),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


async def crash_soon(delay_s: float = 0.1) -> None:
    """The process dies as a crash would (no cleanup, exit code 1); the supervisor restarts it."""
    log.error("crash requested through the admin API: exiting now")
    await asyncio.sleep(delay_s)
    os._exit(1)
