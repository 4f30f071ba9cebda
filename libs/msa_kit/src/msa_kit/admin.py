"""The admin API every process shares: who may call it, and what it shows of the configuration."""

from __future__ import annotations

import hmac
import os
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Request

from pydantic import ValidationError

from .faults import HttpFault
from .platform import Platform

# Environment variables that override configuration (12-factor); shown by name, never by value.
_NOT_SETTINGS = {"HOST", "PORT", "INSTANCE_ID", "CONSUL_HTTP_ADDR", "CONFIG_SERVER_URL", "AMQP_URL", "MSA_VAR_DIR",
                 "MSA_NAMESPACE", "MSA_PROFILE", "MSA_RUN_ID", "DATABASE_URL"}


def admin_denied(platform: Platform, authorization: str | None) -> tuple[int, str] | None:
    """None when the caller presented the admin token; else the status and reason to answer with."""
    expected = platform.settings.admin.token.get_secret_value()
    if not expected:
        return 403, "the admin API is disabled: no admin.token is configured"
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
        return 401, "the admin API needs `Authorization: Bearer <admin token>`"
    return None


def config_document(platform: Platform) -> dict[str, Any]:
    env_overrides = sorted(k for k in os.environ if "__" in k and k.split("__")[0].lower() in
                           type(platform.settings).model_fields and k not in _NOT_SETTINGS)
    return {
        "application": platform.rt.service, "instance": platform.rt.instance_id, "profile": platform.rt.profile,
        "version": platform.config.version, "source": platform.config.source, "refreshes": platform.refreshes,
        "overridden_by_environment": env_overrides,
        "settings": platform.settings.model_dump(mode="json"),  # SecretStr values come out masked
    }


async def _require_admin(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    denied = admin_denied(request.app.state.platform, authorization)
    if denied:
        raise HTTPException(denied[0], denied[1])


AdminOnly = Depends(_require_admin)


# The admin operations, shared by the services' FastAPI apps and the gateway's Starlette one.

def faults_document(platform: Platform) -> dict[str, Any]:
    return {"instance": platform.rt.instance_id, "faults": [f.model_dump() for f in platform.faults.active()]}


def add_fault(platform: Platform, body: Any) -> tuple[int, dict[str, Any]]:
    """201 and the fault, or 422 and a problem naming the field."""
    try:
        fault = HttpFault.model_validate(body)
    except ValidationError as exc:
        errors = [{"field": ".".join(map(str, e["loc"])) or "body", "message": e["msg"]} for e in exc.errors()]
        return 422, {"title": "Invalid fault", "detail": "; ".join(f"{e['field']}: {e['message']}" for e in errors),
                     "errors": errors}
    return 201, platform.faults.add(fault).model_dump()
