"""Who may break things: the console's chaos and load controls answer only an operator — the admin token (what
`msa chaos` uses) or the JWT of a user with the `admin` role (config-repo/user.yml `admins`), verified against the
user service's keys like the gateway does. Anyone else gets 401 (no or a bad credential) or 403 (a user who is not
an admin), as problem+json; nothing is ever done anonymously."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

import httpx
from fastapi import Depends, Header, HTTPException, Request

from msa_kit.resilience import ServiceUnavailable
from msa_kit.tokens import InvalidToken, JwksVerifier

ADMIN_ROLE = "admin"
NEEDS = "needs an operator: `Authorization: Bearer <the admin token, or an admin user's token>`"


@dataclass(frozen=True)
class Operator:
    name: str  # "admin token", or the user's name
    via: str  # token | jwt


async def operator(request: Request, authorization: Annotated[str | None, Header()] = None) -> Operator:
    scheme, _, credential = (authorization or "").partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise HTTPException(401, NEEDS, headers={"WWW-Authenticate": "Bearer"})
    expected = request.app.state.platform.settings.admin.token.get_secret_value()
    if expected and hmac.compare_digest(credential.encode(), expected.encode()):
        return Operator("admin token", "token")
    if credential.count(".") != 2:  # not a JWT, and not the admin token either
        raise HTTPException(401, f"not the admin token, nor a user's token; {NEEDS}",
                            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    verifier: JwksVerifier = request.app.state.verifier
    try:
        claims = await verifier.verify(credential)
    except InvalidToken as exc:
        raise HTTPException(401, f"invalid token: {exc}",
                            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
    except (ServiceUnavailable, httpx.HTTPError, ValueError) as exc:
        raise HTTPException(503, f"cannot fetch the user service's signing keys: {exc}") from None
    if ADMIN_ROLE not in claims.get("roles", []):
        raise HTTPException(403, f"user {claims.get('name') or claims['sub']} is not an admin (role `admin`)")
    return Operator(str(claims.get("name") or claims["sub"]), "jwt")


OperatorOnly = Annotated[Operator, Depends(operator)]
