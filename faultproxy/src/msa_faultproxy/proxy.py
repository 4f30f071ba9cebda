"""The proxy itself: listen on one address, and for every client connection open one to the upstream and pump bytes
both ways through the active toxics.

    client ──▶ [listen] ──upstream link──▶ toxics(upstream) ──▶ [upstream server]
    client ◀── [listen] ◀─downstream link─ toxics(downstream) ◀── [upstream server]

Each link is a reader task (stamps every chunk with the time it arrived and queues it) and a writer task (runs the
chunk through the toxics of its stream, then writes it out). Toxics are looked up for every chunk, so adding or
removing one changes live connections at once.

A disabled proxy ("down") closes every connection it carries — that is how a client notices its server went away —
and closes new ones as soon as they arrive, until it is enabled again. It keeps its listening port meanwhile, so
nothing else can take it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
from typing import Any

from .toxics import Toxic, parse_toxic

__all__ = ["Connection", "Proxies", "Proxy", "ProxyError", "parse_address"]

log = logging.getLogger("msa_faultproxy")

CHUNK = 64 * 1024
QUEUED_CHUNKS = 16  # per link: how far the reader may run ahead of a slowed-down writer (back-pressure beyond)
CONNECT_TIMEOUT_S = 5.0


class ProxyError(Exception):
    """An API-level failure: `status` is the HTTP status to answer with, str(error) the message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def parse_address(value: Any, field: str) -> tuple[str, int]:
    """'host:port' (or '[v6]:port') → (host, port)."""
    if not isinstance(value, str) or ":" not in value:
        raise ProxyError(f"{field} must be 'host:port', not {value!r}")
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ProxyError(f"{field} must be 'host:port', not {value!r}")
    return host, int(port)


class Proxy:
    def __init__(self, name: str, listen: str, upstream: str, enabled: bool = True):
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.enabled = enabled
        self.toxics: dict[str, Toxic] = {}  # in the order added: the order chunks pass through them
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None
        parse_address(listen, "listen")  # refuse a bad address before anything starts
        parse_address(upstream, "upstream")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": [t.to_json() for t in self.toxics.values()],
        }

    # ---- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        host, port = parse_address(self.listen, "listen")
        try:
            self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        except OSError as exc:
            raise ProxyError(f"cannot listen on {self.listen}: {exc.strerror or exc}", 409) from None
        if port == 0:  # as in Toxiproxy: the response shows the port the OS picked
            self.listen = f"{host}:{self._server.sockets[0].getsockname()[1]}"
        log.info("proxy %s listening on %s → %s%s", self.name, self.listen, self.upstream,
                 "" if self.enabled else " (disabled)")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.close_connections()

    def close_connections(self, *, reset: bool = False) -> int:
        live = list(self.connections)
        for conn in live:
            conn.close(reset=reset)
        return len(live)

    def set_enabled(self, enabled: bool) -> None:
        if enabled == self.enabled:
            return
        self.enabled = enabled
        if enabled:
            log.info("proxy %s enabled", self.name)
        else:
            log.info("proxy %s disabled: closed %d connection(s)", self.name, self.close_connections())

    # ---- toxics ----------------------------------------------------------------------------------------------

    def add_toxic(self, body: Any) -> Toxic:
        toxic = parse_toxic(body)
        if toxic.name in self.toxics:
            raise ProxyError(f"toxic {toxic.name!r} already exists on proxy {self.name!r}", 409)
        self.toxics[toxic.name] = toxic
        for conn in self.connections:
            conn.toxic_added(toxic)
        log.info("proxy %s: + toxic %s %s", self.name, toxic.name, toxic.to_json())
        return toxic

    def toxic(self, name: str) -> Toxic:
        try:
            return self.toxics[name]
        except KeyError:
            raise ProxyError(f"toxic {name!r} not found on proxy {self.name!r}", 404) from None

    def update_toxic(self, name: str, body: Any) -> Toxic:
        old = self.toxic(name)
        new = parse_toxic(body, existing=old)
        for conn in self.connections:
            conn.toxic_removed(old)
        self.toxics[name] = new  # same place in the chain
        for conn in self.connections:
            conn.toxic_added(new)
        log.info("proxy %s: ~ toxic %s %s", self.name, name, new.to_json())
        return new

    def remove_toxic(self, name: str) -> None:
        toxic = self.toxic(name)
        del self.toxics[name]
        for conn in self.connections:
            conn.toxic_removed(toxic)
        log.info("proxy %s: - toxic %s", self.name, name)

    # ---- one client connection -------------------------------------------------------------------------------

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if not self.enabled:
            client_writer.transport.abort()  # down: accepted, and closed at once
            return
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(
                asyncio.open_connection(*parse_address(self.upstream, "upstream")), CONNECT_TIMEOUT_S
            )
        except (OSError, asyncio.TimeoutError) as exc:
            log.warning("proxy %s: upstream %s unreachable (%s); closing the client", self.name, self.upstream,
                        exc.__class__.__name__)
            client_writer.transport.abort()
            return
        if not self.enabled:  # disabled while we were connecting
            client_writer.transport.abort()
            upstream_writer.transport.abort()
            return
        conn = Connection(self, client_reader, client_writer, upstream_reader, upstream_writer)
        self.connections.add(conn)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)


class Connection:
    """One client connection and its upstream connection, with the two links between them."""

    def __init__(self, proxy: Proxy, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
                 upstream_reader: asyncio.StreamReader, upstream_writer: asyncio.StreamWriter):
        self.proxy = proxy
        self.links = (
            _Link(self, "upstream", client_reader, upstream_writer),
            _Link(self, "downstream", upstream_reader, client_writer),
        )
        self._writers = (client_writer, upstream_writer)
        self._affected: dict[Toxic, bool] = {}  # toxicity, rolled once per toxic
        self._toxic_tasks: dict[Toxic, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.closed = False

    def toxics(self, stream: str) -> list[Toxic]:
        return [t for t in self.proxy.toxics.values() if t.stream == stream and self._affects(t)]

    def _affects(self, toxic: Toxic) -> bool:
        if toxic not in self._affected:
            self._affected[toxic] = toxic.toxicity >= 1.0 or random.random() < toxic.toxicity
        return self._affected[toxic]

    def toxic_added(self, toxic: Toxic) -> None:
        if self._affects(toxic) and not self.closed:
            self._toxic_tasks[toxic] = asyncio.create_task(toxic.start(self))

    def toxic_removed(self, toxic: Toxic) -> None:
        task = self._toxic_tasks.pop(toxic, None)
        if task is not None:
            task.cancel()
        self._affected.pop(toxic, None)

    async def run(self) -> None:
        for toxic in list(self.proxy.toxics.values()):
            self.toxic_added(toxic)
        for link in self.links:
            self._tasks += [asyncio.create_task(link.read()), asyncio.create_task(link.write())]
        try:
            # Done when both directions have delivered their EOF, or when close() cancelled them.
            await asyncio.wait(self._tasks[1::2])  # the two writers
        finally:
            self._close(forced=False)

    def close(self, *, reset: bool = False) -> None:
        """Close both sides now, dropping whatever is still queued; with reset=True as a TCP RST."""
        self._close(forced=True, reset=reset)

    def _close(self, *, forced: bool, reset: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        me = asyncio.current_task()
        for task in [*self._tasks, *self._toxic_tasks.values()]:
            if task is not me:
                task.cancel()
        for writer in self._writers:
            if reset:
                sock = writer.get_extra_info("socket")
                with contextlib.suppress(OSError, AttributeError):
                    # Linger on, timeout 0: close() sends RST instead of FIN.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if forced:
                writer.transport.abort()
            else:
                writer.close()


class _Link:
    """One direction of a connection: read from one side, run each chunk through the toxics, write to the other."""

    def __init__(self, conn: Connection, stream: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.conn = conn
        self.stream = stream
        self.reader = reader
        self.writer = writer
        self.queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(QUEUED_CHUNKS)
        self.state: dict[Toxic, dict[str, Any]] = {}  # each toxic's scratch space on this link

    async def read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await self.reader.read(CHUNK):
                await self.queue.put((loop.time(), data))
        except OSError:  # reset by the peer: nothing more will flow either way
            self.conn.close()
            return
        await self.queue.put(None)  # EOF: deliver what is queued, then pass the EOF on

    async def write(self) -> None:
        try:
            while (item := await self.queue.get()) is not None:
                arrived, data = item
                await self._through(self.conn.toxics(self.stream), data, arrived)
            if self.writer.can_write_eof():
                self.writer.write_eof()  # half-close, as the sender did
        except OSError:
            self.conn.close()

    async def _through(self, toxics: list[Toxic], data: bytes, arrived: float) -> None:
        """Hand the chunk to the first toxic, which hands what it lets through to the rest, ... then out."""
        if not toxics:
            self.writer.write(data)
            await self.writer.drain()
            return
        first, rest = toxics[0], toxics[1:]
        state = self.state.setdefault(first, {})
        await first.pipe(data, arrived, state, lambda piece: self._through(rest, piece, arrived))


class Proxies:
    """Every proxy of this process, by name: what the HTTP API manages."""

    def __init__(self) -> None:
        self._proxies: dict[str, Proxy] = {}

    def __iter__(self):
        return iter(list(self._proxies.values()))

    def get(self, name: str) -> Proxy:
        try:
            return self._proxies[name]
        except KeyError:
            raise ProxyError(f"proxy {name!r} not found", 404) from None

    async def create(self, body: Any) -> Proxy:
        if not isinstance(body, dict):
            raise ProxyError("a proxy is a JSON object: {name, listen, upstream, enabled}")
        name = body.get("name")
        if not isinstance(name, str) or not name or "/" in name:
            raise ProxyError(f"name must be a non-empty string without '/', not {name!r}")
        if name in self._proxies:
            raise ProxyError(f"proxy {name!r} already exists", 409)
        enabled = body.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ProxyError(f"enabled must be true or false, not {enabled!r}")
        proxy = Proxy(name, body.get("listen"), body.get("upstream"), enabled)
        await proxy.start()
        self._proxies[name] = proxy
        return proxy

    async def update(self, name: str, body: Any) -> Proxy:
        proxy = self.get(name)
        if not isinstance(body, dict):
            raise ProxyError("expected a JSON object with any of: enabled, listen, upstream")
        enabled = body.get("enabled", proxy.enabled)
        if not isinstance(enabled, bool):
            raise ProxyError(f"enabled must be true or false, not {enabled!r}")
        listen, upstream = body.get("listen", proxy.listen), body.get("upstream", proxy.upstream)
        parse_address(listen, "listen")
        parse_address(upstream, "upstream")
        if upstream != proxy.upstream:
            proxy.upstream = upstream
            proxy.close_connections()  # as in Toxiproxy: changing an address drops the connections
        if listen != proxy.listen:
            old = proxy.listen
            await proxy.stop()
            proxy.listen = listen
            try:
                await proxy.start()
            except ProxyError:
                proxy.listen = old
                await proxy.start()
                raise
        proxy.set_enabled(enabled)
        return proxy

    async def delete(self, name: str) -> None:
        proxy = self.get(name)
        del self._proxies[name]
        await proxy.stop()
        log.info("proxy %s deleted", name)

    async def populate(self, body: Any) -> list[Proxy]:
        """Create each proxy of a list, replacing a same-named one whose listen or upstream differ."""
        if not isinstance(body, list):
            raise ProxyError("populate takes a JSON array of proxies")
        out = []
        for item in body:
            current = self._proxies.get(item.get("name")) if isinstance(item, dict) else None
            if current and (current.listen, current.upstream) == (item.get("listen"), item.get("upstream")):
                current.set_enabled(item.get("enabled", True) is not False)
                out.append(current)
                continue
            if current:
                await self.delete(current.name)
            out.append(await self.create(item))
        return out

    def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        for proxy in self:
            for name in list(proxy.toxics):
                proxy.remove_toxic(name)
            proxy.set_enabled(True)

    async def close(self) -> None:
        for proxy in self:
            await proxy.stop()
            log.info("proxy %s closed", proxy.name)
        self._proxies.clear()

