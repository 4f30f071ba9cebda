"""How the gateway is served: granian's embedded server (Rust, hyper underneath) running the ASGI app
`app.Gateway` on this process's event loop — one process, one event loop, like every other program.

Why granian (issue #17, "HTTP on kept libraries"). Until then this module was the gateway's own HTTP/1.1 server
(an asyncio Protocol on httptools, 533 lines, with an Exchange of its own and a second dispatch entry point). The
issue's bar for a maintained server: at least 60 % of nginx's req/s at 50 connections. `make bench`
(bench/harness.py, gateway rows; wrk -t1, 3 runs of 3 s, interleaved, 2 shared cores), two runs, 2026-12-07:

    req/s vs nginx (1 worker)   own server    granian    uvicorn + httptools
    run 1,  1 connection           65 %         47 %          51 %
    run 1, 50 connections          45 %         78 %          49 %
    run 2,  1 connection           59 %         52 %          54 %
    run 2, 50 connections          87 %         71 %          66 %
    p50 at 1 connection, run 1   0.56 ms      0.73 ms       0.64 ms     (direct to the backend: 0.21 ms)
    p50 at 1 connection, run 2   0.57 ms      0.65 ms       0.60 ms     (direct: 0.20 ms)

granian met the bar in both runs, uvicorn in one. The own server stayed ahead at 1 connection (by 7-18 points)
and, in run 2, at 50 (by 16; behind by 33 in run 1): not worth 533 lines of protocol code a learner must read
past, once a maintained server clears the bar. bench/README.md has the whole tables ("HTTP: kept libraries vs
the hand-written stack").

What granian does here that the old server did: keep-alive, pipelining, request bodies streamed with flow
control, Expect: 100-continue, a time-out for a request head that never ends (`HEAD_TIMEOUT_S`). What it does
differently: a request it cannot parse gets granian's own 400 and never reaches the gateway (no access-log line,
no span, no problem+json body — those are the proxy's, for requests it can read). granian labels its embedded server
"experimental"; it is what was measured.

Stopping, in the order msa_kit.app.LeavingServer has for the services: on SIGTERM/SIGINT leave the registry and
serve on for `registry.drain_s` (a second signal cuts that short), then granian stops accepting and lets the
requests in flight finish, and the lifespan stops the platform.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings
from granian.server.embed import Server

from .app import Gateway

log = logging.getLogger("msa_gateway")

HEAD_TIMEOUT_S = 10.0  # a request head (line and headers) must arrive whole within this (slow-loris)
BACKLOG = 2048


def granian(app: object, host: str, port: int, *, head_timeout_s: float = HEAD_TIMEOUT_S) -> Server:
    """granian's embedded server for the ASGI app `app`, as the gateway runs it (the tests serve others with it)."""
    return Server(app, address=host, port=port, interface=Interfaces.ASGI, http=HTTPModes.http1, websockets=False,
                  backlog=BACKLOG, log_enabled=False,
                  http1_settings=HTTP1Settings(header_read_timeout=int(head_timeout_s * 1000)))


async def serve(gateway: Gateway, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT; then leave the registry, drain, stop (see the module's docstring)."""
    server = granian(gateway, host, port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    serving = asyncio.ensure_future(server.serve())  # the lifespan's start-up, then listening
    log.info("gateway listening on http://%s:%d", host, port)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not serving.done():
        drained = asyncio.ensure_future(gateway.platform.leave())
        for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal: stop at once
            loop.add_signal_handler(sig, drained.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await drained
        log.info("gateway stopping")
        server.stop()
    stopped.cancel()
    await serving
