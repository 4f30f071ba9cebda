"""The composition root: the order service's business, plugged into the platform."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel

from msa_kit.app import create_service_app
from msa_kit.platform import Platform, PlatformSettings
from msa_kit.runtime import Runtime
from msa_kit.settings import ConfigSnapshot

from .adapters import metrics
from .adapters.clients import CatalogClient, UserClient
from .adapters.repository import SqlOrderUnitOfWork, metadata
from .entrypoints import events, http
from .service_layer.fallback import LastKnownPrices
from .service_layer.known_users import KnownUsers


class OrderSection(BaseModel):
    price_cache_max_age_s: float = 300.0  # how old a last-known price may be when the catalog is unavailable


class OrderSettings(PlatformSettings):
    order: OrderSection = OrderSection()


def build_app(rt: Runtime, config: ConfigSnapshot, settings: OrderSettings) -> FastAPI:
    metrics.create_series()
    platform = Platform(rt, config, settings, metadata=metadata, uow_class=SqlOrderUnitOfWork)
    events.subscribe(platform)

    def adapters() -> http.Adapters:  # at start: the platform's client to other services exists from then on
        prices = LastKnownPrices(CatalogClient(platform.http), lambda: platform.settings.order.price_cache_max_age_s)
        return http.Adapters(uows=platform.uow, users=KnownUsers(UserClient(platform.http)), prices=prices)

    return create_service_app(platform, title="order", routers=[http.router], adapters=adapters)
