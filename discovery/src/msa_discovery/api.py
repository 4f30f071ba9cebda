"""The Consul HTTP API (a subset) over the registry, as a Starlette app.

Handlers stay thin: parse the query the way Consul does, maybe hold a blocking query, ask the registry, shape the
answer with shapes.py. Every read carries X-Consul-Index; errors are plain text with Consul's wording.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import shapes
from .checks import CheckRunner
from .decode import DecodeError, ScriptChecksDisabled, check_registration, fields, service_registration
from .durations import parse_duration
from .filter import FilterError, compile_filter
from .persistence import Persister
from .registry import CRITICAL, PASSING, STATUSES, WARNING, Node, NotATTLCheck, Registry, UnknownCheck
from .ui import ui_page

__all__ = ["create_app", "default_node", "ConsulError", "MAX_BODY"]

MAX_BODY = 512 * 1024  # Consul's limit for a KV value, and ours for any body
DEFAULT_WAIT, MAX_WAIT = 300.0, 600.0  # blocking queries: 5 minutes unless asked, never more than 10
OUTPUT_MAX = 4096


class ConsulError(Exception):
    def __init__(self, status: int, reason: str, index: int | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.index = status, reason, index


def default_node() -> Node:
    name = os.environ.get("NODE_NAME") or socket.gethostname() or "msa-discovery"
    host = os.environ.get("HOST", "127.0.0.1")
    address = os.environ.get("ADVERTISE_ADDR") or (host if host not in ("", "0.0.0.0", "::") else "127.0.0.1")
    return Node(name=name, id=str(uuid.uuid5(uuid.NAMESPACE_DNS, name)), address=address)


# -- request helpers ---------------------------------------------------------------------------------------------

def _reg(request: Request) -> Registry:
    return request.app.state.registry  # type: ignore[no-any-return]


def _headers(index: int) -> dict[str, str]:
    return {"X-Consul-Index": str(index), "X-Consul-Knownleader": "true", "X-Consul-Lastcontact": "0"}


def _json(request: Request, data: Any, index: int | None = None, status: int = 200) -> Response:
    body = json.dumps(data, indent=4 if "pretty" in request.query_params else None)
    return Response(body, status, _headers(index if index is not None else _reg(request).index),
                    media_type="application/json")


def _flag(request: Request, name: str) -> bool:
    """Go's strconv.ParseBool, with a bare ?name meaning true."""
    if name not in request.query_params:
        return False
    v = request.query_params[name]
    if v in ("", "1", "t", "T", "true", "TRUE", "True"):
        return True
    if v in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise ConsulError(400, f"Invalid value for ?{name}")


def _int_param(request: Request, name: str, reason: str) -> int | None:
    if name not in request.query_params:
        return None
    try:
        v = int(request.query_params[name])
    except ValueError:
        raise ConsulError(400, reason) from None
    if v < 0:
        raise ConsulError(400, reason)
    return v


def _filter(request: Request) -> Callable[[Any], bool]:
    try:
        return compile_filter(request.query_params.get("filter", ""))
    except FilterError as e:
        raise ConsulError(400, f"Failed to create boolean expression evaluator: {e}") from None


async def _watch(request: Request, index_of: Callable[[], int]) -> int:
    """Hold a blocking query (?index=N&wait=D) until index_of() passes N or the wait runs out."""
    min_index = _int_param(request, "index", "Invalid index")
    wait = DEFAULT_WAIT
    if "wait" in request.query_params:
        try:
            wait = parse_duration(request.query_params["wait"])
        except ValueError:
            raise ConsulError(400, "Invalid wait time") from None
    if min_index:  # absent or 0: answer at once, as Consul does
        wait = min(wait, MAX_WAIT) if wait > 0 else DEFAULT_WAIT
        # Consul adds up to wait/16 of random jitter so that many watchers do not all return in the same instant.
        changed = asyncio.ensure_future(
            _reg(request).wait_for(index_of, min_index, wait + random.uniform(0, wait / 16)))
        # A watcher that hangs up is forgotten at once instead of being held for the rest of its wait.
        gone = asyncio.ensure_future(_disconnected(request))
        await asyncio.wait({changed, gone}, return_when=asyncio.FIRST_COMPLETED)
        changed.cancel()
        gone.cancel()
    return index_of()


async def _disconnected(request: Request) -> None:
    # Only used for bodiless GETs: once the (empty) body is read, the next message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _body(request: Request) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise ConsulError(413, f"Request body too large, max size: {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _json_body(request: Request) -> Any:
    raw = await _body(request)
    if not raw.strip():
        raise ConsulError(400, "Request decode failed: EOF")
    try:
        return json.loads(raw)
    except ValueError as e:
        raise ConsulError(400, f"Request decode failed: {e}") from None


# -- agent -------------------------------------------------------------------------------------------------------

async def register_service(request: Request) -> Response:
    service, checks = service_registration(await _json_body(request))
    _reg(request).register(service, checks, replace_existing_checks=_flag(request, "replace-existing-checks"))
    return Response(b"", 200)


async def deregister_service(request: Request) -> Response:
    service_id = request.path_params["service_id"]
    if not _reg(request).deregister(service_id):
        raise ConsulError(404, f'Unknown service ID "{service_id}". Ensure that the service ID is passed, '
                               f"not the service name.")
    return Response(b"", 200)


async def register_check(request: Request) -> Response:
    definition, script = check_registration(await _json_body(request))
    reg = _reg(request)
    if definition.service_id is not None and definition.service_id not in reg.services:
        raise ConsulError(404, f'ServiceID "{definition.service_id}" does not exist')
    if script:
        raise ScriptChecksDisabled()
    reg.register_check(definition)
    return Response(b"", 200)


async def deregister_check(request: Request) -> Response:
    try:
        _reg(request).deregister_check(request.path_params["check_id"])
    except UnknownCheck as e:
        raise ConsulError(404, str(e)) from None
    return Response(b"", 200)


_TTL_OPS = {"pass": PASSING, "warn": WARNING, "fail": CRITICAL}


async def update_check(request: Request) -> Response:
    op, check_id = request.path_params["op"], request.path_params["check_id"]
    if op in _TTL_OPS:
        status, output = _TTL_OPS[op], request.query_params.get("note", "")
    elif op == "update":
        f = fields(await _json_body(request))
        status, output = f.get("status"), f.get("output") or ""
        if status not in STATUSES:
            raise ConsulError(400, f"Invalid check status: '{status}'")
        if not isinstance(output, str):
            raise ConsulError(400, "Request decode failed: Output must be a string")
    else:
        raise ConsulError(404, "404 page not found")
    if len(output) > OUTPUT_MAX:
        output = output[:OUTPUT_MAX] + f" ... (captured {OUTPUT_MAX} of {len(output)} bytes)"
    try:
        _reg(request).update_ttl(check_id, status, output)  # type: ignore[arg-type]
    except UnknownCheck as e:
        raise ConsulError(404, str(e)) from None
    except NotATTLCheck as e:  # Consul's updateTTLCheck error, which its HTTP layer answers with a 500
        raise ConsulError(500, str(e)) from None
    return Response(b"", 200)


async def agent_services(request: Request) -> Response:
    reg, keep = _reg(request), _filter(request)
    out = {s.id: shapes.agent_service(s, reg.node) for s in sorted(reg.services.values(), key=lambda s: s.id)
           if s.local}
    return _json(request, {k: v for k, v in out.items() if keep(v)})


async def agent_service(request: Request) -> Response:
    reg = _reg(request)
    s = reg.services.get(request.path_params["service_id"])
    if s is None or not s.local:
        raise ConsulError(404, f"unknown service ID: {request.path_params['service_id']}")
    return _json(request, shapes.agent_service(s, reg.node))


async def agent_checks(request: Request) -> Response:
    reg, keep = _reg(request), _filter(request)
    out = {c.id: shapes.health_check(c, reg) for c in sorted(reg.checks.values(), key=lambda c: c.id)
           if c.local}  # serfHealth lives in the catalog, not in the agent
    return _json(request, {k: v for k, v in out.items() if keep(v)})


async def agent_members(request: Request) -> Response:
    """The serf members this agent sees: only itself (?wan is accepted; the one node is in the one datacenter)."""
    return _json(request, [shapes.member(_reg(request).node)])


async def agent_self(request: Request) -> Response:
    return _json(request, shapes.agent_self(_reg(request), request.app.state.data_dir, request.scope.get("server")))


# -- health and catalog ------------------------------------------------------------------------------------------

async def health_service(request: Request) -> Response:
    reg, name = _reg(request), request.path_params["name"]
    passing, tags, keep = _flag(request, "passing"), request.query_params.getlist("tag"), _filter(request)
    index = await _watch(request, lambda: reg.service_index(name))
    rows = [shapes.health_entry(e, reg) for e in reg.health(name)
            if (e.passing or not passing) and all(t in e.service.definition.tags for t in tags)]
    return _json(request, [r for r in rows if keep(r)], index)


async def health_checks(request: Request) -> Response:
    reg, name, keep = _reg(request), request.path_params["name"], _filter(request)
    index = await _watch(request, lambda: reg.service_index(name))
    rows = [shapes.health_check(c, reg) for s in reg.instances(name) for c in reg.service_checks(s.id)]
    return _json(request, [r for r in rows if keep(r)], index)


async def health_node(request: Request) -> Response:
    """Every check of a node: its own (serfHealth first) and those of each service on it."""
    reg, name, keep = _reg(request), request.path_params["node"], _filter(request)
    index = await _watch(request, lambda: reg.table_index("checks"))
    checks = [] if name != reg.node.name else \
        reg.node_checks() + [c for s in sorted(reg.services) for c in reg.service_checks(s)]
    rows = [shapes.health_check(c, reg) for c in checks]
    return _json(request, [r for r in rows if keep(r)], index)


async def health_state(request: Request) -> Response:
    reg, state, keep = _reg(request), request.path_params["state"], _filter(request)
    if state not in ("any", *STATUSES):
        raise ConsulError(400, "Invalid state")
    index = await _watch(request, lambda: reg.table_index("checks"))
    rows = [shapes.health_check(c, reg) for c in sorted(reg.checks.values(), key=lambda c: c.id)
            if state in ("any", c.status)]
    return _json(request, [r for r in rows if keep(r)], index)


async def catalog_services(request: Request) -> Response:
    reg = _reg(request)
    index = await _watch(request, lambda: reg.table_index("services"))
    return _json(request, reg.catalog(), index)


async def catalog_service(request: Request) -> Response:
    reg, name = _reg(request), request.path_params["name"]
    tags, keep = request.query_params.getlist("tag"), _filter(request)
    index = await _watch(request, lambda: reg.service_index(name))
    rows = [shapes.catalog_service(s, reg.node) for s in reg.instances(name)
            if all(t in s.definition.tags for t in tags)]
    return _json(request, [r for r in rows if keep(r)], index)


async def catalog_nodes(request: Request) -> Response:
    reg = _reg(request)
    return _json(request, [shapes.node(reg.node)], reg.table_index("nodes"))


async def catalog_datacenters(request: Request) -> Response:
    return _json(request, [_reg(request).node.datacenter])


# -- KV ----------------------------------------------------------------------------------------------------------

async def kv(request: Request) -> Response:
    reg, key, q = _reg(request), request.path_params["key"], request.query_params
    if request.method == "GET":
        if "keys" in q:  # Consul looks at the presence of ?keys and ?recurse, not their value
            sep = q.get("separator", "")
            index = await _watch(request, lambda: reg.kv_list(key)[0])
            keys: list[str] = []
            for e in reg.kv_list(key)[1]:
                k = e.key
                if sep and (j := k.find(sep, len(key))) >= 0:
                    k = k[: j + len(sep)]  # "folders" collapse to one entry ending in the separator
                if not keys or keys[-1] != k:
                    keys.append(k)
            return _json(request, keys, index) if keys else Response(b"", 404, _headers(index))
        if "recurse" in q:
            index = await _watch(request, lambda: reg.kv_list(key)[0])
            entries = reg.kv_list(key)[1]
            return _json(request, [shapes.kv_entry(e) for e in entries], index) if entries \
                else Response(b"", 404, _headers(index))
        index = await _watch(request, lambda: reg.kv_get(key)[0])
        entry = reg.kv_get(key)[1]
        if entry is None:
            return Response(b"", 404, _headers(index))
        if "raw" in q:
            return Response(entry.value or b"", 200, _headers(index), media_type="application/octet-stream")
        return _json(request, [shapes.kv_entry(entry)], index)
    if not key and not (request.method == "DELETE" and "recurse" in q):
        raise ConsulError(400, "Missing key name")
    cas = _int_param(request, "cas", "Invalid cas index")
    if request.method == "PUT":
        if "acquire" in q or "release" in q:
            raise ConsulError(400, "Sessions (acquire/release) are not supported by msa-discovery")
        flags = _int_param(request, "flags", "Invalid flags") or 0
        return _json(request, reg.kv_put(key, await _body(request) or None, flags, cas))
    return _json(request, reg.kv_delete(key, recurse="recurse" in q, cas=cas))


# -- status, liveness, UI ----------------------------------------------------------------------------------------

async def status_leader(request: Request) -> Response:
    return _json(request, shapes.LEADER_ADDR)


async def status_peers(request: Request) -> Response:
    return _json(request, [shapes.LEADER_ADDR])


async def health(request: Request) -> Response:
    return JSONResponse({"status": "UP"})


async def root(request: Request) -> Response:
    return RedirectResponse("/ui/", status_code=301)


# -- errors and limits -------------------------------------------------------------------------------------------

async def _consul_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, DecodeError):  # a body Consul would not accept (400), or a script check (500)
        return PlainTextResponse(str(exc), exc.status)
    assert isinstance(exc, ConsulError)
    return PlainTextResponse(exc.reason, exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return PlainTextResponse("404 page not found", 404)
    if exc.status_code == 405:
        return PlainTextResponse(f"method {request.method} not allowed", 405, headers=exc.headers)
    return PlainTextResponse(str(exc.detail), exc.status_code, headers=exc.headers)


class BodyLimit:
    """Refuse an oversized body from its Content-Length, before reading it (chunked bodies: see _body)."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None:
                try:
                    too_big = int(length) > self.limit
                except ValueError:
                    await PlainTextResponse("Invalid Content-Length", 400)(scope, receive, send)
                    return
                if too_big:
                    reason = f"Request body too large, max size: {self.limit} bytes"
                    await PlainTextResponse(reason, 413)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def create_app(registry: Registry | None = None, *, run_checks: bool = True,
               data_dir: Path | None = None) -> Starlette:
    """The ASGI app. Pass a registry to share or inspect state in tests; run_checks=False leaves time and probes
    to the caller (e.g. a test calling registry.tick()). With a data_dir, the registry is restored from it before
    the first request and kept saved there (persistence.py); without one, everything lives in memory."""
    registry = registry or Registry(default_node())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        persister = Persister(registry, data_dir) if data_dir is not None else None
        if persister:
            persister.load()  # uvicorn runs the lifespan before it binds: no request sees the empty registry
        runner = CheckRunner(registry)
        tasks = [asyncio.create_task(runner.run(), name="check runner")] if run_checks else []
        if persister:
            tasks.append(asyncio.create_task(persister.run(), name="persister"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await runner.aclose()
            if persister:
                with contextlib.suppress(OSError):
                    persister.save()  # what the last heartbeats changed since the last periodic save

    routes = [
        Route("/v1/agent/service/register", register_service, methods=["PUT"]),
        Route("/v1/agent/service/deregister/{service_id}", deregister_service, methods=["PUT"]),
        Route("/v1/agent/service/{service_id}", agent_service, methods=["GET"]),
        Route("/v1/agent/check/register", register_check, methods=["PUT"]),
        Route("/v1/agent/check/deregister/{check_id:path}", deregister_check, methods=["PUT"]),
        Route("/v1/agent/check/{op}/{check_id:path}", update_check, methods=["PUT"]),
        Route("/v1/agent/services", agent_services, methods=["GET"]),
        Route("/v1/agent/checks", agent_checks, methods=["GET"]),
        Route("/v1/agent/self", agent_self, methods=["GET"]),
        Route("/v1/agent/members", agent_members, methods=["GET"]),
        Route("/v1/health/service/{name}", health_service, methods=["GET"]),
        Route("/v1/health/checks/{name}", health_checks, methods=["GET"]),
        Route("/v1/health/node/{node}", health_node, methods=["GET"]),
        Route("/v1/health/state/{state}", health_state, methods=["GET"]),
        Route("/v1/catalog/services", catalog_services, methods=["GET"]),
        Route("/v1/catalog/service/{name}", catalog_service, methods=["GET"]),
        Route("/v1/catalog/nodes", catalog_nodes, methods=["GET"]),
        Route("/v1/catalog/datacenters", catalog_datacenters, methods=["GET"]),
        Route("/v1/kv/{key:path}", kv, methods=["GET", "PUT", "DELETE"]),
        Route("/v1/status/leader", status_leader, methods=["GET"]),
        Route("/v1/status/peers", status_peers, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ui", ui_page, methods=["GET"]),
        Route("/ui/", ui_page, methods=["GET"]),
        Route("/", root, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={ConsulError: _consul_error, DecodeError: _consul_error,
                                        HTTPException: _http_error})
    app.state.registry = registry
    app.state.data_dir = data_dir
    app.add_middleware(BodyLimit)
    return app
