"""user as a provider: its real app replays every committed pact that names it — order's questions about users,
the gateway's JWKS — with provider states seeded through its own unit of work."""

from __future__ import annotations

from pathlib import Path

from pacts import PACTS, Served, provider, verify
from user.bootstrap import UserSettings, build_app
from user.domain.model import User


def states(served: Served) -> dict:
    async def alice() -> None:
        async with served.platform.uow() as uow:  # type: ignore[attr-defined]
            if await uow.users.get("u-1") is None:
                await uow.users.add(User("u-1", "alice", "not-a-real-hash"))
                await uow.commit()

    async def nobody() -> None:
        return None  # a fresh database has no u-404

    return {"user u-1 exists": alice, "no user u-404": nobody}


def test_user_honours_every_pact_that_names_it(tmp_path: Path):
    assert {p.name for p in PACTS.glob("*-user.json")} == {"order-user.json", "gateway-user.json"}
    with provider("user", build_app, UserSettings(), tmp_path) as served:
        passed, output = verify("user", served, states(served))
    assert passed, output
