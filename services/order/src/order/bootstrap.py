"""The composition root: the order service's business, plugged into the platform."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel

from msa_kit.app import create_service_app
from msa_kit.platform import Platform, PlatformSettings
from msa_kit.runtime import Runtime
from msa_kit.settings import ConfigSnapshot

from .adapters import metrics
from .adapters.clients import CatalogClient
from .adapters.repository import SqlOrderUnitOfWork, metadata
from .entrypoints import events
from .entrypoints.http import router
from .service_layer.fallback import LastKnownPrices


class OrderSection(BaseModel):
    price_cache_max_age_s: float = 300.0  # how old a last-known price may be when the catalog is unavailable


class OrderSettings(PlatformSettings):
    order: OrderSection = OrderSection()


def build_app(rt: Runtime, config: ConfigSnapshot, settings: OrderSettings) -> FastAPI:
    metrics.create_series()
    platform = Platform(rt, config, settings, metadata=metadata, uow_class=SqlOrderUnitOfWork)
    events.subscribe(platform)
    app = create_service_app(platform, title="order", routers=[router])

    async def price_list() -> None:
        app.state.prices = LastKnownPrices(CatalogClient(platform.http),
                                           lambda: platform.settings.order.price_cache_max_age_s)

    platform.on_start(price_list)
    return app
