"""The composition root: the user service's business, plugged into the platform."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel, Field

from msa_kit.app import create_service_app
from msa_kit.platform import Platform, PlatformSettings
from msa_kit.runtime import Runtime
from msa_kit.settings import ConfigSnapshot

from .adapters.repository import SqlUserUnitOfWork, metadata
from .adapters.tokens import TokenIssuer
from .domain.throttle import LoginThrottle, ThrottlePolicy
from .entrypoints import events, http


class ThrottleSection(BaseModel):
    free_failures: int = Field(ge=1)
    base_lock_s: float = Field(1.0, gt=0)
    max_lock_s: float = Field(900.0, gt=0)
    forget_after_s: float = Field(3600.0, gt=0)

    def policy(self) -> ThrottlePolicy:
        return ThrottlePolicy(self.free_failures, self.base_lock_s, self.max_lock_s, self.forget_after_s)


class LoginThrottleSection(BaseModel):
    """Failed logins lock an account, and a client address, for 1 s, then 2, 4, … (up to 15 min) once its free
    failures are used up. `msa locks` shows and clears them."""
    account: ThrottleSection = ThrottleSection(free_failures=5)
    client: ThrottleSection = ThrottleSection(free_failures=50)


class UserSection(BaseModel):
    token_ttl_s: int = 3600
    admins: list[str] = []
    login_throttle: LoginThrottleSection = LoginThrottleSection()


class UserSettings(PlatformSettings):
    user: UserSection = UserSection()


def build_app(rt: Runtime, config: ConfigSnapshot, settings: UserSettings) -> FastAPI:
    platform = Platform(rt, config, settings, metadata=metadata, uow_class=SqlUserUnitOfWork)
    events.subscribe(platform)
    tokens = TokenIssuer(rt.path("keys", "user-signing.pem"), settings.user.token_ttl_s)

    def throttle() -> LoginThrottle:  # from the settings of the moment: a config refresh applies to the next login
        section = platform.settings.user.login_throttle
        return LoginThrottle(section.account.policy(), section.client.policy())

    return create_service_app(platform, title="user", routers=[http.router], adapters=lambda: http.Adapters(
        uows=platform.uow, tokens=tokens, admins=frozenset(settings.user.admins), throttle=throttle))
