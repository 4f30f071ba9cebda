"""The gateway's HTTP/1.1 server (msa_gateway.server) on real sockets: keep-alive, pipelining, bodies streamed both
ways with flow control, Expect: 100-continue, malformed requests, time-outs, disconnects, graceful shutdown; the
ASGI bridge to the gateway's own pages; and the proxy served by it end to end."""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from harness import Harness
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from msa_gateway.asgi import ClientDisconnected, Exchange
from msa_gateway.server import BODY_HIGH_WATER, HttpServer, asgi_bridge

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


class Served:
    def __init__(self, handler: Handler, **options: float) -> None:
        self.server = HttpServer(handler, **options)  # type: ignore[arg-type]

    async def __aenter__(self) -> "Served":
        self.port = await self.server.start("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.shutdown(1.0)

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
    return await asyncio.wait_for(reader.read(), within_s) == b""


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
        assert len(s.server.connections) == 1
        writer.write(b"GET /last HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        status, headers, _ = await read_answer(reader)
        assert headers[b"connection"] == b"close" and await closed(reader)
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


async def test_percent_decoded_path_and_raw_path_and_absolute_form():
    async with Served(echo) as s:
        async with httpx.AsyncClient(base_url=s.url) as c:
            doc = (await c.get("/a%20b/c%2Fd")).json()
        assert doc["path"] == "/a b/c/d" and doc["raw_path"] == "/a%20b/c%2Fd"
        reader, writer = await s.raw()
        writer.write(b"GET http://gw.example/abs?q=1 HTTP/1.1\r\nHost: gw.example\r\n\r\n")
        doc = json.loads((await read_answer(reader))[2])
        assert doc["path"] == "/abs" and doc["query"] == "q=1"
        writer.close()


async def test_a_malformed_request_is_a_400_problem_and_the_connection_closes():
    async with Served(echo) as s:
        for garbage in (b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nHost: gw\r\nBad Header\r\n\r\n",
                        b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"):
            reader, writer = await s.raw()
            writer.write(garbage)
            status, headers, body = await read_answer(reader)
            assert status.startswith(b"HTTP/1.1 400") and headers[b"content-type"] == b"application/problem+json"
            assert headers[b"connection"] == b"close" and json.loads(body)["status"] == 400
            assert await closed(reader)
            writer.close()


async def test_a_request_body_streams_with_flow_control():
    """A 4 MiB upload to a handler that reads slowly: the server stops reading while it holds a full buffer."""
    seen = {"held": 0, "body": 0}
    size = 4 << 20

    async def handler(ex: Exchange) -> None:
        more = True
        while more:
            await asyncio.sleep(0.001)  # a slow upstream
            held = ex.conn.parsing.buffered if ex.conn.parsing is ex else 0  # type: ignore[attr-defined]
            seen["held"] = max(seen["held"], held)
            chunk, more = await ex.receive()
            seen["body"] += len(chunk)
        await ex.respond(200, [], b"%d" % seen["body"])

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(size // 65536):
            yield b"y" * 65536

    async with Served(handler) as s:
        async with httpx.AsyncClient(base_url=s.url, timeout=20) as c:
            r = await c.post("/up", content=upload())
    assert r.text == str(size)
    # Reading pauses at the high-water mark; one read (up to 256 KiB) may land on top of it.
    assert 0 < seen["held"] <= BODY_HIGH_WATER + (256 << 10), seen


async def test_a_slow_reader_holds_the_writer_back():
    """A 64 MiB answer to a client that reads nothing for a while: the handler waits in write(), the transport's
    buffer stays near its high-water mark (the rest waits upstream, not in the gateway's memory)."""
    size = 64 << 20
    progress = {"written": 0, "buffer": 0}

    async def handler(ex: Exchange) -> None:
        await ex.start(200, [(b"content-length", b"%d" % size)], has_length=True)
        transport = ex.conn.transport  # type: ignore[attr-defined]
        for _ in range(size // 65536):
            await ex.write(b"x" * 65536)
            progress["written"] += 65536
            progress["buffer"] = max(progress["buffer"], transport.get_write_buffer_size())
        await ex.end()

    async with Served(handler) as s:
        reader, writer = await s.raw()
        writer.write(b"GET /big HTTP/1.1\r\nHost: gw\r\n\r\n")
        await asyncio.sleep(0.5)
        assert 0 < progress["written"] < size  # held back by the client, not buffered
        _, _, body = await read_answer(reader)
        assert len(body) == size and progress["written"] == size
        assert progress["buffer"] <= 2 * 65536 + 65536, progress
        writer.close()


async def test_expect_100_continue_is_answered_when_the_body_is_read_and_not_before_a_refusal():
    async def refuse_big(ex: Exchange) -> None:
        if ex.path == "/big":
            await ex.respond(413, [], b"too large")
            return
        await echo(ex)

    async with Served(refuse_big) as s:
        reader, writer = await s.raw()
        writer.write(b"POST /ok HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        status, _, body = await read_answer(reader)
        assert status == b"HTTP/1.1 200 OK" and json.loads(body)["body"] == 5

        writer.write(b"POST /big HTTP/1.1\r\nHost: gw\r\nContent-Length: 99999\r\nExpect: 100-continue\r\n\r\n")
        status, headers, body = await read_answer(reader)
        assert status.startswith(b"HTTP/1.1 413") and body == b"too large"
        # The body may or may not follow now: nothing else on this connection could be told from it.
        assert headers[b"connection"] == b"close" and await closed(reader)
        writer.close()


async def test_an_unread_body_is_dropped_and_the_connection_stays_usable():
    async def early(ex: Exchange) -> None:
        await ex.respond(401, [], b"no")

    async with Served(early) as s:
        reader, writer = await s.raw()
        writer.write(b"POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 100000\r\n\r\n")
        status, headers, _ = await read_answer(reader)
        assert status.startswith(b"HTTP/1.1 401") and b"connection" not in headers
        writer.write(b"z" * 100000 + b"GET /next HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert (await read_answer(reader))[0].startswith(b"HTTP/1.1 401")
        writer.close()


async def test_idle_connections_and_unfinished_heads_are_closed():
    async with Served(echo, keep_alive_s=0.2, head_timeout_s=0.3) as s:
        reader, writer = await s.raw()
        writer.write(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
        await read_answer(reader)
        assert await closed(reader, 2.0)  # idle after its answer
        writer.close()
        reader, writer = await s.raw()
        writer.write(b"GET / HTTP/1.1\r\nHost: g")  # and then nothing (slowloris)
        assert await closed(reader, 2.0)
        writer.close()


async def test_http_1_0_gets_a_close_delimited_stream_and_head_gets_no_body():
    async def stream(ex: Exchange) -> None:
        await ex.start(200, [(b"x-kind", b"stream")], has_length=False)
        for part in (b"ab", b"cd"):
            await ex.write(part)
        await ex.end()

    async with Served(stream) as s:
        reader, writer = await s.raw()
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5)  # to the end: the connection closes
        head, _, body = data.partition(b"\r\n\r\n")
        assert b"transfer-encoding" not in head and b"connection: close" in head and body == b"abcd"
        writer.close()
        reader, writer = await s.raw()
        writer.write(b"HEAD / HTTP/1.1\r\nHost: gw\r\n\r\nGET / HTTP/1.1\r\nHost: gw\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"x-kind: stream" in head
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)  # the next answer follows at once
        assert b"transfer-encoding: chunked" in head
        assert await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5) == b"2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n"
        writer.close()


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
        await ex.end()

    async with Served(endless) as s:
        reader, writer = await s.raw()
        writer.write(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
        await reader.readexactly(100_000)
        writer.transport.abort()
        assert await asyncio.wait_for(outcome, 5) == "stopped"


async def test_shutdown_lets_a_request_in_flight_finish_and_refuses_new_ones():
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow(ex: Exchange) -> None:
        if ex.path == "/slow":
            started.set()
            await release.wait()
        await ex.respond(200, [], b"done " + ex.path.encode())

    s = Served(slow)
    await s.__aenter__()
    busy_reader, busy_writer = await s.raw()
    idle_reader, idle_writer = await s.raw()
    idle_writer.write(b"GET /quick HTTP/1.1\r\nHost: gw\r\n\r\n")
    await read_answer(idle_reader)
    busy_writer.write(b"GET /slow HTTP/1.1\r\nHost: gw\r\n\r\n")
    await started.wait()
    stopping = asyncio.create_task(s.server.shutdown(5.0))
    assert await closed(idle_reader)  # idle keep-alive connections go at once
    with pytest.raises(OSError):
        await s.raw()  # no longer accepting
    assert not stopping.done()
    release.set()
    _, headers, body = await read_answer(busy_reader)
    assert body == b"done /slow" and headers[b"connection"] == b"close" and await closed(busy_reader)
    await asyncio.wait_for(stopping, 5)
    busy_writer.close()
    idle_writer.close()


async def test_shutdown_cancels_what_outlives_its_time_out():
    cancelled = asyncio.Event()

    async def hang(ex: Exchange) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with Served(hang) as s:
        reader, writer = await s.raw()
        writer.write(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
        await asyncio.sleep(0.05)
        await asyncio.wait_for(s.server.shutdown(0.1), 3)
        assert cancelled.is_set() and await closed(reader)
        writer.close()


async def test_a_failing_handler_is_a_500_problem():
    async def broken(ex: Exchange) -> None:
        raise RuntimeError("bug")

    async with Served(broken) as s:
        async with httpx.AsyncClient(base_url=s.url) as c:
            r = await c.get("/x")
    assert r.status_code == 500 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == 500 and r.headers["connection"] == "close"


async def test_response_headers_cannot_smuggle_a_line():
    async def forged(ex: Exchange) -> None:
        await ex.respond(200, [(b"x-a", b"1\r\nset-cookie: evil=1")], b"")

    async with Served(forged) as s:
        async with httpx.AsyncClient(base_url=s.url) as c:
            r = await c.get("/")
    assert r.status_code == 500 and "set-cookie" not in r.headers


# -- the ASGI bridge: the gateway's own pages -----------------------------------------------------------------------

async def test_asgi_apps_run_behind_the_bridge():
    async def info(request: Request) -> JSONResponse:
        return JSONResponse({"path": request.url.path, "q": request.query_params.get("q"),
                             "body": (await request.body()).decode()})

    async def numbers(_request: Request) -> StreamingResponse:
        async def gen() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"{i}\n".encode()
        return StreamingResponse(gen(), media_type="text/plain")

    app = Starlette(routes=[Route("/info", info, methods=["GET", "POST"]), Route("/numbers", numbers)])

    async def handler(ex: Exchange) -> None:
        await app(*asgi_bridge(ex))

    async with Served(handler) as s:
        async with httpx.AsyncClient(base_url=s.url) as c:
            r = await c.post("/info?q=1", content=b"hi")
            assert r.json() == {"path": "/info", "q": "1", "body": "hi"}
            assert r.headers["content-length"] == str(len(r.content))
            r = await c.get("/numbers")
            assert r.text == "0\n1\n2\n" and r.headers["transfer-encoding"] == "chunked"
            assert (await c.get("/missing")).status_code == 404


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
    """20 MB against a 1 MB limit, by Content-Length and chunked: the client reads a 413 problem+json (the server
    reads and drops what is already on its way before closing — nginx's lingering close), and the server goes on."""
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
            assert headers[b"connection"] == b"close" and await closed(reader)
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
