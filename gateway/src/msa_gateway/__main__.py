"""`python -m msa_gateway`: a service's start-up (msa_kit.app.prepare_service), served by the gateway's own server
(server.py) instead of uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import uvloop

from msa_kit.app import GRACEFUL_S, prepare_service

from .app import Gateway, GatewaySettings, build_app
from .server import HttpServer

log = logging.getLogger("msa_gateway")


async def serve(gateway: Gateway, host: str, port: int) -> None:
    """Start-up (the Starlette app's lifespan), listen, and on SIGTERM/SIGINT: leave the registry, serve on for
    `registry.drain_s`, stop accepting, let requests in flight finish, then shut down."""
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
        # As msa_kit.app.LeavingServer: leave the registry, serve on while the platform's load balancer drops us.
        drained = asyncio.ensure_future(gateway.platform.leave())
        for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal: stop at once
            loop.add_signal_handler(sig, drained.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await drained
        log.info("gateway stopping: %d connection(s) open", len(server.connections))
        await server.shutdown(GRACEFUL_S)


def main() -> None:
    rt, snapshot, settings = prepare_service("gateway", GatewaySettings)
    uvloop.run(serve(build_app(rt, snapshot, settings), rt.host, rt.port))


main()
