"""The composition root: the console plugged into the platform like a service (registers as `console`, reads
config-repo/console.yml, /health and /metrics from the kit), with the collector, the chaos controls, the load
generator and the trace reader it serves under /console."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from msa_kit.app import create_service_app
from msa_kit.discovery import consul_client
from msa_kit.platform import Platform, PlatformSettings
from msa_kit.runtime import Runtime
from msa_kit.settings import ConfigSnapshot
from msa_kit.tokens import JwksVerifier

from .api import STATIC, router
from .chaos import Chaos
from .collector import Collector
from .load import LoadGenerator
from .traces import TraceSource


class ConsoleSection(BaseModel):
    """`console:` in config-repo/console.yml."""

    interval_s: float = Field(1.0, ge=0.2, le=30)  # one snapshot this often while a page is open
    max_load_rate: float = Field(50.0, gt=0, le=500)  # orders/s the "place orders" slider goes up to
    max_load_seconds: float = Field(600.0, gt=0, le=3600)  # the generator stops by itself after this long
    jaeger_url: str = ""  # Jaeger's query API (compose); empty: the local trace files under the var dir
    gateway_url: str = ""  # where the load goes; empty: the first passing `gateway` instance in discovery


class ConsoleSettings(PlatformSettings):
    console: ConsoleSection = ConsoleSection()


def build_app(rt: Runtime, config: ConfigSnapshot, settings: ConsoleSettings) -> FastAPI:
    platform = Platform(rt, config, settings)  # no database, no events consumed
    section = lambda: platform.settings.console  # noqa: E731  (read live: a refresh applies at once)
    token = lambda: platform.settings.admin.token.get_secret_value()  # noqa: E731
    # The instances are called by address, not by service name: a plain client, not the platform's balanced one.
    direct = httpx.AsyncClient(trust_env=False, timeout=2)

    consul: list[Any] = []  # one client, made inside the running loop (py-consul's aio client needs one)

    async def registry() -> dict[str, list[dict[str, Any]]]:
        if not consul:
            consul.append(consul_client(rt))
        _, services = await consul[0].catalog.services()
        entries = await asyncio.gather(*(consul[0].health.service(name) for name in services))
        return {name: found for name, (_, found) in zip(services, entries)}

    async def gateway() -> str:
        if section().gateway_url:
            return section().gateway_url
        passing = await platform.discovery.instances("gateway")
        if not passing:
            raise RuntimeError("no passing gateway instance in discovery")
        return passing[0].url

    collector = Collector(registry, direct, interval_s=settings.console.interval_s)
    chaos = Chaos(collector, direct, token, os.environ.get("FAULTPROXY_URL", "http://127.0.0.1:8474"))
    load = LoadGenerator(gateway, max_rate=settings.console.max_load_rate,
                         max_seconds=settings.console.max_load_seconds)

    async def extras() -> dict[str, Any]:
        return {"broker": await chaos.broker_link(), "load": load.document(), "mode": rt.profile}

    collector.extras = extras
    app = create_service_app(platform, title="console", routers=[router])
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
    app.state.collector, app.state.chaos, app.state.load = collector, chaos, load
    app.state.traces = TraceSource(Path(rt.var_dir), settings.console.jaeger_url)
    platform.on_start(lambda: _verifier(app, platform))

    async def stop() -> None:
        await load.stop()
        await collector.stop()
        await direct.aclose()
        if consul:
            await consul[0].close()

    platform.on_stop(stop)
    return app


async def _verifier(app: FastAPI, platform: Platform) -> None:
    # platform.http exists only once the platform started: it resolves http://user/… through discovery.
    app.state.verifier = JwksVerifier(platform.http)
