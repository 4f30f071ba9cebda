"""The proxy path: one request in, one request to the route's upstream, the answer streamed back.

A raw ASGI callable, because this is the gateway's hot path (DESIGN §7: FastAPI's per-request cost is ~3× bare
Starlette's): headers stay the byte pairs the server handed us, the route table is precompiled, and nothing is
validated twice. Upstream calls go through the kit's resilient client (discovery cache, balancing, breaker).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import httpx
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.asgi import asgi_getter
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import Receive, Scope, Send

from msa_kit.resilience import ServiceUnavailable, UpstreamTimeout

from .asgi import Headers, send_problem
from .auth import InvalidToken, JwksVerifier
from .policy import Cors
from .ratelimit import Buckets
from .routes import Route, RouteTable

log = logging.getLogger("msa_gateway.access")  # one JSON line per request (app.AccessFormatter)
warn = logging.getLogger(__name__)
tracer = trace.get_tracer("msa_gateway")

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded. (Host is the upstream's; the balancer
# sets it.) Trace context is re-injected by the client for its own span.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
                        b"trailer", b"transfer-encoding", b"upgrade", b"proxy-connection"})
# Identity is the gateway's to assert: a client sending these would otherwise pick who it is.
IDENTITY = frozenset({b"x-user-id", b"x-user-name", b"x-user-roles"})
DROP_REQUEST = HOP_BY_HOP | IDENTITY | {b"host", b"expect", b"traceparent", b"tracestate", b"x-forwarded-for",
                                        b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"}
# The server adds its own Date and Server; ours replace the upstream's trace headers.
DROP_RESPONSE = HOP_BY_HOP | {b"date", b"server", b"x-trace-id", b"traceparent"}
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
RETRY_STATUSES = frozenset({502, 503, 504})
SMALL_BODY = 65_536  # read at once below this (one receive); stream above


class BodyTooLarge(Exception):
    pass


@dataclass
class Config:
    """One configuration generation, swapped whole on refresh: a request reads `gateway.config` once and keeps
    that generation to its end, so a refresh never changes the rules under a request in flight."""

    table: RouteTable
    max_body_bytes: int
    security: Headers
    cors: Cors
    access_log: bool = True
    uses_header_predicates: bool = field(init=False)

    def __post_init__(self) -> None:
        self.uses_header_predicates = any(r.headers for r in self.table.routes)


class Proxy:
    """`upstream`: the kit's transport stack, BreakerTransport(BalancingTransport(AiohttpTransport)), for routes
    naming a service; `direct`: BreakerTransport(AiohttpTransport) for fixed URLs. Transports, not clients: a
    client's send() adds cookie jars, auth and redirect handling, and its default headers — none of which a
    proxy wants, and which cost more than the rest of the proxy path together (measured: bench/README.md)."""

    def __init__(self, config: Config, upstream: httpx.AsyncBaseTransport, direct: httpx.AsyncBaseTransport,
                 verifier: JwksVerifier, buckets: Buckets, timeout: Callable[[], httpx.Timeout]) -> None:
        self.config, self.upstream, self.direct, self.verifier = config, upstream, direct, verifier
        self.buckets, self.timeout = buckets, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        conf = self.config
        method: str = scope["method"]
        path: str = scope["path"]
        fwd: Headers = []
        authz = origin = content_length = None
        chunked = traced = False
        prior_xff = host = connection = b""
        for name, value in scope["headers"]:
            if name in DROP_REQUEST:
                if name == b"host":
                    host = value
                elif name == b"connection":
                    connection = value
                elif name == b"transfer-encoding":
                    chunked = True
                elif name == b"traceparent":
                    traced = True
                elif name == b"x-forwarded-for":
                    prior_xff = value
                continue
            if name == b"authorization":
                authz = value
            elif name == b"origin":
                origin = value
            elif name == b"content-length":
                content_length = value
            fwd.append((name, value))
        if connection:  # headers the client named in Connection are hop-by-hop too (RFC 9110 §7.6.1)
            named = {t.strip().lower() for t in connection.split(b",")}
            fwd = [(n, v) for n, v in fwd if n not in named]

        span = tracer.start_span(f"{method} gateway", kind=SpanKind.SERVER,
                                 context=propagate.extract(scope, getter=asgi_getter) if traced else None,
                                 attributes={"http.request.method": method, "url.path": path})
        token = otel_context.attach(trace.set_span_in_context(span))
        ctx = span.get_span_context()
        out: Headers = list(conf.security)
        trace_id = ""
        if ctx.is_valid:  # tracing not set up (a test): no trace id to give
            trace_id = format(ctx.trace_id, "032x")
            traceparent = f"00-{trace_id}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}".encode()
            out += [(b"x-trace-id", trace_id.encode()), (b"traceparent", traceparent)]
            # The upstream continues our server span's trace (no client span of its own: one span per hop
            # is what a reader of the trace needs, and half the cost).
            fwd.append((b"traceparent", traceparent))
        status, route, instance, user = 0, None, "", "-"
        try:
            status, route, instance, user = await self._forward(scope, receive, send, conf, method, path, fwd, out,
                                                                authz, origin, content_length, chunked, prior_xff,
                                                                host, trace_id)
        finally:
            span.set_attribute("http.response.status_code", status)
            if route is not None:
                span.update_name(f"{method} {route.id}")
                span.set_attribute("http.route", route.spec.path)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            span.end()
            otel_context.detach(token)
            if conf.access_log:
                log.info(json.dumps({"method": method, "path": path, "route": route.id if route else None,
                                     "upstream": instance, "status": status, "user": user, "trace_id": trace_id,
                                     "ms": round((time.perf_counter() - started) * 1000, 2)}))

    async def _forward(self, scope: Scope, receive: Receive, send: Send, conf: Config, method: str, path: str,
                       fwd: Headers, out: Headers, authz: bytes | None, origin: bytes | None,
                       content_length: bytes | None, chunked: bool, prior_xff: bytes, host: bytes,
                       trace_id: str) -> tuple[int, Route | None, str, str]:
        async def fail(status: int, detail: str, route: Route | None = None, user: str = "-", **extra: str,
                       ) -> tuple[int, Route | None, str, str]:
            out.extend((k.encode(), v.encode()) for k, v in extra.items())
            await send_problem(send, status, detail, path, trace_id, out)
            return status, route, "", user

        raw_path: bytes = scope.get("raw_path") or path.encode()
        if b"%2f" in raw_path.lower() or "/." in path:
            # Dot segments and encoded slashes could step out of a route's prefix upstream: refuse, don't guess.
            if b"%2f" in raw_path.lower() or any(s in (".", "..") for s in path.split("/")):
                return await fail(400, "dot segments and encoded slashes are not allowed in paths")

        if origin is not None:
            preflight = method == "OPTIONS" and any(n == b"access-control-request-method" for n, _ in fwd)
            if conf.cors.enabled and conf.cors.allows(origin):
                out += conf.cors.headers(origin, preflight=preflight)
                if preflight:  # answered here: the services behind know nothing of CORS
                    out.append((b"content-length", b"0"))
                    await send({"type": "http.response.start", "status": 204, "headers": out})
                    await send({"type": "http.response.body", "body": b""})
                    return 204, None, "", "-"
            elif preflight:
                return await fail(403, f"origin {origin.decode('latin-1')} is not allowed (CORS)")

        route = conf.table.match(method, path, fwd if conf.uses_header_predicates else None)
        if route is None:
            return await fail(404, f"no route for {method} {path}")

        user = "-"
        if route.auth:
            scheme, _, token = (authz or b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return await fail(401, "a bearer token is required", route, **{"www-authenticate": "Bearer"})
            try:
                claims = await self.verifier.verify(token.strip())
            except InvalidToken as exc:
                return await fail(401, f"invalid token: {exc}", route,
                                  **{"www-authenticate": 'Bearer error="invalid_token"'})
            except (ServiceUnavailable, httpx.HTTPError, ValueError) as exc:
                return await fail(503, f"cannot fetch signing keys: {exc}", route)
            user = claims["sub"]
            roles: list[str] = claims.get("roles", [])
            if route.roles and route.roles.isdisjoint(roles):
                return await fail(403, f"needs one of the roles {sorted(route.roles)}", route, user)
            fwd = [(n, v) for n, v in fwd if n != b"authorization"]  # services trust identity headers, not tokens
            fwd += [(b"x-user-id", user.encode()), (b"x-user-name", str(claims.get("name", "")).encode()),
                    (b"x-user-roles", ",".join(roles).encode())]

        client = scope.get("client")
        client_ip = client[0] if client else ""
        if route.limit is not None:
            decision = await self.buckets.take(f"{route.id}|{user if user != '-' else client_ip}", route.limit)
            out += decision.headers()
            if not decision.allowed:
                return await fail(429, f"rate limit of route {route.id} exceeded; retry in {decision.retry_after_s} s",
                                  route, user)

        length = 0
        if content_length is not None:
            try:
                length = int(content_length)
            except ValueError:
                return await fail(400, "invalid Content-Length", route, user)
            if length > conf.max_body_bytes:
                return await fail(413, f"bodies are limited to {conf.max_body_bytes} bytes", route, user)

        if route.req_remove:
            fwd = [(n, v) for n, v in fwd if n not in route.req_remove]
        fwd += route.req_add
        fwd.append((b"x-forwarded-for", prior_xff + b", " + client_ip.encode() if prior_xff else client_ip.encode()))
        fwd.append((b"x-forwarded-proto", scope.get("scheme", "http").encode()))
        fwd.append((b"x-forwarded-host", host))

        body: bytes | AsyncIterator[bytes] | None = None
        too_large: list[bool] = []
        if chunked or length:
            message = await receive()
            first = message.get("body", b"")
            if not message.get("more_body", False):
                if len(first) > conf.max_body_bytes:
                    return await fail(413, f"bodies are limited to {conf.max_body_bytes} bytes", route, user)
                body = first
            else:
                body = _stream(first, receive, conf.max_body_bytes, too_large)

        upstream_path = route.upstream_path(raw_path.decode("latin-1"))
        query: bytes = scope.get("query_string", b"")
        if route.service is not None:
            url = f"http://{route.service}{upstream_path}"
            transport = self.upstream
        else:
            url = f"{route.base_url}{upstream_path}"
            transport = self.direct
        if query:
            url += "?" + query.decode("latin-1")
        # A Request of our own, not client.build_request(): that would merge the client's default headers
        # (User-Agent, Accept-Encoding: gzip, ...) into what the client sent, and the upstream would answer a
        # question the client never asked.
        extensions: dict[str, Any] = {"timeout": (route.timeout or self.timeout()).as_dict()}
        if route.weights:
            extensions["msa.weights"] = route.weights

        attempts = 1 + (route.retries if method in IDEMPOTENT and body is None else 0)
        buffered: bytes | None = None
        for attempt in range(1, attempts + 1):
            try:
                request = httpx.Request(method, url, headers=fwd, content=body, extensions=extensions)
                upstream = await transport.handle_async_request(request)
            except ServiceUnavailable as exc:
                if attempt < attempts:
                    continue
                return await fail(503, str(exc), route, user)
            except (UpstreamTimeout, httpx.TimeoutException) as exc:
                if too_large:
                    return await fail(413, f"bodies are limited to {conf.max_body_bytes} bytes", route, user)
                if attempt < attempts:
                    continue
                detail = str(exc) if isinstance(exc, UpstreamTimeout) else \
                    f"{route.target} did not answer in time ({exc or type(exc).__name__})"
                return await fail(504, detail, route, user)
            except (httpx.TransportError, BodyTooLarge) as exc:
                if too_large:
                    return await fail(413, f"bodies are limited to {conf.max_body_bytes} bytes", route, user)
                if attempt < attempts:
                    continue
                return await fail(502, f"{route.target}: {exc or type(exc).__name__}", route, user)
            if attempt < attempts and upstream.status_code in RETRY_STATUSES:
                await upstream.stream.aclose()  # type: ignore[attr-defined]
                continue
            if attempt < attempts and _small(upstream):
                # Nothing is sent yet, so an instance that dies halfway through its answer can still be retried:
                # read a small body whole first (a large one streams, and can't be).
                try:
                    buffered = b"".join([chunk async for chunk in upstream.stream])  # type: ignore[union-attr]
                except (httpx.HTTPError, OSError):
                    await upstream.stream.aclose()  # type: ignore[attr-defined]
                    continue
            break

        instance = upstream.extensions.get("msa.instance", route.target)
        try:
            resp_remove = route.resp_remove
            for name, value in upstream.headers.raw:
                name = name.lower()
                if name not in DROP_RESPONSE and name not in resp_remove:
                    out.append((name, value))
            out += route.resp_add
            await send({"type": "http.response.start", "status": upstream.status_code, "headers": out})
            if buffered is not None:
                await send({"type": "http.response.body", "body": buffered})
            else:
                async for chunk in upstream.stream:  # type: ignore[union-attr]
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
        except (httpx.HTTPError, OSError, asyncio.CancelledError) as exc:
            # Headers are gone already: all that is left is to cut the response short, which the client notices.
            warn.warning("upstream %s broke off the response: %s", instance, exc or type(exc).__name__)
            raise
        finally:
            await upstream.stream.aclose()  # type: ignore[attr-defined]
        return upstream.status_code, route, instance, user


RETRY_BUFFER_BYTES = 65_536  # a retryable answer up to this size is read whole before any of it is sent


def _small(upstream: httpx.Response) -> bool:
    length = upstream.headers.get("content-length")
    return length is not None and length.isdigit() and int(length) <= RETRY_BUFFER_BYTES


async def _stream(first: bytes, receive: Receive, limit: int, too_large: list[bool]) -> AsyncIterator[bytes]:
    seen = len(first)
    if first:
        yield first
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise httpx.ReadError("client disconnected")
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            too_large.append(True)  # whatever the client library wraps this in, the caller answers 413
            raise BodyTooLarge()
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return
