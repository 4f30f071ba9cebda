"""python -m msa_faultproxy — the control API on $HOST:$PORT (default 127.0.0.1:8474, Toxiproxy's port), and the
proxies named in $FAULTPROXY_PROXIES, a JSON array: [{"name": "rabbitmq", "listen": "127.0.0.1:5673",
"upstream": "127.0.0.1:5672"}]. More can be created through the API. Exits 1 if a proxy cannot listen."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys

import uvicorn

from .api import create_app
from .proxy import Proxies, ProxyError

log = logging.getLogger("msa_faultproxy")


async def serve(host: str, port: int, initial: list[dict]) -> int:
    proxies = Proxies()
    try:
        await proxies.populate(initial)
    except ProxyError as exc:
        log.error("FAULTPROXY_PROXIES: %s", exc)
        await proxies.close()
        return 1
    config = uvicorn.Config(create_app(proxies), host=host, port=port, access_log=False, log_config=None,
                            timeout_graceful_shutdown=2, server_header=False)
    log.info("control API on http://%s:%d (Toxiproxy's HTTP API, subset)", host, port)
    await uvicorn.Server(config).serve()  # its lifespan shutdown closes the proxies (api.py)
    return 0


def main() -> None:
    logging.basicConfig(stream=sys.stdout, level=os.environ.get("LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8474"))
    try:
        initial = json.loads(os.environ.get("FAULTPROXY_PROXIES") or "[]")
    except ValueError as exc:
        sys.exit(f"FAULTPROXY_PROXIES is not valid JSON: {exc}")
    sys.exit(asyncio.run(serve(host, port, initial)))


if __name__ == "__main__":
    main()
