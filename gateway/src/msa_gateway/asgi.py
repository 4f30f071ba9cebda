"""One request as the proxy sees it (`Exchange`, over ASGI's scope/receive/send), and the problem+json bodies it
answers with.

The proxy reads the request and answers through an `Exchange`, not ASGI's messages: headers stay the byte pairs
the server parsed (ASGI's own), and answering is `respond` (a whole answer) or `start`, `write`… `end` (a stream).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from starlette.types import Receive, Scope, Send

from msa_kit.problems import PROBLEM_JSON

Headers = list[tuple[bytes, bytes]]

TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "No route", 405: "Method not allowed",
          413: "Payload too large", 429: "Too many requests", 500: "Internal error", 502: "Bad gateway",
          503: "Service unavailable", 504: "Upstream timed out"}


class ClientDisconnected(ConnectionError):
    """The client went away while its answer was being written: nobody is left to answer."""


class Exchange:
    """A request (head parsed, body still to come) and the one answer it gets, over ASGI (granian, the workshop's
    fault injection, httpx.ASGITransport in the unit tests).

    Header names are lower-cased. `respond` sends a whole answer; `start`, `write`… `end` stream one. With
    `has_length` the headers carry the Content-Length already (a HEAD answer carries the GET's). `receive` returns
    the next piece of the body and whether more follows; it raises httpx.ReadError when the client disconnects."""

    __slots__ = ("method", "path", "raw_path", "query", "headers", "client_ip", "scheme", "_receive", "_send",
                 "_gone")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]  # percent-decoded
        self.raw_path: bytes = scope.get("raw_path") or self.path.encode()
        self.query: bytes = scope.get("query_string", b"")
        self.headers: Headers = scope["headers"]
        client = scope.get("client")
        self.client_ip: str = client[0] if client else ""
        self.scheme: str = scope.get("scheme", "http")
        self._receive, self._send = receive, send
        self._gone: asyncio.Task[None] | None = None  # while an answer streams: done when the client has left

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
        # An ASGI server drops what is sent after the client went away; it says so on `receive` (the body has been
        # read by now). Watching for it stops a long answer from being read upstream for nobody.
        self._gone = asyncio.ensure_future(self._disconnected())

    async def _disconnected(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass

    async def write(self, chunk: bytes) -> None:
        if self._gone is not None and self._gone.done():
            raise ClientDisconnected("the client disconnected")
        try:
            await self._send({"type": "http.response.body", "body": chunk, "more_body": True})
        except OSError as exc:  # ASGI: a server may raise instead, for a send after the client went away
            raise ClientDisconnected("the client disconnected") from exc

    async def end(self) -> None:
        await self._send({"type": "http.response.body", "body": b""})
        self.close()

    def close(self) -> None:
        """Stop watching for the client's disconnect (a stream that ended, or broke off)."""
        if self._gone is not None:
            self._gone.cancel()


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
