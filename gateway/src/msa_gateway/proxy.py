"""The proxy path: one request in, one request to the route's upstream, the answer streamed back.

The gateway's hot path (DESIGN §7: FastAPI's per-request cost is ~3× bare Starlette's), written against
`asgi.Exchange`: headers stay the byte pairs the server parsed, the route table is precompiled, and nothing is
validated twice. Upstream calls go through the kit's guards (discovery cache, balancing with outlier ejection,
breaker, bulkhead) over the kit's HTTP/1.1 client (`upstream.Upstreams`, `msa_kit.http1.Pool`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import httpx
from opentelemetry import context as otel_context
from opentelemetry import propagate
from starlette.types import Receive, Scope, Send

from msa_kit.http1 import Body, Response
from msa_kit.metrics import UNMATCHED, observe_request
from msa_kit.resilience import ServiceUnavailable, UpstreamTimeout
from msa_kit.tokens import InvalidToken, JwksVerifier
from msa_kit.tracing import ServerSpans

from .accesslog import AccessLog
from .asgi import ClientDisconnected, Exchange, Headers, send_problem
from .policy import Cors
from .ratelimit import Buckets
from .routes import Route, RouteTable
from .upstream import Upstreams

warn = logging.getLogger(__name__)
# One SERVER span per request, made whole at its end (msa_kit.tracing.ServerSpans says why not the SDK's span).
spans = ServerSpans("msa_gateway")

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
MALFORMED = "malformed"  # the route label of a request refused before routing: a path we won't map
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
    body_timeout_s: float = 10.0
    uses_header_predicates: bool = field(init=False)

    def __post_init__(self) -> None:
        self.uses_header_predicates = any(r.headers for r in self.table.routes)


class Proxy:
    """`upstreams`: where a route's requests go — a service through the kit's guards, or a fixed URL through a
    breaker — over a client that takes and gives header byte pairs (msa_kit.http1 says why not httpx's models).
    `access`: the access log's writer (None: no access log, as in unit tests)."""

    def __init__(self, config: Config, upstreams: Upstreams, verifier: JwksVerifier, buckets: Buckets,
                 timeout: Callable[[], httpx.Timeout], access: AccessLog | None = None) -> None:
        self.config, self.upstreams, self.verifier = config, upstreams, verifier
        self.buckets, self.timeout, self.access = buckets, timeout, access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The proxy as an ASGI app (under ASGI middleware, or an ASGI server)."""
        await self.handle(Exchange(scope, receive, send))

    async def handle(self, ex: Exchange, started: float | None = None) -> None:
        """`started`: when the request came in, if something ran before the proxy (the workshop's faults)."""
        if started is None:
            started = time.perf_counter()
        conf = self.config
        method = ex.method
        path = ex.path
        fwd: Headers = []
        authz = origin = content_length = None
        chunked = False
        prior_xff = host = connection = traceparent_in = tracestate_in = b""
        for name, value in ex.headers:
            if name in DROP_REQUEST:
                if name == b"host":
                    host = value
                elif name == b"connection":
                    connection = value
                elif name == b"transfer-encoding":
                    chunked = True
                elif name == b"traceparent":
                    traceparent_in = value
                elif name == b"tracestate":
                    tracestate_in = value
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

        span = spans.start(f"{method} gateway", _parent(traceparent_in, tracestate_in) if traceparent_in else None,
                           {"http.request.method": method, "url.path": path})
        token = otel_context.attach(span.in_context())  # logs carry the trace id; a JWKS fetch is a child span
        ctx = span.context
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
            status, route, instance, user = await self._forward(ex, conf, method, path, fwd, out, authz, origin,
                                                                content_length, chunked, prior_xff, host, trace_id)
        finally:
            if route is not None:
                span.end(f"{method} {route.id}", {"http.response.status_code": status, "http.route": route.spec.path},
                         error=status >= 500)
            else:
                span.end(f"{method} gateway", {"http.response.status_code": status}, error=status >= 500)
            otel_context.detach(token)
            elapsed = time.perf_counter() - started
            if conf.access_log and self.access is not None:
                self.access.write(method, path, route.id if route else None, instance, status, user, trace_id,
                                  round(elapsed * 1000, 2))
            if status:  # 0: the exchange broke off before an answer (the access log has it), no status to count
                observe_request(method, route.id if route is not None else MALFORMED if status == 400 else UNMATCHED,
                                status, elapsed)

    async def _forward(self, ex: Exchange, conf: Config, method: str, path: str,
                       fwd: Headers, out: Headers, authz: bytes | None, origin: bytes | None,
                       content_length: bytes | None, chunked: bool, prior_xff: bytes, host: bytes,
                       trace_id: str) -> tuple[int, Route | None, str, str]:
        async def fail(status: int, detail: str, route: Route | None = None, user: str = "-", **extra: str,
                       ) -> tuple[int, Route | None, str, str]:
            out.extend((k.encode(), v.encode()) for k, v in extra.items())
            await send_problem(ex, status, detail, path, trace_id, out)
            return status, route, "", user

        raw_path = ex.raw_path
        if b"%2f" in raw_path.lower() or "/." in path:
            # Dot segments and encoded slashes could step out of a route's prefix upstream: refuse, don't guess.
            if b"%2f" in raw_path.lower() or any(s in (".", "..") for s in path.split("/")):
                return await fail(400, "dot segments and encoded slashes are not allowed in paths")

        if origin is not None:
            preflight = method == "OPTIONS" and any(n == b"access-control-request-method" for n, _ in fwd)
            if conf.cors.enabled and conf.cors.allows(origin):
                out += conf.cors.headers(origin, preflight=preflight)
                if preflight:  # answered here: the services behind know nothing of CORS
                    await ex.respond(204, out, b"")
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

        client_ip = ex.client_ip
        if route.limit is not None:
            decision = await self.buckets.take(f"{route.id}|{user if user != '-' else client_ip}", route.limit)
            out += decision.headers()
            if not decision.allowed:
                return await fail(429, f"rate limit of route {route.id} exceeded; retry in {decision.retry_after_s} s",
                                  route, user)

        limit = route.max_body_bytes or conf.max_body_bytes
        length = 0
        if content_length is not None:
            try:
                length = int(content_length)
            except ValueError:
                return await fail(400, "invalid Content-Length", route, user)
            if length > limit:
                answer = await fail(413, f"bodies are limited to {limit} bytes", route, user)
                await _drop_body(ex)
                return answer

        if route.req_remove:
            fwd = [(n, v) for n, v in fwd if n not in route.req_remove]
        fwd += route.req_add
        fwd.append((b"x-forwarded-for", prior_xff + b", " + client_ip.encode() if prior_xff else client_ip.encode()))
        fwd.append((b"x-forwarded-proto", ex.scheme.encode()))
        fwd.append((b"x-forwarded-host", host))

        body: Body = None
        if chunked or length:
            # Read whole before an upstream is asked (nginx's proxy_request_buffering): a client that sends its body
            # a byte a second holds a gateway connection for body_timeout_s at most, never a service's.
            try:
                body = await _read_body(ex, limit, conf.body_timeout_s)
            except BodyTooLarge:
                answer = await fail(413, f"bodies are limited to {limit} bytes", route, user)
                await _drop_body(ex)
                return answer
            except TimeoutError:
                return await fail(408, f"body: not received whole within {conf.body_timeout_s:g} s", route, user)
            if chunked:  # the upstream gets it with a length, not chunked
                fwd.append((b"content-length", str(len(body)).encode()))

        target = route.upstream_path(raw_path.decode("latin-1")).encode("latin-1")
        query = ex.query
        if query:
            target += b"?" + query
        timeout = route.timeout or self.timeout()
        bmethod = method.encode()

        attempts = 1 + (route.retries if method in IDEMPOTENT and body is None else 0)
        buffered: bytes | None = None
        for attempt in range(1, attempts + 1):
            try:
                if route.service is not None:
                    upstream = await self.upstreams.service(route.service, bmethod, target, fwd, body,
                                                            weights=route.weights, timeout=timeout)
                else:
                    assert route.fixed is not None
                    upstream = await self.upstreams.fixed(route.fixed, bmethod, target, fwd, body, timeout=timeout)
            except ServiceUnavailable as exc:
                if attempt < attempts:
                    continue
                return await fail(503, str(exc), route, user)
            except (UpstreamTimeout, httpx.TimeoutException) as exc:
                if attempt < attempts:
                    continue
                detail = str(exc) if isinstance(exc, UpstreamTimeout) else \
                    f"{route.target} did not answer in time ({exc or type(exc).__name__})"
                return await fail(504, detail, route, user)
            except httpx.TransportError as exc:
                if attempt < attempts:
                    continue
                return await fail(502, f"{route.target}: {exc or type(exc).__name__}", route, user)
            if attempt < attempts and upstream.status_code in RETRY_STATUSES:
                await upstream.aclose()
                continue
            if _small(upstream):
                # A small answer is read whole before any of it is sent. Its head and body often arrive in reads of
                # their own (uvicorn writes them separately), and sent as they come they would cost the client two
                # or three writes and wake-ups instead of one. And with nothing sent yet, an instance that dies
                # halfway through its answer can still be retried, or answered with a clean 502/504.
                try:
                    buffered = upstream.whole_body()
                    if buffered is None:
                        buffered = await upstream.read()
                except (httpx.HTTPError, OSError) as exc:
                    await upstream.aclose()
                    if attempt < attempts:
                        continue
                    if isinstance(exc, httpx.TimeoutException):
                        return await fail(504, f"{route.target} stopped answering ({exc or type(exc).__name__})",
                                          route, user)
                    return await fail(502, f"{route.target} broke off its answer ({exc or type(exc).__name__})",
                                      route, user)
            break

        instance = upstream.instance or route.target
        try:
            resp_remove = route.resp_remove
            has_length = False
            for name, value in upstream.headers:  # names come lower-cased
                if name not in DROP_RESPONSE and name not in resp_remove:
                    out.append((name, value))
                    if name == b"content-length":
                        has_length = True
            out += route.resp_add
            if buffered is None:
                buffered = upstream.whole_body()  # a larger answer that came with its head
            if buffered is not None:
                await ex.respond(upstream.status_code, out, buffered, has_length)
            else:
                await ex.start(upstream.status_code, out, has_length)
                async for chunk in upstream.chunks():
                    await ex.write(chunk)
                await ex.end()
        except ClientDisconnected:
            # Nobody to answer: stop reading the upstream's answer (the finally below drops its connection).
            return upstream.status_code, route, instance, user
        except (httpx.HTTPError, OSError, asyncio.CancelledError) as exc:
            # Headers are gone already: all that is left is to cut the response short, which the client notices.
            warn.warning("upstream %s broke off the response: %s", instance, exc or type(exc).__name__)
            raise
        finally:
            ex.close()
            await upstream.aclose()
        return upstream.status_code, route, instance, user


SMALL_ANSWER_BYTES = 65_536  # an answer up to this size (by Content-Length) is read whole before it is sent


def _small(upstream: Response) -> bool:
    for name, value in upstream.headers:
        if name == b"content-length":
            return value.isdigit() and int(value) <= SMALL_ANSWER_BYTES
    return False


def _parent(traceparent: bytes, tracestate: bytes) -> otel_context.Context:
    carrier = {"traceparent": traceparent.decode("latin-1")}
    if tracestate:
        carrier["tracestate"] = tracestate.decode("latin-1")
    return propagate.extract(carrier)


async def _read_body(ex: Exchange, limit: int, timeout_s: float) -> bytes:
    chunks: list[bytes] = []
    seen = 0
    async with asyncio.timeout(timeout_s):
        while True:
            chunk, more = await ex.receive()  # httpx.ReadError when the client disconnects
            seen += len(chunk)
            if seen > limit:
                raise BodyTooLarge()
            if not more:
                return chunk if not chunks else b"".join(chunks) + chunk
            chunks.append(chunk)


LINGER_S = 5.0  # what an oversized body may take to arrive, read and dropped after its 413


async def _drop_body(ex: Exchange) -> None:
    """The rest of a body refused with a 413, read and dropped (nginx's lingering close): a server that closed
    the connection with the body still arriving would reset it, and the client would see the reset, not the 413."""
    with contextlib.suppress(TimeoutError, httpx.ReadError):
        async with asyncio.timeout(LINGER_S):
            more = True
            while more:
                _, more = await ex.receive()
