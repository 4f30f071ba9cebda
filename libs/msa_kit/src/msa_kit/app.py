"""The FastAPI application every service instance runs: health, readiness, metrics, problem+json errors,
tracing with the trace id on every response, and the Platform started and stopped with the app."""

from __future__ import annotations

import asyncio
import logging
import sys
from contextlib import asynccontextmanager
from typing import Annotated, Any, AsyncIterator, Callable, TypeVar

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .admin import add_fault, admin_denied, config_document, faults_document
from .bodies import BodyLimit
from .deadletters import DeadLetters
from .faults import FaultInjection, HttpFault, crash_soon
from .logs import setup_logging
from .metrics import RequestMetrics, exposition
from .platform import Platform, PlatformSettings
from .problems import problem
from .resilience import ServiceUnavailable, UpstreamTimeout
from .runtime import Runtime, started
from .settings import ConfigSnapshot, ConfigUnavailable, build_settings, fetch_config, save_snapshot
from .tracing import setup_tracing, shutdown_tracing

log = logging.getLogger(__name__)

S = TypeVar("S", bound=PlatformSettings)
A = TypeVar("A")


def Provided(kind: type[A]) -> Any:  # noqa: N802 (named like FastAPI's Depends, which it is)
    """A route's dependency on what bootstrap.py built: `adapters: Annotated[Adapters, Provided(Adapters)]` gets
    the one `Adapters` object `create_service_app(..., adapters=...)` made at start, never a new one per request."""

    async def provided(request: Request) -> A:  # async: FastAPI would run a plain function on a worker thread
        adapters = request.app.state.adapters
        assert isinstance(adapters, kind), f"bootstrap.py provided {type(adapters).__name__}, not {kind.__name__}"
        return adapters

    return Depends(provided)


class TraceHeaders:
    """Puts the request's trace id on the response (`X-Trace-Id`, `traceparent`) so a user can look it up."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_trace(message: Message) -> None:
            if message["type"] == "http.response.start":
                ctx = trace.get_current_span().get_span_context()
                if ctx.is_valid:
                    headers = list(message.get("headers", []))
                    trace_id = format(ctx.trace_id, "032x")
                    headers.append((b"x-trace-id", trace_id.encode()))
                    headers.append((b"traceparent", f"00-{trace_id}-{ctx.span_id:016x}-01".encode()))
                    message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_trace)


def _field(loc: tuple[object, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [{"field": "body" if e["type"] == "json_invalid" else _field(tuple(e["loc"])), "message": e["msg"]}
                  for e in exc.errors()]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem(422, "Invalid request", detail, instance=request.url.path, errors=errors)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        title = {401: "Unauthorized", 403: "Forbidden", 404: "Not found", 409: "Conflict"}.get(
            exc.status_code, "Request failed")
        return problem(exc.status_code, title, str(exc.detail), instance=request.url.path,
                       headers=getattr(exc, "headers", None))

    @app.exception_handler(ServiceUnavailable)
    async def _unavailable(request: Request, exc: ServiceUnavailable) -> Response:
        return problem(503, "Dependency unavailable", str(exc), instance=request.url.path, service=exc.service)

    @app.exception_handler(UpstreamTimeout)
    async def _timeout(request: Request, exc: UpstreamTimeout) -> Response:
        return problem(504, "Dependency timed out", str(exc), instance=request.url.path, service=exc.service)


def create_service_app(platform: Platform, *, title: str, routers: list[APIRouter],
                       adapters: Callable[[], object] | None = None) -> FastAPI:
    """`adapters()` builds what the routes use (`Provided`), once, when the platform has started: the clients to
    other services exist from then on, and no request is served before."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await platform.start()
        app.state.adapters = app.state.make_adapters()
        started()
        try:
            yield
        finally:
            await platform.stop()
            shutdown_tracing()

    app = FastAPI(title=title, lifespan=lifespan)
    app.state.platform = platform
    app.state.make_adapters = adapters or (lambda: None)
    install_problem_handlers(app)
    # The business routes first: the router, and the tracing middleware again to name the span, try routes in order
    # until one matches, and these are the ones under load.
    for router in routers:
        app.include_router(router)

    @app.get("/health", tags=["operations"])
    async def health() -> dict[str, str]:
        return {"status": "UP", "instance": platform.rt.instance_id}

    @app.get("/ready", tags=["operations"])
    async def ready() -> JSONResponse:
        checks = await platform.readiness()
        ok = all(not v.startswith("down") for v in checks.values())
        return JSONResponse({"status": "UP" if ok else "DOWN", "checks": checks}, status_code=200 if ok else 503)

    @app.get("/admin/config", tags=["admin"])
    async def admin_config(authorization: Annotated[str | None, Header()] = None) -> Response:
        denied = admin_denied(platform, authorization)
        if denied:
            return problem(denied[0], "Admin only", denied[1], instance="/admin/config")
        return JSONResponse(config_document(platform))

    @app.get("/admin/resilience", tags=["admin"])
    async def resilience(authorization: Annotated[str | None, Header()] = None) -> Response:
        """Per target service: cached instances, strategy, breaker, outliers, retry budget, bulkhead."""
        denied = admin_denied(platform, authorization)
        if denied:
            return problem(denied[0], "Admin only", denied[1], instance="/admin/resilience")
        return JSONResponse({"instance": platform.rt.instance_id, "targets": platform.resilience.snapshot()})

    @app.get("/admin/faults", tags=["admin"])
    async def list_faults(authorization: Annotated[str | None, Header()] = None) -> Response:
        denied = admin_denied(platform, authorization)
        if denied:
            return problem(denied[0], "Admin only", denied[1], instance="/admin/faults")
        return JSONResponse(faults_document(platform))

    @app.post("/admin/faults", tags=["admin"], status_code=201)
    async def inject_fault(fault: HttpFault, authorization: Annotated[str | None, Header()] = None) -> Response:
        """Inject a fault on this instance until healed (`instance` empty means this one)."""
        denied = admin_denied(platform, authorization)
        if denied:
            return problem(denied[0], "Admin only", denied[1], instance="/admin/faults")
        status, doc = add_fault(platform, fault.model_dump())
        return JSONResponse(doc, status_code=status)

    @app.delete("/admin/faults", tags=["admin"])
    async def heal_faults(authorization: Annotated[str | None, Header()] = None, fault_id: str | None = None
                          ) -> Response:
        denied = admin_denied(platform, authorization)
        if denied:
            return problem(denied[0], "Admin only", denied[1], instance="/admin/faults")
        return JSONResponse({"healed": platform.faults.heal(fault_id)})

    @app.post("/admin/crash", tags=["admin"], status_code=202)
    async def crash(authorization: Annotated[str | None, Header()] = None) -> Response:
        """Exit at once, as a crash would; the supervisor restarts the process (auto-recovery)."""
        denied = admin_denied(platform, authorization)
        if denied:
            return problem(denied[0], "Admin only", denied[1], instance="/admin/crash")
        asyncio.get_running_loop().create_task(crash_soon())
        return JSONResponse({"crashing": platform.rt.instance_id}, status_code=202)

    if platform.bus.subscriptions:
        dead_letters = DeadLetters(platform.bus)

        @app.get("/admin/dlq", tags=["admin"])
        async def list_dead_letters(authorization: Annotated[str | None, Header()] = None,
                                    limit: int = Query(50, ge=1, le=1000)) -> Response:
            """The messages this service gave up on, with the reason and attempt count."""
            denied = admin_denied(platform, authorization)
            if denied:
                return problem(denied[0], "Admin only", denied[1], instance="/admin/dlq")
            return JSONResponse({"queue": platform.bus.names.dlq, "messages": await dead_letters.list(limit)})

        @app.post("/admin/dlq/replay", tags=["admin"])
        async def replay_dead_letters(authorization: Annotated[str | None, Header()] = None,
                                      message_id: str | None = None) -> Response:
            """Send one dead letter (`?message_id=`), or all of them, back to this service's queue."""
            denied = admin_denied(platform, authorization)
            if denied:
                return problem(denied[0], "Admin only", denied[1], instance="/admin/dlq/replay")
            return JSONResponse({"replayed": await dead_letters.replay(message_id)})

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(await exposition(platform), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(BodyLimit, limit=lambda: platform.settings.http.max_body_bytes,
                       timeout_s=lambda: platform.settings.http.body_timeout_s)
    app.add_middleware(FaultInjection, book=platform.faults)
    app.add_middleware(RequestMetrics)  # outside the faults: an injected delay or error is timed as clients see it
    app.add_middleware(TraceHeaders)
    # One server span per request: the ASGI "http send"/"http receive" child spans (two or three per request)
    # tell a reader of the trace nothing the server span doesn't, and creating and exporting them cost CPU.
    FastAPIInstrumentor.instrument_app(app, excluded_urls="health,ready,metrics", exclude_spans=["receive", "send"])
    return app


def prepare_service(service: str, settings_cls: type[S]) -> tuple[Runtime, ConfigSnapshot, S]:
    """Everything before serving: the runtime, config from the config server (or exit clearly), settings checked,
    logging and tracing set up."""
    rt = Runtime.for_service(service)
    setup_logging(service, rt.instance_id)
    try:
        snapshot = asyncio.run(fetch_config(rt))
    except ConfigUnavailable as exc:
        log.error("cannot start %s: %s", rt.instance_id, exc)
        sys.exit(2)
    try:
        settings = build_settings(settings_cls, snapshot)
    except ValidationError as exc:  # a bad value in config-repo: say which, don't start half-configured
        log.error("cannot start %s: invalid configuration: %s", rt.instance_id, exc)
        sys.exit(2)
    if snapshot.source == "config-server":
        save_snapshot(rt, snapshot)
    setup_logging(service, rt.instance_id, settings.log_level)
    setup_tracing(rt)
    return rt, snapshot, settings


def run_service(service: str, settings_cls: type[S], build_app: Callable[[Runtime, ConfigSnapshot, S], FastAPI]
                ) -> None:
    """`python -m <service>`: prepare_service, build the app, serve it with uvicorn."""
    rt, snapshot, settings = prepare_service(service, settings_cls)
    app = build_app(rt, snapshot, settings)
    LeavingServer(uvicorn.Config(app, host=rt.host, port=rt.port, log_config=None, access_log=False, loop="uvloop",
                                 http="httptools", timeout_graceful_shutdown=GRACEFUL_S),
                  app.state.platform).run()


GRACEFUL_S = 5.0  # requests in flight get this long to finish once the listener is closed


class LeavingServer(uvicorn.Server):
    """uvicorn, stopping in the order Consul's and Kubernetes' users expect. On SIGTERM the instance first leaves
    the registry and keeps serving for `registry.drain_s`, while callers' watches (and a platform's Service
    endpoints) drop it; then uvicorn closes the listener, lets requests in flight finish (GRACEFUL_S), and the
    lifespan stops the platform: consumers first, the outbox relay handing back what it holds, then the clients.
    Closing the listener first would refuse the requests still on their way. A second signal stops at once."""

    def __init__(self, config: uvicorn.Config, platform: Platform) -> None:
        super().__init__(config)
        self.platform = platform
        self._leaving: asyncio.Task[None] | None = None
        self._asked = False

    def handle_exit(self, sig: int, frame: object) -> None:
        if self._asked or not self.started:
            super().handle_exit(sig, frame)  # type: ignore[arg-type]
        self._asked = True  # on_tick (on the loop) starts leaving; a signal handler must not touch the loop

    async def on_tick(self, counter: int) -> bool:
        if self._asked and self._leaving is None:
            self._leaving = asyncio.create_task(self.platform.leave())
        if self._leaving is not None and self._leaving.done():
            return True
        return await super().on_tick(counter)
