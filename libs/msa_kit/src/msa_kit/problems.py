"""RFC 9457 problem details: the one shape every error of the sandbox takes, gateway and services alike."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

PROBLEM_JSON = "application/problem+json"


def problem(
    status: int,
    title: str,
    detail: str = "",
    *,
    type_: str = "about:blank",
    instance: str = "",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body: dict[str, Any] = {"type": type_, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    body.update(extra)
    return Response(json.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)
