"""``python -m msa_config_server``: settings from the environment, Spring-style names where Spring has one."""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import uvicorn

from msa_config_server.api import create_app
from msa_kit.discovery import ServiceRegistration, consul_client
from msa_kit.runtime import Runtime


def register_in_discovery(app: Any) -> None:
    """Like every service, the config server is in the registry (as `config-server`), so clients can find it
    there instead of by a fixed URL (Spring's `spring.cloud.config.discovery.enabled`)."""
    serve = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[None]:
        async with serve(a):
            rt = Runtime.for_service("config-server")
            registration = ServiceRegistration(consul_client(rt), rt)
            await registration.start()
            try:
                yield
            finally:
                await registration.stop()

    app.router.lifespan_context = lifespan


def main() -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = create_app(
        os.environ.get("CONFIG_REPO", "./config-repo"),
        encrypt_key=os.environ.get("ENCRYPT_KEY") or None,
        encrypt_salt=os.environ.get("ENCRYPT_SALT", "deadbeef"),
        admin_token=os.environ.get("CONFIG_ADMIN_TOKEN") or None,
        amqp_url=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        namespace=os.environ.get("MSA_NAMESPACE", ""),
    )
    if os.environ.get("CONSUL_HTTP_ADDR"):
        register_in_discovery(app)
    uvicorn.run(app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8888")),
                log_level=os.environ.get("LOG_LEVEL", "info").lower())


if __name__ == "__main__":
    main()
