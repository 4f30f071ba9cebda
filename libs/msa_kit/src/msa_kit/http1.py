"""The kit's HTTP/1.1 client: keep-alive connections per address, bytes in and bytes out.

Kept, measured against maintained clients (issue #17, "HTTP on kept libraries"; bench/README.md, "HTTP: kept
libraries vs the hand-written stack"), in two `make bench` runs of 2026-12-07 (bench/harness.py; 2 shared cores):
- The gateway's proxy path on aiohttp's client (bench/gateway_bench.py's `AiohttpUpstream`) instead of `Pool`, same
  server, same run: 40 % and 45 % of nginx's req/s at 50 connections — below the issue's bar of 60 % — where the
  gateway on this client made 45 % and 87 % (1,559 / 1,678 req/s beside 1,821 / 3,570); at 1 connection 47 % / 45 %
  beside 65 % / 59 %, p50 0.72 / 0.71 ms beside 0.56 / 0.57 ms.
- A service's calls (the kit's whole stack, `resilience.service_client`, 16 callers, bench/client_bench.py) over
  httpx-aiohttp's transport instead of `Http1Transport`: 77 % / 91 % of the calls per second, ×1.27 / ×1.31 the
  caller's CPU per call (735 / 795 µs beside 559 / 618 µs). And it reports an upstream that closes the connection
  without answering as `httpx.ConnectTimeout` (aiohttp's ServerDisconnectedError is a ClientConnectionError, which
  it maps to that), so the balancer would call it a time-out (UpstreamTimeout, 504, an outlier strike) instead of a
  broken connection (502; retried when idempotent). This client raises RemoteProtocolError there.
So both users keep this client (the saga and failover runs, the issue's other condition, were not run on the
library client: it had failed the first).

Two users: the gateway's proxy path calls `Pool.request` with the header byte pairs its server parsed, and every
service-to-service call goes through `Http1Transport`, which gives httpx's API (the kit's clients, the tracing,
the guards) this client underneath.

Why not httpx's own transport or aiohttp: a proxy already holds the request as the header byte pairs the server
parsed, and wants the answer the same way. httpx builds URL, Headers, Request and Response models around every call
(two URL parses alone were ~20 % of the gateway's time) and aiohttp its own request and response objects, timers
and cookie jar (under httpx-aiohttp, ~17 % of the order service's CPU while placing orders). This client writes the
request head in one `transport.write` and parses the answer with httptools (the same parser uvicorn uses on the
other side); a response that arrived in one read is handed over whole. Failures are raised as httpx's exception
types, which is what the kit's balancer and breaker judge: a refused connection is a `ConnectError` (fail over), a
time-out a `TimeoutException`.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import AsyncIterator, Protocol, Union

import httpx
import httptools

Headers = list[tuple[bytes, bytes]]
Body = Union[bytes, AsyncIterator[bytes], None]

# A reused connection that the upstream closed while we sent on it (its keep-alive timer fired): the request never
# reached the application, so it is sent again on a new connection — for methods that may be repeated.
REPEATABLE = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
IDLE_S = 4.0  # uvicorn closes an idle keep-alive connection after 5 s: ours go before theirs
HIGH_WATER = 1 << 20  # response bytes buffered before we stop reading from the upstream
LOW_WATER = 1 << 18


class Response(Protocol):
    """What the proxy needs of an upstream's answer (the test harness has another implementation)."""

    status_code: int
    headers: Headers  # names lower-cased
    instance: str

    def whole_body(self) -> bytes | None: ...  # the whole body when it is already in, else None

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def read(self) -> bytes: ...

    async def aclose(self) -> None: ...


class Client(Protocol):
    """`timeout`: from the request's first byte to the answer's headers, and then between reads of its body."""

    async def request(self, host: str, port: int, method: bytes, target: bytes, headers: Headers, body: Body, *,
                      timeout: float | None, connect_timeout: float | None, tls: bool = False) -> Response: ...

    async def aclose(self) -> None: ...


class UpstreamResponse:
    __slots__ = ("status_code", "headers", "instance", "_conn", "_chunks", "_buffered", "_done", "_error", "_waiter",
                 "_read_timeout")

    def __init__(self, status_code: int, headers: Headers, conn: "_Connection", read_timeout: float | None) -> None:
        self.status_code, self.headers, self.instance = status_code, headers, ""
        self._conn: _Connection | None = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._done = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._read_timeout = read_timeout

    # -- fed by the connection -----------------------------------------------------------------------------------
    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > HIGH_WATER and self._conn is not None:
            self._conn.pause()
        self._wake()

    def _finish(self, error: Exception | None = None) -> None:
        if self._done:
            return
        self._done, self._error = True, error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- read by the proxy ---------------------------------------------------------------------------------------
    def whole_body(self) -> bytes | None:
        if not self._done or self._error is not None:
            return None
        body = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        self._chunks.clear()
        self._release()
        return body

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            while self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered < LOW_WATER and self._conn is not None:
                    self._conn.resume()
                yield chunk
            if self._done:
                if self._error is not None:
                    raise self._error
                self._release()
                return
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(self._read_timeout):  # cheaper than wait_for: this runs per read
                    await self._waiter
            except TimeoutError:
                self._finish(httpx.ReadTimeout("the upstream stopped sending its answer"))
                self._release()
                raise self._error from None  # type: ignore[misc]
            finally:
                self._waiter = None

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def aclose(self) -> None:
        self._release()

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.done(reusable=self._done and self._error is None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time (no pipelining)."""

    def __init__(self, pool: "Pool", key: tuple[str, int, bool]) -> None:
        self.pool, self.key = pool, key
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.headers: Headers = []
        self.response: UpstreamResponse | None = None
        self.head: asyncio.Future[UpstreamResponse] | None = None
        self.read_timeout: float | None = None
        self.closed = False
        self.got_bytes = False
        self.head_request = False
        self.until_close = False  # no Content-Length, not chunked: the body ends when the connection does
        self.keep_alive = False
        self.interim = False
        self.used = 0
        self.idle_since = 0.0
        self._paused = False
        self._drain: asyncio.Future[None] | None = None
        self.counted = False  # in the pool's count of open connections
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self.parser is None:  # bytes nobody asked for (on an idle connection): it is not reusable
            self.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed response from the upstream: {exc}"))
            self.abort()

    def _fail(self, error: Exception) -> None:
        """The answer cannot be read: whoever waits for it (its head, or the rest of its body) gets `error`."""
        self.keep_alive = False
        if self.head is not None and not self.head.done():
            self.head.set_exception(error)
        elif self.response is not None:
            self.response._finish(error)

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.head is not None and not self.head.done():
            error: Exception = httpx.RemoteProtocolError("the upstream closed the connection without answering") \
                if exc is None else httpx.ReadError(f"the upstream connection broke: {exc}")
            self.head.set_exception(error)
        elif self.response is not None and not self.response._done:
            if self.until_close and exc is None:
                self.response._finish()
            else:
                self.response._finish(httpx.ReadError("the upstream closed the connection before the answer's end"))
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(httpx.WriteError("the upstream connection closed while sending"))

    def pause_writing(self) -> None:
        self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    # -- httptools callbacks -------------------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        status = self.parser.get_status_code()
        if status < 200:  # 1xx interim answers (103 Early Hints): the real one follows
            self.headers, self.interim = [], True
            return
        headers, self.headers = self.headers, []
        names = {n for n, _ in headers}
        self.until_close = b"content-length" not in names and b"transfer-encoding" not in names \
            and status not in (204, 304) and not self.head_request
        self.response = UpstreamResponse(status, headers, self, self.read_timeout)
        if self.head_request:  # no body follows, whatever Content-Length says
            self.keep_alive = False  # and the parser would wait for one: not worth a parser reset
            self.response._finish()
        if self.head is not None and not self.head.done():
            self.head.set_result(self.response)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.response is not None and not self.head_request:
            assert self.parser is not None
            self.keep_alive = self.parser.should_keep_alive()
            self.response._finish()

    # -- used by the pool and the response -------------------------------------------------------------------------
    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _expired(self) -> None:
        self._timer = None
        if self.head is not None and not self.head.done():
            self.head.set_exception(httpx.ReadTimeout(f"no answer within {self.read_timeout} s"))
            self.head = None  # the answer may still come: this connection can't be used again
            self.closed = True
            self.abort()

    def done(self, *, reusable: bool) -> None:
        """The response was read (or given up on): back to the pool, or closed."""
        self.response, self.head, self.parser = None, None, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.resume()
        if reusable and self.keep_alive and not self.closed:
            self.pool.put_back(self)
        else:
            self.closed = True
            self.abort()
            self.pool.forget(self)

    async def send(self, method: bytes, target: bytes, headers: Headers, body: Body,
                   read_timeout: float | None) -> UpstreamResponse:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.parser = httptools.HttpResponseParser(self)
        self.headers, self.response, self.got_bytes, self.interim = [], None, False, False
        head_future = self.head = loop.create_future()
        if read_timeout is not None:
            # One timer handle from the first byte sent to the headers: cheaper than asyncio.timeout() per call.
            self._timer = loop.call_at(loop.time() + read_timeout, self._expired)
        self.head_request = method == b"HEAD"
        self.read_timeout = read_timeout
        self.used += 1
        host = self.key[0].encode() + b":" + str(self.key[1]).encode()
        parts = [method, b" ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        streamed = body is not None and not isinstance(body, bytes)
        if streamed and not any(n == b"content-length" for n, _ in headers):
            parts.append(b"transfer-encoding: chunked\r\n")
            chunked = True
        else:
            chunked = False
        parts.append(b"\r\n")
        head = b"".join(parts)
        # Header values come from a client (parsed by uvicorn) and from claims and config: one line each, or the
        # upstream would read a header (or a request) nobody sent.
        lines = len(headers) + 3 + chunked
        if head.count(b"\n") != lines or head.count(b"\r") != lines or b"\0" in head:
            self.head = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            raise httpx.LocalProtocolError("a header name or value holds a line break or NUL")
        if body is None or isinstance(body, bytes):
            self.transport.write(head + body if body else head)
            return await head_future
        try:
            self.transport.write(head)
            async for chunk in body:
                if chunk:
                    self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                if self._drain is not None:
                    await self._drain
            if chunked:
                self.transport.write(b"0\r\n\r\n")
        except BaseException as exc:
            failed = head_future.exception() if head_future.done() and not head_future.cancelled() else None
            if failed is not None and isinstance(exc, httpx.WriteError):
                raise failed from None  # what cut the upload short (a time-out), not its symptom
            raise
        return await head_future


class Pool:
    """Keep-alive connections per (host, port, tls), most recently used first; at most `max_connections` open."""

    def __init__(self, max_connections: int = 500) -> None:
        self.max_connections = max_connections
        self._idle: dict[tuple[str, int, bool], list[_Connection]] = {}
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._ssl: ssl.SSLContext | None = None
        self._closing = False

    async def request(self, host: str, port: int, method: bytes, target: bytes, headers: Headers, body: Body, *,
                      timeout: float | None, connect_timeout: float | None, tls: bool = False) -> UpstreamResponse:
        key = (host, port, tls)
        conn = self._take(key)
        if conn is not None:
            try:
                return await conn.send(method, target, headers, body, timeout)
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                conn.done(reusable=False)
                # The upstream may have closed this idle connection just as we sent on it. If nothing came back
                # and the request can be sent again, send it on a fresh connection; otherwise it is a 502.
                if conn.got_bytes or method not in REPEATABLE or not (body is None or isinstance(body, bytes)):
                    raise
            except BaseException:
                conn.done(reusable=False)
                raise
        conn = await self._connect(key, connect_timeout)
        try:
            return await conn.send(method, target, headers, body, timeout)
        except BaseException:
            conn.done(reusable=False)
            raise

    def _take(self, key: tuple[str, int, bool]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_S:
                return conn
            conn.closed = True
            conn.abort()
            self._forget_count(conn)
        return None

    async def _connect(self, key: tuple[str, int, bool], timeout: float | None) -> _Connection:
        while self._open >= self.max_connections:
            if not self._close_an_idle():
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                await waiter
        self._open += 1
        conn = _Connection(self, key)
        conn.counted = True
        host, port, tls = key
        try:
            async with asyncio.timeout(timeout):
                await asyncio.get_running_loop().create_connection(
                    lambda: conn, host, port, ssl=self._tls() if tls else None, server_hostname=host if tls else None)
        except asyncio.TimeoutError:
            self._forget_count(conn)
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} within {timeout} s") from None
        except OSError as exc:
            self._forget_count(conn)
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
        except BaseException:
            self._forget_count(conn)
            conn.abort()
            raise
        return conn

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _close_an_idle(self) -> bool:
        for idle in self._idle.values():
            if idle:
                conn = idle.pop(0)  # the least recently used
                conn.closed = True
                conn.abort()
                self._forget_count(conn)
                return True
        return False

    def put_back(self, conn: _Connection) -> None:
        if self._closing:
            conn.abort()
            return
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle.setdefault(conn.key, []).append(conn)
        self._wake_one()

    def forget(self, conn: _Connection) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
        self._forget_count(conn)

    def _forget_count(self, conn: _Connection) -> None:
        if conn.counted:
            conn.counted = False
            self._open -= 1
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closing = True
        for idle in self._idle.values():
            for conn in idle:
                conn.abort()
            idle.clear()


_OWN_HEADERS = frozenset({b"host", b"transfer-encoding"})


class Http1Transport(httpx.AsyncBaseTransport):
    """httpx's transport interface over a `Pool`: what the kit's resilient clients send through.

    Timeouts are httpx's: `connect` for the connection, `read` from the request's first byte to the answer's
    headers and between reads of its body. An idle keep-alive connection the server closed just as a request went
    out is retried once on a new connection, for methods that may be repeated (see `Pool.request`)."""

    def __init__(self, max_connections: int = 100) -> None:
        self.pool = Pool(max_connections)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url, timeout = request.url, request.extensions.get("timeout") or {}
        # The pool writes Host, and frames a streamed body itself (chunked unless a Content-Length says otherwise).
        headers = [(name, value) for name, value in ((n.lower(), v) for n, v in request.headers.raw)
                   if name not in _OWN_HEADERS]
        try:
            body: Body = request.content
        except httpx.RequestNotRead:  # a streamed upload
            body = request.stream.__aiter__()  # type: ignore[union-attr]
        try:
            answer = await self.pool.request(
                url.host, url.port or (443 if url.scheme == "https" else 80), request.method.encode(), url.raw_path,
                headers, body or None, timeout=timeout.get("read"), connect_timeout=timeout.get("connect"),
                tls=url.scheme == "https")
        except httpx.TransportError as exc:
            exc.request = request  # httpx's callers (and the kit's guards) read it
            raise
        whole = answer.whole_body()
        stream = httpx.ByteStream(whole) if whole is not None else _AnswerStream(answer, request)
        return httpx.Response(answer.status_code, headers=answer.headers, stream=stream,
                              extensions={"http_version": b"HTTP/1.1"})

    async def aclose(self) -> None:
        await self.pool.aclose()


class _AnswerStream(httpx.AsyncByteStream):
    def __init__(self, answer: UpstreamResponse, request: httpx.Request) -> None:
        self.answer, self.request = answer, request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.answer.chunks():
                yield chunk
        except httpx.TransportError as exc:
            exc.request = self.request
            raise

    async def aclose(self) -> None:
        await self.answer.aclose()
