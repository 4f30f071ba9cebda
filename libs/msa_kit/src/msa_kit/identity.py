"""Who is calling: the gateway verified the token and says so in headers it alone sets (it strips any a client
sends), so services behind it need no token logic of their own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, HTTPException

USER_ID_HEADER = "X-User-Id"
USER_NAME_HEADER = "X-User-Name"
IDENTITY_HEADERS = (USER_ID_HEADER, USER_NAME_HEADER, "X-User-Roles")


@dataclass(frozen=True)
class Caller:
    user_id: str
    username: str


# async, though it awaits nothing: FastAPI runs a plain `def` dependency in a worker thread, a thread hand-over on
# every request.
async def _caller(x_user_id: Annotated[str | None, Header()] = None,
            x_user_name: Annotated[str | None, Header()] = None) -> Caller:
    if not x_user_id:
        raise HTTPException(401, "no authenticated caller (call through the gateway with a bearer token)")
    return Caller(x_user_id, x_user_name or "")


CurrentCaller = Annotated[Caller, Depends(_caller)]
