"""The kit's HTTP/1.1 client (msa_kit.http1) against real sockets, as the gateway's proxy path uses it (Pool) and as
every service-to-service call does (Http1Transport under httpx): framing, keep-alive, streaming both ways, and each
failure reported as the exception type the kit's balancer and breaker judge."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Awaitable, Callable

import httptools
import httpx
import pytest

from msa_kit.http1 import Http1Transport, Pool

Answer = Callable[[dict, asyncio.StreamWriter], Awaitable[bool]]  # returns False to close the connection


class Server:
    """Parses each request with httptools; `answer(request, writer)` writes whatever bytes a test wants."""

    def __init__(self, answer: Answer) -> None:
        self.answer, self.connections, self.requests = answer, 0, []  # type: ignore[var-annotated]

    async def __aenter__(self) -> "Server":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        done: list[dict] = []
        current: dict = {}

        class Callbacks:
            def on_message_begin(self) -> None:
                current.clear()
                current.update(headers={}, body=b"")

            def on_url(self, url: bytes) -> None:
                current["url"] = url

            def on_header(self, name: bytes, value: bytes) -> None:
                current["headers"][name.lower()] = value

            def on_body(self, body: bytes) -> None:
                current["body"] += body

            def on_message_complete(self) -> None:
                done.append(dict(current, method=parser.get_method()))

        parser = httptools.HttpRequestParser(Callbacks())
        try:
            while data := await reader.read(65536):
                parser.feed_data(data)
                while done:
                    request = done.pop(0)
                    self.requests.append(request)
                    if not await self.answer(request, writer):
                        writer.close()
                        return
        except (ConnectionError, httptools.HttpParserError, asyncio.CancelledError):
            pass
        writer.close()


def ok(body: bytes = b"hello", extra: bytes = b"") -> Answer:
    async def answer(_request: dict, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nX-Up: 1\r\n%b\r\n%b" % (len(body), extra, body))
        return True
    return answer


async def test_a_small_answer_comes_whole_and_the_connection_is_reused():
    async with Server(ok()) as server:
        pool = Pool()
        for _ in range(3):
            r = await pool.request("127.0.0.1", server.port, b"GET", b"/a?b=1", [(b"x-a", b"1")], None,
                                   timeout=2, connect_timeout=1)
            assert r.status_code == 200 and (b"x-up", b"1") in r.headers and r.whole_body() == b"hello"
        assert server.connections == 1
        request = server.requests[0]
        assert request["url"] == b"/a?b=1" and request["headers"][b"host"] == f"127.0.0.1:{server.port}".encode()
        assert request["headers"][b"x-a"] == b"1"
        await pool.aclose()


def chunked_answer(chunks: int) -> Answer:
    """A chunked answer of `chunks` × 100 kB, written as fast as the client reads."""
    async def answer(_request: dict, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(chunks):
            writer.write(b"%x\r\n%b\r\n" % (100_000, b"z" * 100_000))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        return True
    return answer


async def upload(pieces: int):
    for _ in range(pieces):
        yield b"y" * 50_000


async def test_streams_a_chunked_answer_and_a_chunked_upload():
    async with Server(chunked_answer(30)) as server:
        pool = Pool()
        r = await pool.request("127.0.0.1", server.port, b"POST", b"/up", [], upload(20), timeout=2,
                               connect_timeout=1)
        assert len(await r.read()) == 3_000_000
        assert len(server.requests[0]["body"]) == 1_000_000
        assert server.requests[0]["headers"][b"transfer-encoding"] == b"chunked"
        r = await pool.request("127.0.0.1", server.port, b"GET", b"/", [], None, timeout=2, connect_timeout=1)
        await r.read()
        assert server.connections == 1  # read to its end: reusable
        await pool.aclose()


async def test_an_answer_without_length_ends_with_the_connection_and_head_has_no_body():
    async def until_close(request: dict, writer: asyncio.StreamWriter) -> bool:
        if request["method"] == b"HEAD":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n")
            return True
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nall of it")
        return False

    async with Server(until_close) as server:
        pool = Pool()
        r = await pool.request("127.0.0.1", server.port, b"GET", b"/", [], None, timeout=2, connect_timeout=1)
        assert await r.read() == b"all of it"
        r = await pool.request("127.0.0.1", server.port, b"HEAD", b"/", [], None, timeout=2, connect_timeout=1)
        assert r.whole_body() == b"" and (b"content-length", b"99") in r.headers
        await pool.aclose()


async def test_an_idle_connection_the_upstream_closed_is_replaced_for_a_repeatable_request():
    async def once(request: dict, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        return False  # then close, as uvicorn does when its keep-alive timer fires

    async with Server(once) as server:
        pool = Pool()
        for _ in range(3):
            r = await pool.request("127.0.0.1", server.port, b"GET", b"/", [], None, timeout=2, connect_timeout=1)
            assert await r.read() == b"ok"
        assert server.connections == 3
        await pool.aclose()


async def test_a_refused_connection_is_a_connect_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        with pytest.raises(httpx.ConnectError):
            await Pool().request("127.0.0.1", port, b"GET", b"/", [], None, timeout=1, connect_timeout=1)


async def test_a_malformed_answer_is_a_protocol_error_and_no_answer_is_one_too():
    async def garbage(_request: dict, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"NOT HTTP\r\n\r\n")
        return True

    async def hang_up(_request: dict, _writer: asyncio.StreamWriter) -> bool:
        return False

    for answer in (garbage, hang_up):
        async with Server(answer) as server:
            with pytest.raises(httpx.RemoteProtocolError):
                await Pool().request("127.0.0.1", server.port, b"POST", b"/", [], b"x", timeout=1, connect_timeout=1)


@pytest.mark.parametrize("then_wait_s,timeout,error", [
    (0.0, 1.0, httpx.ReadError),  # the upstream closes halfway through its body
    (1.0, 0.1, httpx.ReadTimeout),  # the upstream stalls halfway through its body
], ids=["cut short", "stalled"])
async def test_an_answer_that_stops_halfway_is_an_error_of_its_kind(then_wait_s, timeout, error):
    async def halfway(_request: dict, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhalf")
        await asyncio.sleep(then_wait_s)
        return False

    async with Server(halfway) as server:
        r = await Pool().request("127.0.0.1", server.port, b"GET", b"/", [], None, timeout=timeout, connect_timeout=1)
        with pytest.raises(error):
            await r.read()


async def test_header_values_cannot_smuggle_a_line():
    async with Server(ok()) as server:
        with pytest.raises(httpx.LocalProtocolError):
            await Pool().request("127.0.0.1", server.port, b"GET", b"/", [(b"x-user-name", b"a\r\nx-user-roles: admin")],
                                 None, timeout=1, connect_timeout=1)
        assert server.requests == []


async def test_no_answer_in_time_is_a_read_timeout_and_the_connection_is_not_reused():
    async def late(_request: dict, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.3)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlate")
        return True

    async with Server(late) as server:
        pool = Pool()
        with pytest.raises(httpx.ReadTimeout):
            await pool.request("127.0.0.1", server.port, b"GET", b"/", [], None, timeout=0.05, connect_timeout=1)
        r = await pool.request("127.0.0.1", server.port, b"GET", b"/", [], None, timeout=1, connect_timeout=1)
        assert await r.read() == b"late" and server.connections == 2
        await pool.aclose()


# ---- under httpx: Http1Transport -------------------------------------------------------------------------------------

def echo_json() -> Answer:
    async def answer(request: dict, writer: asyncio.StreamWriter) -> bool:
        body = b'{"got": %d, "url": "%b"}' % (len(request["body"]), request["url"])
        writer.write(b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
                     % (len(body), body))
        return True
    return answer


async def test_httpx_calls_go_through_one_keep_alive_connection():
    async with Server(echo_json()) as server:
        async with httpx.AsyncClient(transport=Http1Transport(), base_url=f"http://127.0.0.1:{server.port}") as c:
            for i in range(3):
                r = await c.post(f"/orders?i={i}", json={"sku": "X", "quantity": 2}, headers={"X-Trace": "t"})
                sent = r.request.content
                assert r.status_code == 201 and r.json() == {"got": len(sent), "url": f"/orders?i={i}"}
                assert r.headers["content-type"] == "application/json" and r.http_version == "HTTP/1.1"
        assert server.connections == 1
        request = server.requests[0]
        assert request["method"] == b"POST" and request["body"] == b'{"sku":"X","quantity":2}'
        assert request["headers"][b"content-length"] == b"24"
        assert request["headers"][b"host"] == f"127.0.0.1:{server.port}".encode()  # once, from the client
        assert request["headers"][b"x-trace"] == b"t"


async def test_httpx_streams_both_ways():
    async with Server(chunked_answer(20)) as server:
        async with httpx.AsyncClient(transport=Http1Transport()) as c:
            async with c.stream("PUT", f"http://127.0.0.1:{server.port}/up", content=upload(10)) as r:
                sizes = [len(chunk) async for chunk in r.aiter_raw()]
        assert sum(sizes) == 2_000_000 and len(sizes) > 1
        assert len(server.requests[0]["body"]) == 500_000


async def test_httpx_read_timeout_is_a_read_timeout_naming_the_request():
    async def silent(_request: dict, _writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(5)
        return False

    async with Server(silent) as server:
        async with httpx.AsyncClient(transport=Http1Transport(), timeout=httpx.Timeout(0.2, connect=1)) as c:
            with pytest.raises(httpx.ReadTimeout) as caught:
                await c.get(f"http://127.0.0.1:{server.port}/slow")
        assert str(caught.value.request.url).endswith("/slow")



async def test_a_refused_connection_is_a_connect_error_not_a_timeout():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        transport = Http1Transport()
        request = httpx.Request("GET", f"http://127.0.0.1:{port}/")
        with pytest.raises(httpx.ConnectError) as caught:
            await transport.handle_async_request(request)
        assert caught.value.request is request
        await transport.aclose()


async def test_a_malformed_response_is_a_protocol_error():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def answer_garbage() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        conn.sendall(b"NOT HTTP\r\n\r\n")
        conn.close()

    threading.Thread(target=answer_garbage, daemon=True).start()
    transport = Http1Transport()
    try:
        with pytest.raises(httpx.RemoteProtocolError):
            await transport.handle_async_request(httpx.Request("GET", f"http://127.0.0.1:{server.getsockname()[1]}/"))
    finally:
        await transport.aclose()
        server.close()
