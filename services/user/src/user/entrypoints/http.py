"""The user service's HTTP API (public through the gateway as /api/users and /api/auth/token)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from pydantic import BaseModel, Field

from msa_kit.identity import CurrentCaller
from msa_kit.problems import problem

from ..domain.model import InvalidSignUp, UsernameTaken
from ..service_layer import services

router = APIRouter(tags=["users"])


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
async def sign_up(body: SignUp, request: Request):
    try:
        async with request.app.state.platform.uow() as uow:
            user = await services.sign_up(uow, body.username, body.password)
    except InvalidSignUp as exc:
        return problem(422, "Invalid request", f"{exc.field}: {exc}", instance="/users",
                       errors=[{"field": exc.field, "message": str(exc)}])
    except UsernameTaken:
        raise HTTPException(409, f"username {body.username!r} is taken") from None
    return {"id": user.id, "username": user.username}


@router.post("/auth/token", response_model=TokenOut)
async def token(request: Request, username: Annotated[str, Form()], password: Annotated[str, Form()]):
    """OAuth2 password grant: form fields `username` and `password`."""
    async with request.app.state.platform.uow(read_only=True) as uow:
        user = await services.authenticate(uow, username, password)
    if user is None:
        raise HTTPException(401, "wrong username or password", headers={"WWW-Authenticate": "Bearer"})
    issuer = request.app.state.tokens
    roles = ["admin"] if user.username in request.app.state.admins else ["user"]
    return {"access_token": issuer.issue(user.id, user.username, roles), "expires_in": issuer.ttl_s}


@router.get("/users/me", response_model=UserOut)
async def me(caller: CurrentCaller, request: Request):
    return await get_user(caller.user_id, request)


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
async def my_orders(caller: CurrentCaller, request: Request):
    """The caller's confirmed orders, from this service's own read model (eventually consistent)."""
    async with request.app.state.platform.uow(read_only=True) as uow:
        return await uow.history.for_user(caller.user_id)


@router.get("/internal/users/{user_id}", response_model=UserOut, tags=["internal"])
async def get_user(user_id: str, request: Request):
    async with request.app.state.platform.uow(read_only=True) as uow:
        user = await uow.users.get(user_id)
    if user is None:
        raise HTTPException(404, f"no user {user_id}")
    return {"id": user.id, "username": user.username}


@router.get("/.well-known/jwks.json", tags=["auth"])
async def jwks(request: Request) -> dict:
    return request.app.state.tokens.jwks
