"""The composition root: the catalog's business, plugged into the platform."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from pydantic import BaseModel

from msa_kit.app import create_service_app
from msa_kit.platform import Platform, PlatformSettings
from msa_kit.runtime import Runtime
from msa_kit.settings import ConfigSnapshot

from .adapters.repository import SqlCatalogUnitOfWork, metadata
from .domain.model import Product
from .entrypoints import events, http
from .service_layer import handlers

log = logging.getLogger(__name__)


class SeedProduct(BaseModel):
    sku: str
    name: str
    price_cents: int
    stock: int


class CatalogSection(BaseModel):
    seed: list[SeedProduct] = []


class CatalogSettings(PlatformSettings):
    catalog: CatalogSection = CatalogSection()


def build_app(rt: Runtime, config: ConfigSnapshot, settings: CatalogSettings) -> FastAPI:
    platform = Platform(rt, config, settings, metadata=metadata, uow_class=SqlCatalogUnitOfWork)
    events.subscribe(platform)

    async def seed() -> None:
        added = await handlers.seed(platform.uow, [Product(**p.model_dump()) for p in settings.catalog.seed])
        if added:
            log.info("seeded %d product(s)", added)

    platform.on_start(seed)
    return create_service_app(platform, title="catalog", routers=[http.router],
                              adapters=lambda: http.Adapters(uows=platform.uow))
