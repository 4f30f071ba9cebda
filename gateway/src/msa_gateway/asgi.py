"""Raw ASGI helpers for the proxy path: responses written as header lists and bytes, no Response objects."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Send

from msa_kit.problems import PROBLEM_JSON

Headers = list[tuple[bytes, bytes]]

TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "No route", 405: "Method not allowed",
          413: "Payload too large", 429: "Too many requests", 502: "Bad gateway", 503: "Service unavailable",
          504: "Upstream timed out"}


def problem_body(status: int, detail: str, instance: str, trace_id: str, title: str = "", **extra: Any) -> bytes:
    """RFC 9457, the same shape as msa_kit.problems.problem, with the trace id to look the failure up by."""
    body: dict[str, Any] = {"type": "about:blank", "title": title or TITLES.get(status, "Error"), "status": status,
                            "detail": detail, "instance": instance}
    if trace_id:
        body["trace_id"] = trace_id
    body.update(extra)
    return json.dumps(body).encode()


async def send_bytes(send: Send, status: int, body: bytes, headers: Headers) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_problem(send: Send, status: int, detail: str, instance: str, trace_id: str, headers: Headers,
                       title: str = "") -> None:
    headers.append((b"content-type", PROBLEM_JSON.encode()))
    await send_bytes(send, status, problem_body(status, detail, instance, trace_id, title), headers)
