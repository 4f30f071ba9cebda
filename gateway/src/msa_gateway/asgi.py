"""One request as the proxy sees it (`Exchange`), and the problem+json bodies it answers with.

The proxy talks to an `Exchange`, not to ASGI: the gateway's own server (server.py) implements it straight on the
connection — header bytes as parsed, a whole answer in one write — and `AsgiExchange` implements it over ASGI's
scope/receive/send, for ASGI servers and middleware (the workshop's fault injection, the unit tests' in-process
client).
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import httpx
from starlette.types import Receive, Scope, Send

from msa_kit.problems import PROBLEM_JSON

Headers = list[tuple[bytes, bytes]]

TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "No route", 405: "Method not allowed",
          413: "Payload too large", 429: "Too many requests", 500: "Internal error", 502: "Bad gateway",
          503: "Service unavailable", 504: "Upstream timed out"}


class ClientDisconnected(ConnectionError):
    """The client went away while its answer was being written: nobody is left to answer."""


class Exchange(Protocol):
    """A request (head parsed, body still to come) and the one answer it gets.

    Header names are lower-cased. `respond` sends a whole answer; `start`, `write`… `end` stream one. With
    `has_length` the headers carry the Content-Length already (a HEAD answer carries the GET's); otherwise the
    exchange frames the body itself. `receive` raises httpx.ReadError when the client disconnects mid-body."""

    method: str
    path: str  # percent-decoded
    raw_path: bytes
    query: bytes
    headers: Headers
    client_ip: str
    scheme: str

    async def receive(self) -> tuple[bytes, bool]: ...  # the next piece of the body, and whether more follows

    async def respond(self, status: int, headers: Headers, body: bytes, has_length: bool = False) -> None: ...

    async def start(self, status: int, headers: Headers, has_length: bool) -> None: ...

    async def write(self, chunk: bytes) -> None: ...  # raises ClientDisconnected when nobody reads any more

    async def end(self) -> None: ...


class AsgiExchange:
    """An Exchange over ASGI (what uvicorn, httpx.ASGITransport and ASGI middleware speak)."""

    __slots__ = ("method", "path", "raw_path", "query", "headers", "client_ip", "scheme", "_receive", "_send")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.raw_path: bytes = scope.get("raw_path") or self.path.encode()
        self.query: bytes = scope.get("query_string", b"")
        self.headers: Headers = scope["headers"]
        client = scope.get("client")
        self.client_ip: str = client[0] if client else ""
        self.scheme: str = scope.get("scheme", "http")
        self._receive, self._send = receive, send

    async def receive(self) -> tuple[bytes, bool]:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            raise httpx.ReadError("client disconnected")
        return message.get("body", b""), message.get("more_body", False)

    async def respond(self, status: int, headers: Headers, body: bytes, has_length: bool = False) -> None:
        if not has_length and status not in (204, 304) and self.method != "HEAD":
            headers.append((b"content-length", str(len(body)).encode()))
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})

    async def start(self, status: int, headers: Headers, has_length: bool) -> None:
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def write(self, chunk: bytes) -> None:
        await self._send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def end(self) -> None:
        await self._send({"type": "http.response.body", "body": b""})


def problem_body(status: int, detail: str, instance: str, trace_id: str, title: str = "", **extra: Any) -> bytes:
    """RFC 9457, the same shape as msa_kit.problems.problem, with the trace id to look the failure up by."""
    body: dict[str, Any] = {"type": "about:blank", "title": title or TITLES.get(status, "Error"), "status": status,
                            "detail": detail, "instance": instance}
    if trace_id:
        body["trace_id"] = trace_id
    body.update(extra)
    return json.dumps(body).encode()


PROBLEM_CONTENT_TYPE = (b"content-type", PROBLEM_JSON.encode())


async def send_problem(ex: Exchange, status: int, detail: str, instance: str, trace_id: str, headers: Headers,
                       title: str = "") -> None:
    headers.append(PROBLEM_CONTENT_TYPE)
    await ex.respond(status, headers, problem_body(status, detail, instance, trace_id, title))
