"""Request bodies: the size an instance accepts, refused before the body is read (a 20 MB body must cost the
process nothing). Pure ASGI, so the config server uses it too; discovery keeps its own, which answers in plain text
as Consul does."""

from __future__ import annotations

import asyncio
from typing import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .problems import problem


class BodyLimit:
    """413 problem+json for a request body over `limit()` bytes, before it is read: by its Content-Length, or, for
    a body without one (chunked), by reading it up to the limit here. A body must also arrive whole within
    `timeout_s()` (slow-loris: a byte a second would hold the request, and a database connection behind it, for
    as long as the client likes): 408 problem+json and the connection closed. What was read is handed on whole —
    the app would read it whole anyway."""

    def __init__(self, app: ASGIApp, limit: Callable[[], int], timeout_s: Callable[[], float] = lambda: 10.0) -> None:
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, length, chunked = self.limit(), None, False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = int(value) if value.isdigit() else None
            elif name == b"transfer-encoding":
                chunked = True
        if length is not None and length > limit:
            return await self._refuse(scope, receive, send, 413, "Payload too large",
                                      f"body: bodies are limited to {limit} bytes")
        if not length and not chunked:
            return await self.app(scope, receive, send)
        timeout_s = self.timeout_s()
        chunks: list[bytes] = []
        seen, more = 0, True
        try:
            async with asyncio.timeout(timeout_s):
                while more:
                    message = await receive()
                    if message["type"] != "http.request":  # the client went away
                        return
                    chunk = message.get("body", b"")
                    seen += len(chunk)
                    more = message.get("more_body", False)
                    if seen > limit:
                        return await self._refuse(scope, receive, send, 413, "Payload too large",
                                                  f"body: bodies are limited to {limit} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            return await self._refuse(scope, receive, send, 408, "Request timeout",
                                      f"body: not received whole within {timeout_s:g} s")
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, title: str, detail: str) -> None:
        # Connection: close — the rest of the body is not read, so nothing after it on the connection could be
        # told apart from it (uvicorn closes when the answer says so).
        await problem(status, title, detail, instance=scope["path"],
                      headers={"Connection": "close"})(scope, receive, send)
