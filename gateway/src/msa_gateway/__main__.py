"""`python -m msa_gateway`: msa_kit.app.run_service's start-up, served by the gateway's own server (server.py)
instead of uvicorn."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import uvloop
from pydantic import ValidationError

from msa_kit.logs import setup_logging
from msa_kit.runtime import Runtime
from msa_kit.settings import ConfigUnavailable, build_settings, fetch_config, save_snapshot
from msa_kit.tracing import setup_tracing

from .app import Gateway, GatewaySettings, build_app
from .server import HttpServer

log = logging.getLogger("msa_gateway")

GRACEFUL_S = 5.0  # what uvicorn's timeout_graceful_shutdown was


async def serve(gateway: Gateway, host: str, port: int) -> None:
    """Start-up (the Starlette app's lifespan), listen, and on SIGTERM/SIGINT: stop accepting, let requests in
    flight finish, then shut down."""
    local = gateway.local
    async with local.router.lifespan_context(local):
        server = HttpServer(gateway.handle, malformed=gateway.malformed)
        await server.start(host, port)
        log.info("gateway listening on http://%s:%d", host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("gateway stopping: %d connection(s) open", len(server.connections))
        await server.shutdown(GRACEFUL_S)


def main() -> None:
    rt = Runtime.for_service("gateway")
    setup_logging("gateway", rt.instance_id)
    try:
        snapshot = asyncio.run(fetch_config(rt))
    except ConfigUnavailable as exc:
        log.error("cannot start %s: %s", rt.instance_id, exc)
        sys.exit(2)
    try:
        settings = build_settings(GatewaySettings, snapshot)
    except ValidationError as exc:  # a bad value in config-repo: say which, don't start half-configured
        log.error("cannot start %s: invalid configuration: %s", rt.instance_id, exc)
        sys.exit(2)
    if snapshot.source == "config-server":
        save_snapshot(rt, snapshot)
    setup_logging("gateway", rt.instance_id, settings.log_level)
    setup_tracing(rt)
    uvloop.run(serve(build_app(rt, snapshot, settings), rt.host, rt.port))


main()
