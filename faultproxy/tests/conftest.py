"""In-process fixtures: a tiny echo server, the proxy registry in front of it, and the control API's client over
ASGI (no HTTP port needed). Everything listens on ports the OS picks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from msa_faultproxy.api import create_app
from msa_faultproxy.client import FaultProxyClient
from msa_faultproxy.proxy import Proxies


@dataclass
class Echo:
    port: int
    connections: int = 0


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    """Echoes every byte back; half-closes when the client does."""
    state = Echo(port=0)
    handlers: set[asyncio.Task] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        handlers.add(asyncio.current_task())
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        for task in handlers:
            task.cancel()


@pytest.fixture
async def proxies() -> AsyncIterator[Proxies]:
    registry = Proxies()
    try:
        yield registry
    finally:
        await registry.close()


@pytest.fixture
async def fp(proxies: Proxies) -> AsyncIterator[FaultProxyClient]:
    transport = httpx.ASGITransport(app=create_app(proxies))
    async with FaultProxyClient("http://faultproxy", transport=transport) as client:
        yield client


@pytest.fixture
async def echo_proxy(fp: FaultProxyClient, echo: Echo) -> int:
    """A proxy named "echo" in front of the echo server; returns its listening port."""
    created = await fp.create_proxy("echo", "127.0.0.1:0", f"127.0.0.1:{echo.port}")
    return int(created["listen"].rsplit(":", 1)[1])


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.transport.abort()


@pytest.fixture
def connect():
    return connection
