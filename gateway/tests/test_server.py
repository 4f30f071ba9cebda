"""The gateway's server (msa_gateway.server: granian's embedded server) on real sockets, with the proxy's Exchange
on top: keep-alive, pipelining, bodies both ways, Expect: 100-continue, malformed requests, an unfinished head,
disconnects, stopping with a request in flight; and the proxy served end to end (body limits, slow bodies)."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any, AsyncIterator, Awaitable, Callable

import httpx
import pytest
from harness import Harness

from msa_gateway.asgi import ClientDisconnected, Exchange
from msa_gateway.server import granian

Handler = Callable[[Exchange], Awaitable[None]]


async def echo(ex: Exchange) -> None:
    """Answers what it was asked, as JSON, after reading the whole body."""
    body = b""
    more = ex.method in ("POST", "PUT")
    while more:
        chunk, more = await ex.receive()
        body += chunk
    doc = {"method": ex.method, "path": ex.path, "raw_path": ex.raw_path.decode(), "query": ex.query.decode(),
           "headers": [[n.decode(), v.decode()] for n, v in ex.headers], "body": len(body), "client": ex.client_ip}
    await ex.respond(200, [(b"content-type", b"application/json")], json.dumps(doc).encode())


def asgi(handler: Handler) -> Callable[..., Awaitable[None]]:
    """`handler` as the ASGI app granian serves (with a lifespan, as the gateway's)."""
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await handler(Exchange(scope, receive, send))
    return app


class Served:
    def __init__(self, handler: Handler, **options: float) -> None:
        self.app, self.options = asgi(handler), options

    async def __aenter__(self) -> "Served":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = granian(self.app, "127.0.0.1", self.port, **self.options)  # type: ignore[arg-type]
        self.serving = asyncio.ensure_future(self.server.serve())
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return self
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError("granian did not start listening")

    async def stop(self) -> None:
        self.server.stop()
        await asyncio.wait_for(self.serving, 10)

    async def __aexit__(self, *exc: object) -> None:
        if not self.serving.done():
            await self.stop()

    async def raw(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One response with a Content-Length: status line, headers, body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.split(b"\r\n")
    headers = dict(line.lower().split(b": ", 1) for line in lines[1:] if line)
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return lines[0], headers, body


async def closed(reader: asyncio.StreamReader, within_s: float = 5.0) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), within_s) == b""
    except ConnectionResetError:
        return True


async def test_keep_alive_serves_many_requests_on_one_connection():
    async with Served(echo) as s:
        reader, writer = await s.raw()
        for i in range(3):
            writer.write(f"GET /a/{i}?x=%2F HTTP/1.1\r\nHost: gw\r\nX-Thing: v\r\n\r\n".encode())
            status, headers, body = await read_answer(reader)
            doc = json.loads(body)
            assert status == b"HTTP/1.1 200 OK" and b"connection" not in headers and b"date" in headers
            assert doc["path"] == f"/a/{i}" and doc["query"] == "x=%2F" and ["x-thing", "v"] in doc["headers"]
            assert doc["client"] == "127.0.0.1"
        writer.write(b"GET /last HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        await read_answer(reader)
        assert await closed(reader)
        writer.close()


async def test_pipelined_requests_are_answered_in_order():
    async def slow_first(ex: Exchange) -> None:
        if ex.path == "/1":
            await asyncio.sleep(0.05)
        await ex.respond(200, [], ex.path.encode())

    async with Served(slow_first) as s:
        reader, writer = await s.raw()
        writer.write(b"".join(f"GET /{i} HTTP/1.1\r\nHost: gw\r\n\r\n".encode() for i in (1, 2, 3)))
        assert [(await read_answer(reader))[2] for _ in range(3)] == [b"/1", b"/2", b"/3"]
        writer.close()


async def test_percent_decoded_path_and_raw_path():
    """The proxy refuses encoded slashes by the raw path (they could step out of a route's prefix upstream)."""
    async with Served(echo) as s:
        async with httpx.AsyncClient(base_url=s.url) as c:
            doc = (await c.get("/a%20b/c%2Fd")).json()
        assert doc["path"] == "/a b/c/d" and doc["raw_path"] == "/a%20b/c%2Fd"


async def test_a_malformed_request_is_a_400_and_the_connection_closes():
    """granian answers what it cannot parse itself: the gateway never sees it."""
    async with Served(echo) as s:
        for garbage in (b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nHost: gw\r\nBad Header\r\n\r\n"):
            reader, writer = await s.raw()
            writer.write(garbage)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 400")
            assert await closed(reader)
            writer.close()


async def test_expect_100_continue_is_answered_when_the_body_is_read():
    async with Served(echo) as s:
        reader, writer = await s.raw()
        writer.write(b"POST /ok HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        status, _, body = await read_answer(reader)
        assert status == b"HTTP/1.1 200 OK" and json.loads(body)["body"] == 5
        writer.close()


async def test_a_request_body_streams_in_pieces():
    pieces: list[int] = []

    async def count(ex: Exchange) -> None:
        more = True
        while more:
            chunk, more = await ex.receive()
            pieces.append(len(chunk))
        await ex.respond(200, [], str(sum(pieces)).encode())

    async def body() -> AsyncIterator[bytes]:
        for _ in range(50):
            yield b"z" * 100_000

    async with Served(count) as s:
        async with httpx.AsyncClient(base_url=s.url) as c:
            r = await c.post("/up", content=body())
    assert r.text == "5000000" and len(pieces) > 1


async def test_an_unfinished_head_is_closed_after_the_head_time_out():
    async with Served(echo, head_timeout_s=0.5) as s:
        reader, writer = await s.raw()
        writer.write(b"GET / HTTP/1.1\r\nHost: g")  # and then nothing (slowloris)
        assert await closed(reader, 3.0)
        writer.close()


async def test_a_streamed_answer_is_chunked_and_head_gets_no_body():
    async def stream(ex: Exchange) -> None:
        await ex.start(200, [(b"x-kind", b"stream")], has_length=False)
        for part in (b"ab", b"cd"):
            await ex.write(part)
        await ex.end()

    async with Served(stream) as s:
        async with httpx.AsyncClient(base_url=s.url) as c:
            r = await c.get("/")
            assert r.text == "abcd" and r.headers["transfer-encoding"] == "chunked"
            head = await c.head("/")
            assert head.headers["x-kind"] == "stream" and head.content == b""


async def test_a_client_that_disconnects_mid_answer_stops_the_writer():
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def endless(ex: Exchange) -> None:
        await ex.start(200, [], has_length=False)
        try:
            for _ in range(100_000):
                await ex.write(b"x" * 65536)
                await asyncio.sleep(0)
            outcome.set_result("wrote everything")
        except ClientDisconnected:
            outcome.set_result("stopped")

    async with Served(endless) as s:
        reader, writer = await s.raw()
        writer.write(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
        await reader.readexactly(100_000)
        writer.transport.abort()
        assert await asyncio.wait_for(outcome, 5) == "stopped"


async def test_stopping_lets_a_request_in_flight_finish_and_refuses_new_ones():
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow(ex: Exchange) -> None:
        if ex.path == "/slow":
            started.set()
            await release.wait()
        await ex.respond(200, [], b"done " + ex.path.encode())

    async with Served(slow) as s:
        busy_reader, busy_writer = await s.raw()
        busy_writer.write(b"GET /slow HTTP/1.1\r\nHost: gw\r\n\r\n")
        await started.wait()
        stopping = asyncio.create_task(s.stop())
        await asyncio.sleep(0.3)
        with pytest.raises(OSError):
            await s.raw()  # no longer accepting
        assert not stopping.done()
        release.set()
        _, _, body = await read_answer(busy_reader)
        assert body == b"done /slow"
        await asyncio.wait_for(stopping, 10)
        busy_writer.close()


# -- the proxy, served -----------------------------------------------------------------------------------------------

async def test_the_proxy_served_end_to_end():
    h = Harness([{"id": "catalog", "path": "/api/catalog", "service": "catalog", "strip_prefix": 2,
                  "auth": "public"}], max_body_bytes=1000)
    async with Served(h.proxy.handle) as s:
        async with httpx.AsyncClient(base_url=s.url) as c:
            r = await c.post("/api/catalog/p?a=1", content=b"x" * 100, headers={"Connection": "keep-alive, x-s",
                                                                              "X-S": "1"})
            seen = r.json()
            assert r.status_code == 200 and seen["path"] == "/p" and seen["query"] == "a=1"
            assert seen["body"] == "x" * 100 and "x-s" not in seen["headers"]
            assert seen["headers"]["x-forwarded-for"] == "127.0.0.1" and r.headers["x-frame-options"] == "DENY"
            too_big = await c.post("/api/catalog/p", content=b"x" * 2000)
            assert too_big.status_code == 413 and too_big.headers["content-type"] == "application/problem+json"

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(20):
                    yield b"y" * 100

            streamed = await c.post("/api/catalog/p", content=chunks())
            assert streamed.status_code == 413
            assert (await c.get("/api/catalog/after")).status_code == 200  # the connection, or a new one, works
    await h.close()


async def test_a_body_far_over_the_limit_gets_the_413_not_a_reset():
    """20 MB against a 1 MB limit, by Content-Length and chunked: the client reads a 413 problem+json, and the
    server goes on."""
    h = Harness([{"id": "catalog", "path": "/api/catalog", "service": "catalog", "strip_prefix": 2,
                  "auth": "public"}], max_body_bytes=1_048_576)
    async with Served(h.proxy.handle) as s:
        async with httpx.AsyncClient(base_url=s.url, timeout=10) as c:
            too_big = await c.post("/api/catalog/p", content=b"x" * 20_000_000)
            assert too_big.status_code == 413 and too_big.headers["content-type"] == "application/problem+json"
            assert "1048576 bytes" in too_big.json()["detail"]

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(200):
                    yield b"y" * 100_000

            streamed = await c.post("/api/catalog/p", content=chunks())
            assert streamed.status_code == 413
            assert (await c.get("/api/catalog/after")).status_code == 200
    await h.close()


async def test_a_slow_loris_body_is_cut_at_the_body_time_out_and_no_upstream_is_asked():
    """A byte a second: 408 problem+json when gateway.body_timeout_s is over, the connection closed; the body is
    read whole before an upstream is chosen, so the service never saw the request."""
    h = Harness([{"id": "catalog", "path": "/api/catalog", "service": "catalog", "strip_prefix": 2,
                  "auth": "public"}], body_timeout_s=1.5)
    async with Served(h.proxy.handle) as s:
        reader, writer = await s.raw()
        writer.write(b"POST /api/catalog/p HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        started = asyncio.get_running_loop().time()

        async def drip() -> None:
            for _ in range(100):
                writer.write(b"x")
                await asyncio.sleep(0.25)

        dripping = asyncio.create_task(drip())
        try:
            status, headers, body = await read_answer(reader)
            waited = asyncio.get_running_loop().time() - started
            assert status.startswith(b"HTTP/1.1 408") and headers[b"content-type"] == b"application/problem+json"
            assert b"not received whole within 1.5 s" in body and 1.4 < waited < 3.0
            assert await closed(reader)
        finally:
            dripping.cancel()
            writer.close()
        assert h.upstreams.calls == []  # what the mock upstream received: nothing
        async with httpx.AsyncClient(base_url=s.url) as c:  # the gateway goes on serving
            assert (await c.post("/api/catalog/p", content=b"x" * 100)).status_code == 200
    await h.close()


async def test_a_route_can_have_a_smaller_body_limit_than_the_gateway():
    h = Harness([{"id": "orders", "path": "/api/orders", "service": "catalog", "strip_prefix": 1, "auth": "public",
                  "max_body_bytes": 2048}], max_body_bytes=1_048_576)
    async with Served(h.proxy.handle) as s:
        async with httpx.AsyncClient(base_url=s.url) as c:
            assert (await c.post("/api/orders", content=b"x" * 2048)).status_code == 200
            r = await c.post("/api/orders", content=b"x" * 2049)
            assert r.status_code == 413 and "limited to 2048 bytes" in r.json()["detail"]
    await h.close()
