"""The composition root: the probe plugged into the platform like a service (registers as `probe`, reads
config-repo/probe.yml from the config server, refreshable live, /health and /metrics from the kit), plus GET /probe."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request

from msa_kit.app import create_service_app
from msa_kit.platform import Platform, PlatformSettings
from msa_kit.runtime import Runtime
from msa_kit.settings import ConfigSnapshot

from .probe import Probe, ProbeMetrics, ProbeSection

router = APIRouter(tags=["probe"])


class ProbeSettings(PlatformSettings):
    probe: ProbeSection = ProbeSection()


@router.get("/probe")
async def last_result(request: Request) -> dict[str, Any]:
    """The last synthetic transaction: ok, the step that failed and why, how long it took, when it ended; the
    counts so far and the settings in force."""
    return request.app.state.probe.document()


def build_app(rt: Runtime, config: ConfigSnapshot, settings: ProbeSettings) -> FastAPI:
    platform = Platform(rt, config, settings)  # no database, no events consumed

    async def gateways() -> list[str]:
        return [i.url for i in await platform.discovery.instances("gateway")]

    probe = Probe(lambda: platform.settings.probe, gateways, metrics=ProbeMetrics())
    app = create_service_app(platform, title="probe", routers=[router])
    app.state.probe = probe
    platform.on_start(probe.start)  # with discovery ready

    async def wake(_new: Any) -> None:
        probe.wake()

    platform.on_refresh(wake)  # enabled or period changed: no waiting out the old period
    platform.on_stop(probe.stop)  # before deregistration and closed clients: no run is left half-done
    return app
