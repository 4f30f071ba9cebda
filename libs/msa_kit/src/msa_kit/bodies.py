"""Request bodies: the size an instance accepts, refused before the body is read (a 20 MB body must cost the
process nothing). Pure ASGI, so the config server uses it too; discovery keeps its own, which answers in plain text
as Consul does."""

from __future__ import annotations

from typing import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .problems import problem


class BodyLimit:
    """413 problem+json for a request body over `limit()` bytes, before it is read: by its Content-Length, or, for
    a body without one (chunked), by reading it up to the limit here — the app would read it whole anyway — and
    handing what was read on. A body within its Content-Length passes untouched (the server enforces the framing)."""

    def __init__(self, app: ASGIApp, limit: Callable[[], int]) -> None:
        self.app, self.limit = app, limit

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
            return await self._refuse(scope, receive, send, limit)
        if length is not None or not chunked:
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                return await self._refuse(scope, receive, send, limit)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        await problem(413, "Payload too large", f"body: bodies are limited to {limit} bytes",
                      instance=scope["path"])(scope, receive, send)
