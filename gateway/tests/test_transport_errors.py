"""The kit's aiohttp transport reports failures as what they are (see msa_kit.resilience.AiohttpTransport): the
gateway's 502/503/504 depend on it."""

import socket
import threading

import httpx
import pytest

from msa_kit.resilience import AiohttpTransport


async def test_a_refused_connection_is_a_connect_error_not_a_timeout():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        transport = AiohttpTransport()
        with pytest.raises(httpx.ConnectError):
            await transport.handle_async_request(httpx.Request("GET", f"http://127.0.0.1:{port}/"))
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
    transport = AiohttpTransport()
    try:
        with pytest.raises(httpx.RemoteProtocolError):
            await transport.handle_async_request(httpx.Request("GET", f"http://127.0.0.1:{server.getsockname()[1]}/"))
    finally:
        await transport.aclose()
        server.close()
