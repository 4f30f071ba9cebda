"""The composition root: the user service's business, plugged into the platform."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel

from msa_kit.app import create_service_app
from msa_kit.platform import Platform, PlatformSettings
from msa_kit.runtime import Runtime
from msa_kit.settings import ConfigSnapshot

from .adapters.repository import SqlUserUnitOfWork, metadata
from .adapters.tokens import TokenIssuer
from .entrypoints import events
from .entrypoints.http import router


class UserSection(BaseModel):
    token_ttl_s: int = 3600
    admins: list[str] = []


class UserSettings(PlatformSettings):
    user: UserSection = UserSection()


def build_app(rt: Runtime, config: ConfigSnapshot, settings: UserSettings) -> FastAPI:
    platform = Platform(rt, config, settings, metadata=metadata, uow_class=SqlUserUnitOfWork)
    events.subscribe(platform)
    app = create_service_app(platform, title="user", routers=[router])
    app.state.tokens = TokenIssuer(rt.path("keys", "user-signing.pem"), settings.user.token_ttl_s)
    app.state.admins = set(settings.user.admins)
    return app
