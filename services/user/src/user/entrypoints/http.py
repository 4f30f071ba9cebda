"""The user service's HTTP API (public through the gateway as /api/users and /api/auth/token)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Callable, Literal

from fastapi import APIRouter, Form, HTTPException, Request
from pydantic import BaseModel, Field

from msa_kit.admin import AdminOnly
from msa_kit.app import Provided
from msa_kit.identity import CurrentCaller
from msa_kit.problems import problem

from ..adapters.tokens import TokenIssuer
from ..domain.model import InvalidSignUp, UsernameTaken
from ..domain.throttle import LoginThrottle, LoginThrottled, WrongCredentials
from ..service_layer import handlers
from ..service_layer.unit_of_work import UserUnitsOfWork

router = APIRouter(tags=["users"])


@dataclass(frozen=True)
class Adapters:
    """What the routes use, built once by bootstrap.py."""

    uows: UserUnitsOfWork
    tokens: TokenIssuer
    admins: frozenset[str]  # usernames whose tokens carry the admin role
    throttle: Callable[[], LoginThrottle]  # from the settings of the moment: a refresh applies to the next login


Wired = Annotated[Adapters, Provided(Adapters)]


class SignUp(BaseModel):
    username: str = Field(min_length=3, max_length=32, pattern=r"^[a-zA-Z0-9_.-]+$")
    password: str = Field(min_length=8, max_length=200)


class UserOut(BaseModel):
    id: str
    username: str


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


@router.post("/users", status_code=201, response_model=UserOut)
async def sign_up(body: SignUp, adapters: Wired):
    try:
        user = await handlers.sign_up(adapters.uows, body.username, body.password)
    except InvalidSignUp as exc:
        return problem(422, "Invalid request", f"{exc.field}: {exc}", instance="/users",
                       errors=[{"field": exc.field, "message": str(exc)}])
    except UsernameTaken:
        raise HTTPException(409, f"username {body.username!r} is taken") from None
    return {"id": user.id, "username": user.username}


def client_address(request: Request) -> str:
    """The caller's address: the last X-Forwarded-For entry is the one the gateway added (it drops what a client
    claims there); without one, the peer. A caller bypassing the gateway can claim any address, but not any
    account: the per-account throttle holds whatever it claims."""
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        return forwarded.rsplit(",", 1)[-1].strip()
    return request.client.host if request.client else "unknown"


@router.post("/auth/token", response_model=TokenOut, responses={401: {}, 429: {}})
async def token(request: Request, adapters: Wired, username: Annotated[str, Form(max_length=200)],
                password: Annotated[str, Form(max_length=200)]):
    """OAuth2 password grant: form fields `username` and `password`. Failed logins lock the account (after 5) and
    the client address (after 50) for 1 s, then twice as long each time: 429 with Retry-After."""
    try:
        user = await handlers.log_in(adapters.uows, adapters.throttle(), username, password, client_address(request))
    except WrongCredentials:
        return problem(401, "Unauthorized", "wrong username or password", instance="/auth/token",
                       headers={"WWW-Authenticate": "Bearer"})
    except LoginThrottled as exc:
        return problem(429, "Too many failed logins", f"{exc}", instance="/auth/token",
                       headers={"Retry-After": str(exc.retry_after_s)}, retry_after_s=exc.retry_after_s)
    roles = ["admin"] if user.username in adapters.admins else ["user"]
    return {"access_token": adapters.tokens.issue(user.id, user.username, roles), "expires_in": adapters.tokens.ttl_s}


class LoginLockOut(BaseModel):
    kind: Literal["account", "client"]
    value: str
    failures: int
    locked: bool
    retry_after_s: int


@router.get("/admin/login-locks", response_model=list[LoginLockOut], dependencies=[AdminOnly], tags=["admin"])
async def login_locks(adapters: Wired):
    """Every account and client address with failed logins still counted, and whether it is locked now."""
    records = await handlers.login_failures(adapters.uows)
    now = time.time()
    return [{"kind": r.kind, "value": r.key.partition(":")[2], "failures": r.failures,
             "locked": r.retry_after_s(now) > 0, "retry_after_s": int(-(-r.retry_after_s(now) // 1))}
            for r in records]


@router.delete("/admin/login-locks", dependencies=[AdminOnly], tags=["admin"], response_model=None)
async def clear_login_locks(adapters: Wired, kind: Literal["account", "client"] | None = None,
                            value: str | None = None):
    """Forget failed logins: of one key (`?kind=account&value=alice`), or all of them."""
    if (kind is None) != (value is None):
        return problem(422, "Invalid request", "kind, value: give both, or neither to clear every lock",
                       instance="/admin/login-locks", errors=[{"field": "kind" if kind is None else "value",
                                                               "message": "give both kind and value, or neither"}])
    cleared = await handlers.clear_login_failures(adapters.uows, f"{kind}:{value}" if kind else None)
    return {"cleared": cleared}


@router.get("/users/me", response_model=UserOut)
async def me(caller: CurrentCaller, adapters: Wired):
    return await get_user(caller.user_id, adapters)


class OrderLineOut(BaseModel):
    sku: str
    quantity: int
    unit_price_cents: int


class OrderSummaryOut(BaseModel):
    order_id: str
    status: str
    lines: list[OrderLineOut]
    total_cents: int
    confirmed_at: float


@router.get("/users/me/orders", response_model=list[OrderSummaryOut])
async def my_orders(caller: CurrentCaller, adapters: Wired):
    """The caller's confirmed orders, from this service's own read model (eventually consistent)."""
    return await handlers.order_history(adapters.uows, caller.user_id)


@router.get("/internal/users/{user_id}", response_model=UserOut, tags=["internal"])
async def get_user(user_id: str, adapters: Wired):
    user = await handlers.user_of(adapters.uows, user_id)
    if user is None:
        raise HTTPException(404, f"no user {user_id}")
    return {"id": user.id, "username": user.username}


@router.get("/.well-known/jwks.json", tags=["auth"])
async def jwks(adapters: Wired) -> dict:
    return adapters.tokens.jwks
