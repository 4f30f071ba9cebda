"""The gateway's HTTP/1.1 server: an asyncio Protocol with httptools' parser, in place of uvicorn.

Why: under uvicorn each proxied request paid for an ASGI scope dict, a RequestResponseCycle, a message dict per
send, a regex per response header, and two writes per answer (head, then body) — ~30 % of the gateway's CPU at
one connection (py-spy). Here a request is parsed into an `Exchange` that the proxy reads directly (header byte
pairs as parsed), and a whole answer leaves in one `transport.write`. The gateway's own pages (health, docs,
admin) still run as ASGI through `asgi_bridge`.

HTTP/1.1 as RFC 9112 has it: keep-alive (closed after `keep_alive_s` idle), pipelined requests answered in order,
one at a time (reading pauses while one waits); request bodies streamed with flow control (reading pauses above
`BODY_HIGH_WATER` unread bytes); `Expect: 100-continue` answered when the handler first reads the body; an answer
framed by its Content-Length, else chunked (HTTP/1.1) or by closing (HTTP/1.0); a body the handler did not read is
read and dropped so the connection stays usable; a malformed request gets `malformed(detail)`'s 400 and the
connection closes; a request head must arrive within `head_timeout_s`. `shutdown()`: stop accepting, close idle
connections, let requests in flight finish (their connections close after), cancel what is left after a time-out.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from email.utils import formatdate
from typing import Awaitable, Callable
from urllib.parse import unquote

import httptools
import httpx
from starlette.types import Message, Receive, Scope, Send

from .asgi import PROBLEM_CONTENT_TYPE, ClientDisconnected, Exchange, Headers, problem_body

log = logging.getLogger(__name__)

Handler = Callable[[Exchange], Awaitable[None]]
Malformed = Callable[[str], tuple[Headers, bytes]]  # detail → the 400's headers and body

BODY_HIGH_WATER = 65_536  # unread request body bytes before the connection stops reading
NO_BODY_STATUSES = frozenset({204, 304})
METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")}
_STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        from http import HTTPStatus

        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {reason}\r\n".encode()
    return line


def default_malformed(detail: str) -> tuple[Headers, bytes]:
    return [PROBLEM_CONTENT_TYPE], problem_body(400, f"malformed request: {detail}", "", "")


class HttpServer:
    def __init__(self, handler: Handler, *, malformed: Malformed = default_malformed, keep_alive_s: float = 5.0,
                 head_timeout_s: float = 10.0) -> None:
        self.handler, self.malformed = handler, malformed
        self.keep_alive_s, self.head_timeout_s = keep_alive_s, head_timeout_s
        self.connections: set[_Connection] = set()
        self.closing = False
        self._all_closed = asyncio.Event()
        self._listener: asyncio.base_events.Server | None = None
        self._second = -1
        self._date = b""
        self._sweeper: asyncio.TimerHandle | None = None
        # Time-outs are checked by one sweep over the connections, not a timer per request (two timer handles
        # armed and cancelled per request were ~1 % of the gateway's CPU): they close up to a sweep late.
        self.sweep_s = min(1.0, keep_alive_s / 2, head_timeout_s / 2)

    async def start(self, host: str, port: int, *, sock: socket.socket | None = None, backlog: int = 2048) -> int:
        """Listen (on `sock` when given); returns the port."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._listener = await loop.create_server(lambda: _Connection(self), sock=sock, backlog=backlog)
        else:
            self._listener = await loop.create_server(lambda: _Connection(self), host, port, backlog=backlog,
                                                      reuse_address=True)
        self._sweeper = loop.call_later(self.sweep_s, self._sweep)
        return self._listener.sockets[0].getsockname()[1]

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in [c for c in self.connections if c.deadline and c.deadline < now and c.current is None]:
            conn.expire()  # idle too long, or a request head that never finished
        self._sweeper = loop.call_later(self.sweep_s, self._sweep)

    def date(self) -> bytes:
        """The Date header line, formatted once a second."""
        now = int(time.time())
        if now != self._second:
            self._second, self._date = now, b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._date

    async def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stop accepting; requests in flight get `timeout_s` to finish (their connections close after them)."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._listener is not None:
            self._listener.close()
        for conn in list(self.connections):
            conn.shutdown()
        deadline = time.monotonic() + timeout_s
        in_flight = [c.current.task for c in self.connections if c.current is not None and c.current.task]
        if in_flight:
            _, pending = await asyncio.wait(in_flight, timeout=timeout_s)
            if pending:
                log.warning("shutdown: cancelling %d request(s) still running after %.0f s", len(pending), timeout_s)
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=1.0)
        if self.connections:  # answers still being sent to slow readers
            try:
                await asyncio.wait_for(self._all_closed.wait(), max(0.1, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                pass
        for conn in list(self.connections):
            conn.abort()


class _Connection(asyncio.Protocol):
    """One client connection. `current` is the request being answered; `pipeline` the ones parsed behind it."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = ""
        self.scheme = "http"
        self.url = b""
        self.headers: Headers = []
        self.current: _Exchange | None = None
        self.parsing: _Exchange | None = None  # whose body the parser is reading (the current one, or queued)
        self.pipeline: collections.deque[_Exchange] = collections.deque()
        self.lost = False
        self.last = False  # no request follows the ones parsed (the client half-closed, or asked for an upgrade)
        self.reading = True
        self.write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self.deadline = 0.0  # loop time after which an idle connection (or an unfinished head) is closed; 0: none

    # -- asyncio.Protocol ------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if isinstance(peer, tuple) else ""
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        self.server.connections.add(self)
        if self.server.closing:
            transport.close()
            return
        self.deadline = self.loop.time() + self.server.keep_alive_s  # a client that says nothing is idle too

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrades (WebSocket, h2c) are not offered: the request was answered as plain HTTP, but what follows
            # on this connection is no longer HTTP/1.1 — it closes after the answer.
            self.last = True
            self._pause()
        except httptools.HttpParserError as exc:  # callbacks' errors (a non-ASCII path) come wrapped in one too
            cause = exc.__context__ or exc
            log.info("malformed request from %s: %s", self.client_ip, cause)
            self._bad_request(str(cause) or type(cause).__name__)

    def eof_received(self) -> bool | None:
        # The client half-closed: it may still read what it asked for; the transport closes once that is sent.
        self.last = True
        return self.current is not None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server.connections.discard(self)
        if self.server.closing and not self.server.connections:
            self.server._all_closed.set()
        for ex in (self.current, self.parsing):
            if ex is not None:
                ex.wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    # -- httptools callbacks -----------------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url, self.headers = b"", []
        self.deadline = self.loop.time() + self.server.head_timeout_s

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.deadline = 0.0
        parser, url = self.parser, self.url
        raw_method = parser.get_method()
        method = METHODS.get(raw_method) or raw_method.decode("ascii")
        if url[:1] == b"/":
            raw_path, _, query = url.partition(b"?")
        else:  # absolute-form (a client that thinks it talks to a forward proxy) or "*"
            parsed = httptools.parse_url(url)
            raw_path, query = parsed.path or b"/", parsed.query or b""
        path = raw_path.decode("ascii")
        if "%" in path:
            path = unquote(path)
        version = parser.get_http_version()
        ex = _Exchange(self, method, path, raw_path, query, self.headers, version,
                       parser.should_keep_alive() and not self.server.closing)
        self.parsing = ex
        if self.current is None:
            self._begin(ex)
        else:  # pipelined: answered when the ones before it are
            self.pipeline.append(ex)
            self._pause()

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is not None:
            ex.feed(body)

    def on_message_complete(self) -> None:
        ex, self.parsing = self.parsing, None
        if ex is not None:
            ex.more = False
            ex.wake()
            if ex.discard and ex is not self.current:
                self._resume_if_quiet()

    # -- requests --------------------------------------------------------------------------------------------------
    def _begin(self, ex: _Exchange) -> None:
        self.current = ex
        ex.task = self.loop.create_task(self._run(ex))

    async def _run(self, ex: _Exchange) -> None:
        try:
            await self.server.handler(ex)
        except Exception:
            log.exception("request %s %s failed", ex.method, ex.path)
            if not ex.started:
                ex.keep_alive = False
                body = problem_body(500, "the gateway failed to handle this request", ex.path, "")
                await ex.respond(500, [PROBLEM_CONTENT_TYPE], body)
        finally:
            self._finished(ex)

    def _finished(self, ex: _Exchange) -> None:
        self.current = None
        if self.lost:
            return
        if not ex.complete:  # the answer broke off halfway: only closing tells the client
            self.abort()
            return
        if not ex.keep_alive or self.server.closing or (self.last and not self.pipeline):
            self.transport.close()  # after what is buffered has been sent
            return
        if ex.more:  # answered without reading the whole body: the rest is read and dropped, or the idle timer
            ex.discard = True  # closes the connection (a client that never sends it)
            ex.chunks.clear()
            ex.buffered = 0
            self._resume()
            self.deadline = self.loop.time() + self.server.keep_alive_s
            return
        if self.pipeline:
            self._begin(self.pipeline.popleft())
        self._resume_if_quiet()
        if self.current is None:
            self.deadline = self.loop.time() + self.server.keep_alive_s

    def _bad_request(self, detail: str) -> None:
        self._pause()
        if self.current is not None or self.lost:
            # Garbage behind a request in flight: answering now would answer out of order. Close after it.
            if self.current is not None:
                self.current.keep_alive = False
            self.pipeline.clear()
            return
        headers, body = self.server.malformed(detail)
        head = [status_line(400), self.server.date(), *(n + b": " + v + b"\r\n" for n, v in headers),
                b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body), body]
        self.transport.write(b"".join(head))
        self.transport.close()

    # -- flow control and timers ------------------------------------------------------------------------------------
    def _pause(self) -> None:
        if self.reading and not self.lost:
            self.reading = False
            self.transport.pause_reading()

    def _resume(self) -> None:
        if not self.reading and not self.lost:
            self.reading = True
            self.transport.resume_reading()

    def _resume_if_quiet(self) -> None:
        """Read again unless a queued request waits, or the request being read holds a full buffer."""
        if not self.pipeline and (self.parsing is None or self.parsing.buffered < BODY_HIGH_WATER):
            self._resume()

    async def drain(self) -> None:
        if self.write_paused and not self.lost:
            if self._drain is None:
                self._drain = self.loop.create_future()
            await self._drain
        if self.lost:
            raise ClientDisconnected("the client disconnected")

    def expire(self) -> None:
        self.deadline = 0.0
        if self.current is None and not self.lost:
            self.transport.close()

    def shutdown(self) -> None:
        if self.current is None:
            self.transport.close()
        else:
            self.current.keep_alive = False
            self.pipeline.clear()

    def abort(self) -> None:
        if not self.lost and self.transport is not None:
            self.transport.abort()


class _Exchange:
    """One request on a connection (asgi.Exchange)."""

    __slots__ = ("conn", "method", "path", "raw_path", "query", "headers", "http_version", "keep_alive",
                 "client_ip", "scheme", "chunks", "buffered", "more", "discard", "_continue_checked", "_waiter",
                 "started", "complete", "_chunked", "_bodyless", "task")

    def __init__(self, conn: _Connection, method: str, path: str, raw_path: bytes, query: bytes, headers: Headers,
                 http_version: str, keep_alive: bool) -> None:
        self.conn, self.method, self.path, self.raw_path, self.query = conn, method, path, raw_path, query
        self.headers, self.http_version, self.keep_alive = headers, http_version, keep_alive
        self.client_ip, self.scheme = conn.client_ip, conn.scheme
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.more = True  # until the parser completes the message
        self.discard = False
        self._continue_checked = False
        self._waiter: asyncio.Future[None] | None = None
        self.started = self.complete = self._chunked = False
        self._bodyless = method == "HEAD"
        self.task: asyncio.Task[None] | None = None

    # -- the request body ------------------------------------------------------------------------------------------
    def feed(self, chunk: bytes) -> None:
        if self.discard:
            return
        self.chunks.append(chunk)
        self.buffered += len(chunk)
        if self.buffered >= BODY_HIGH_WATER:
            self.conn._pause()
        self.wake()

    def wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def receive(self) -> tuple[bytes, bool]:
        conn = self.conn
        if not self._continue_checked:  # the client waits for a go-ahead before it sends the body
            self._continue_checked = True
            if self.more and not self.started and not conn.lost and self._expects_continue():
                conn.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while not self.chunks and self.more:
            if conn.lost:
                raise httpx.ReadError("client disconnected")
            self._waiter = conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        if conn.parsing is self:
            conn._resume_if_quiet()
        return data, self.more

    def _expects_continue(self) -> bool:
        return self.http_version == "1.1" and \
            any(n == b"expect" and v.lower() == b"100-continue" for n, v in self.headers)

    # -- the answer ------------------------------------------------------------------------------------------------
    def _head(self, status: int, headers: Headers, extra: bytes) -> bytes:
        if self.started:
            raise RuntimeError("the answer has started already")
        # One C-level join over the header pairs. A value with a line break in it would forge a header (or a whole
        # answer): counting the line ends tells, in two scans.
        block = b"\r\n".join(map(b": ".join, headers))
        if headers and not block.count(b"\n") == block.count(b"\r") == len(headers) - 1:
            raise ValueError("a response header holds a line break")
        if self.more and not self._continue_checked and self._expects_continue():
            # Refused before its body was asked for: the client may send the body now or never, so nothing after
            # it on this connection could be told apart from it.
            self.keep_alive = False
        if self.more and status == 408:  # its body never came whole in time: close rather than wait for the rest
            self.keep_alive = False
        if not self.keep_alive:
            extra += b"connection: close\r\n"
        elif self.http_version == "1.0":
            extra += b"connection: keep-alive\r\n"
        self.started = True
        return b"".join((status_line(status), self.conn.server.date(), block, b"\r\n" if headers else b"", extra,
                         b"\r\n"))

    async def respond(self, status: int, headers: Headers, body: bytes, has_length: bool = False) -> None:
        conn = self.conn
        if self._bodyless or status in NO_BODY_STATUSES or status < 200:  # a HEAD's headers say what a GET gets
            head, body = self._head(status, headers, b""), b""
        else:
            head = self._head(status, headers, b"" if has_length else b"content-length: %d\r\n" % len(body))
        if not conn.lost:
            conn.transport.write(head + body if body else head)
        self.complete = True
        if conn.write_paused:
            await conn.drain()

    async def start(self, status: int, headers: Headers, has_length: bool) -> None:
        self._bodyless = self._bodyless or status in NO_BODY_STATUSES or status < 200
        extra = b""
        if not has_length and not self._bodyless:
            if self.http_version == "1.1":
                self._chunked, extra = True, b"transfer-encoding: chunked\r\n"
            else:  # an HTTP/1.0 client knows only one other way: the body ends where the connection does
                self.keep_alive = False
        head = self._head(status, headers, extra)
        if self.conn.lost:
            raise ClientDisconnected("the client disconnected")
        self.conn.transport.write(head)
        await self.conn.drain()

    async def write(self, chunk: bytes) -> None:
        conn = self.conn
        if conn.lost:
            raise ClientDisconnected("the client disconnected")
        if chunk and not self._bodyless:
            conn.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if self._chunked else chunk)
        if conn.write_paused:
            await conn.drain()

    async def end(self) -> None:
        if self._chunked and not self.conn.lost:
            self.conn.transport.write(b"0\r\n\r\n")
        self.complete = True

    # -- for the ASGI bridge ---------------------------------------------------------------------------------------
    async def closed_or_answered(self) -> None:
        """Waits until the client disconnects or the answer is complete (ASGI's http.disconnect)."""
        while not self.conn.lost and not self.complete:
            self._waiter = self.conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


def asgi_bridge(ex: Exchange) -> tuple[Scope, Receive, Send]:
    """An exchange as ASGI's scope, receive and send: for the gateway's own pages (a Starlette app) and for ASGI
    middleware in front of the proxy."""
    assert isinstance(ex, _Exchange)
    conn = ex.conn
    sockname = conn.transport.get_extra_info("sockname") if not conn.lost else None
    peer = conn.transport.get_extra_info("peername") if not conn.lost else None
    scope: Scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
                    "http_version": ex.http_version, "method": ex.method, "scheme": ex.scheme, "path": ex.path,
                    "raw_path": ex.raw_path, "query_string": ex.query, "root_path": "", "headers": ex.headers,
                    "client": tuple(peer[:2]) if isinstance(peer, tuple) else None,
                    "server": tuple(sockname[:2]) if isinstance(sockname, tuple) else None, "state": {}}
    start: list[Message] = []
    body_done = False

    async def receive() -> Message:
        nonlocal body_done
        if not body_done:
            try:
                body, more = await ex.receive()
            except httpx.ReadError:
                return {"type": "http.disconnect"}
            body_done = not more
            return {"type": "http.request", "body": body, "more_body": more}
        await ex.closed_or_answered()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            start.append(message)  # written with the first body message: a whole answer in one write
            return
        if kind != "http.response.body" or not start:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        status, headers = start[0]["status"], list(start[0].get("headers", []))
        has_length = any(n.lower() == b"content-length" for n, _ in headers)
        body, more = message.get("body", b""), message.get("more_body", False)
        try:
            if not ex.started and not more:
                await ex.respond(status, headers, body, has_length)
                ex.wake()
                return
            if not ex.started:
                await ex.start(status, headers, has_length)
            if body:
                await ex.write(body)
            if not more:
                await ex.end()
                ex.wake()
        except ClientDisconnected:
            pass  # as ASGI servers do: sends after a disconnect are dropped

    return scope, receive, send
