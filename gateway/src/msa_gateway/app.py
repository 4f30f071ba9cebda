"""The gateway application: a dispatcher in front of two handlers.

The proxy path (`proxy.Proxy`) takes every request except a handful of the gateway's own pages (health, metrics,
docs, the admin API), which a small Starlette app serves — it also owns the lifespan. Starlette's routing would cost
every proxied request a regex match per route; a set lookup on the path does the job. `Gateway` is an ASGI app,
served by granian (server.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

import httpx
from opentelemetry.instrumentation.httpx import AsyncOpenTelemetryTransport
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route as HttpRoute
from starlette.types import Message, Receive, Scope, Send

from msa_kit.admin import add_fault, admin_denied, config_document, faults_document
from msa_kit.faults import FaultInjection, crash_soon
from msa_kit.http1 import Http1Transport, Pool
from msa_kit.metrics import UNMATCHED, exposition, observe_request
from msa_kit.platform import Platform, PlatformSettings
from msa_kit.problems import problem
from msa_kit.resilience import BreakerTransport, ResilientStack
from msa_kit.runtime import Runtime, started
from msa_kit.settings import ConfigSnapshot
from msa_kit.tokens import JwksVerifier
from msa_kit.tracing import shutdown_tracing

from .accesslog import AccessLog
from .asgi import Exchange
from .docs import SWAGGER_FILES, DocsCache, DocsSection, docs_page
from .policy import Cors, CorsSection, security_headers
from .proxy import Config, Proxy
from .ratelimit import Buckets, buckets
from .routes import RouteSpec, RouteTable
from .upstream import Upstreams

log = logging.getLogger(__name__)


class RateLimitSection(BaseModel):
    redis_url: str | None = None  # e.g. redis://127.0.0.1:6379/0; unset: buckets in this process's memory


class GatewaySection(BaseModel):
    routes: list[RouteSpec] = []
    max_body_bytes: int = Field(1_048_576, ge=1)
    body_timeout_s: float = Field(10.0, gt=0, le=300)  # a body must arrive whole within this (slow-loris): 408
    cors: CorsSection = CorsSection()
    security_headers: dict[str, str] = {}  # on top of policy.DEFAULT_SECURITY_HEADERS; "" removes one
    rate_limits: RateLimitSection = RateLimitSection()
    access_log: bool = True
    docs: DocsSection = DocsSection()


class GatewaySettings(PlatformSettings):
    gateway: GatewaySection = GatewaySection()


def compile_config(section: GatewaySection) -> Config:
    return Config(RouteTable(section.routes), section.max_body_bytes, security_headers(section.security_headers),
                  Cors(section.cors), section.access_log, section.body_timeout_s)


LOCAL_PATHS = frozenset({"/health", "/metrics", "/gateway/routes", "/admin/config", "/admin/faults", "/admin/crash",
                         "/admin/resilience", "/docs", "/openapi.json", "/docs/oauth2-redirect",
                         *SWAGGER_FILES})


def build_app(rt: Runtime, config: ConfigSnapshot, settings: GatewaySettings) -> "Gateway":
    platform = Platform(rt, config, settings)
    return Gateway(rt, platform, settings)


class Gateway:
    """The gateway, as an ASGI app: the proxy path, or the gateway's own pages (and the lifespan)."""

    def __init__(self, rt: Runtime, platform: Platform, settings: GatewaySettings) -> None:
        self.rt, self.platform = rt, platform
        self.section = settings.gateway
        self.config = compile_config(settings.gateway)
        self.proxy: Proxy | None = None
        self.docs: DocsCache | None = None
        self.buckets: Buckets | None = None
        self.upstream_stack: ResilientStack | None = None
        self._redis_url = settings.gateway.rate_limits.redis_url
        self.local = self._local_app()
        platform.on_refresh(self.apply_routes)

    def _faults_on(self) -> bool:  # the workshop breaking the gateway
        return bool(self.platform.faults.added or self.platform.settings.faults.http)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in LOCAL_PATHS and self.proxy is not None:
            if self._faults_on():
                return await self._faulted(scope, receive, send)
            return await self.proxy(scope, receive, send)
        if scope["type"] == "http":
            security = self.config.security

            async def send_secure(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), *security]
                await send(message)

            return await self.local(scope, receive, send_secure)
        return await self.local(scope, receive, send)

    async def _faulted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The proxy behind the workshop's faults. What reaches the proxy it counts, timed from here (an injected
        delay included); an error the fault answers itself is counted here, on the route it would have taken."""
        assert self.proxy is not None
        proxy, started, reached, status = self.proxy, time.perf_counter(), False, 0

        async def to_proxy(scope: Scope, receive: Receive, send: Send) -> None:
            nonlocal reached
            reached = True
            await proxy.handle(Exchange(scope, receive, send), started)

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await FaultInjection(to_proxy, self.platform.faults)(scope, receive, send_status)
        if not reached and status:
            conf = self.config
            route = conf.table.match(scope["method"], scope["path"],
                                     scope["headers"] if conf.uses_header_predicates else None)
            observe_request(scope["method"], route.id if route is not None else UNMATCHED, status,
                            time.perf_counter() - started)

    async def apply_routes(self, new: GatewaySettings) -> None:
        """A validated refresh: the next request sees the new generation, requests in flight finish on theirs."""
        self.section, self.config = new.gateway, compile_config(new.gateway)
        if new.gateway.rate_limits.redis_url != self._redis_url and self.proxy is not None:
            old, self._redis_url = self.proxy.buckets, new.gateway.rate_limits.redis_url
            self.proxy.buckets = self.buckets = buckets(self._redis_url, self.rt.namespace)
            await old.close()
        if self.proxy is not None:
            self.proxy.config = self.config
        log.info("gateway: %d routes live", len(self.config.table.routes))

    def _upstreams(self) -> tuple[Upstreams, httpx.AsyncBaseTransport]:
        """The kit's guards, as platform.http has them, minus the client around them (see proxy.Proxy): services
        through bulkhead → breaker → balancer (discovery, outliers); fixed-URL routes through a breaker of their
        own. Policies read settings live. Returns the upstreams and the fixed-URL transport (for the docs)."""
        # Retries are the routes' business here (a `retry` filter), so the kit's own are off for the proxy path.
        policies = self.platform.policies(retries=False)
        self.upstream_stack = ResilientStack(self.platform.discovery, policies, max_connections=500)
        direct = BreakerTransport(Http1Transport(max_connections=500), policies.breaker)
        return Upstreams(self.upstream_stack, direct, Pool(max_connections=500)), direct

    def _local_app(self) -> Starlette:
        platform = self.platform

        @asynccontextmanager
        async def lifespan(_app: Starlette) -> AsyncIterator[None]:
            access = AccessLog(self.rt.service, self.rt.instance_id)
            await platform.start()
            upstreams, direct = self._upstreams()
            direct_client = httpx.AsyncClient(transport=AsyncOpenTelemetryTransport(direct))
            self.buckets = buckets(self._redis_url, self.rt.namespace)
            self.docs = DocsCache(platform.http, direct_client)
            self.proxy = Proxy(self.config, upstreams, JwksVerifier(platform.http), self.buckets,
                               lambda: platform.http.timeout, access)
            started()  # the heap built so far leaves the collector's walk (the gateway's p99 was its pauses)
            try:
                yield
            finally:
                proxy, self.proxy = self.proxy, None
                await platform.stop()
                await upstreams.aclose()
                assert self.upstream_stack is not None
                await self.upstream_stack.transport.aclose()
                await direct_client.aclose()
                await proxy.buckets.close()
                access.close()
                shutdown_tracing()

        async def health(_request: Request) -> JSONResponse:
            return JSONResponse({"status": "UP", "instance": self.rt.instance_id})

        async def metrics(_request: Request) -> Response:
            # The proxy path's guards are the ones to report (platform.resilience only fetches JWKS and docs).
            return Response(await exposition(platform, self.upstream_stack), media_type=CONTENT_TYPE_LATEST)

        def admin(handler):  # type: ignore[no-untyped-def]
            async def guarded(request: Request) -> Response:
                denied = admin_denied(platform, request.headers.get("authorization"))
                if denied:
                    return problem(denied[0], "Admin only", denied[1], instance=request.url.path)
                return await handler(request)
            return guarded

        async def routes(_request: Request) -> JSONResponse:
            return JSONResponse({"version": platform.config.version, "routes": self.config.table.describe()})

        async def admin_config(_request: Request) -> JSONResponse:
            return JSONResponse(config_document(platform))

        async def faults(request: Request) -> Response:
            if request.method == "POST":
                try:
                    body = await request.json()
                except ValueError:
                    return problem(400, "Invalid fault", "the body must be JSON", instance="/admin/faults")
                status, doc = add_fault(platform, body)
                if status != 201:
                    return problem(status, doc.pop("title"), doc.pop("detail"), instance="/admin/faults", **doc)
                return JSONResponse(doc, status_code=201)
            if request.method == "DELETE":
                return JSONResponse({"healed": platform.faults.heal(request.query_params.get("fault_id"))})
            return JSONResponse(faults_document(platform))

        async def crash(_request: Request) -> JSONResponse:
            asyncio.get_running_loop().create_task(crash_soon())
            return JSONResponse({"crashing": self.rt.instance_id}, status_code=202)

        async def resilience(_request: Request) -> JSONResponse:
            stack = self.upstream_stack if self.upstream_stack is not None else platform.resilience
            return JSONResponse({"instance": self.rt.instance_id, "targets": stack.snapshot()})

        async def openapi(_request: Request) -> Response:
            assert self.docs is not None
            doc = await self.docs.document(self.config.table, self.section.docs)
            return Response(json.dumps(doc), media_type="application/json")

        async def docs(_request: Request) -> HTMLResponse:
            return HTMLResponse(docs_page(self.section.docs.title))

        async def docs_file(request: Request) -> Response:
            path, media_type = SWAGGER_FILES[request.url.path]
            return Response(path.read_bytes(), media_type=media_type, headers={"cache-control": "max-age=3600"})

        return Starlette(routes=[HttpRoute("/health", health), HttpRoute("/metrics", metrics),
                                 HttpRoute("/gateway/routes", admin(routes)),
                                 HttpRoute("/admin/config", admin(admin_config)),
                                 HttpRoute("/admin/faults", admin(faults), methods=["GET", "POST", "DELETE"]),
                                 HttpRoute("/admin/crash", admin(crash), methods=["POST"]),
                                 HttpRoute("/admin/resilience", admin(resilience)),
                                 HttpRoute("/openapi.json", openapi), HttpRoute("/docs", docs),
                                 *(HttpRoute(path, docs_file) for path in SWAGGER_FILES)],
                         lifespan=lifespan)
