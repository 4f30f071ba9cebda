"""`python -m msa_gateway`: a service's start-up (msa_kit.app.prepare_service), the gateway served by granian
(server.py)."""

from __future__ import annotations

import uvloop

from msa_kit.app import prepare_service

from .app import GatewaySettings, build_app
from .server import serve


def main() -> None:
    rt, snapshot, settings = prepare_service("gateway", GatewaySettings)
    uvloop.run(serve(build_app(rt, snapshot, settings), rt.host, rt.port))


main()
