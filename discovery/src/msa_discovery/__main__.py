"""python -m msa_discovery — serve on $HOST:$PORT (default 127.0.0.1:8500), logging state changes to stdout."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

import uvicorn

from .api import create_app, default_node
from .registry import Registry


class Server(uvicorn.Server):
    """uvicorn, plus one thing: on SIGTERM/SIGINT, parked blocking queries answer at once (200, current data)
    instead of holding shutdown for their wait and then being cut off with a 500."""

    def __init__(self, config: uvicorn.Config, registry: Registry) -> None:
        super().__init__(config)
        self.registry = registry
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.loop is not None:  # we are in a signal handler: hand the work to the loop
            self.loop.call_soon_threadsafe(self.registry.release_waiters)
        super().handle_exit(sig, frame)


def data_dir(environ: Mapping[str, str] = os.environ) -> Path | None:
    """Where the registry persists itself, as Consul's agent uses its -data-dir: $DATA_DIR, else
    $MSA_VAR_DIR/discovery (the sandbox's var dir, set by `make up`). An empty DATA_DIR, or neither set, keeps
    everything in memory, like `consul agent -dev`."""
    if "DATA_DIR" in environ:
        return Path(environ["DATA_DIR"]) if environ["DATA_DIR"] else None
    return Path(environ["MSA_VAR_DIR"]) / "discovery" if environ.get("MSA_VAR_DIR") else None


def main() -> None:
    logging.basicConfig(stream=sys.stdout, level=os.environ.get("LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8500"))
    registry = Registry(default_node())
    where = data_dir()
    logging.getLogger("msa_discovery").info("node %s (%s); UI at http://%s:%d/ui; %s", registry.node.name,
                                            registry.node.address, host, port,
                                            f"data dir {where}" if where else "in memory only (no data dir)")
    # access_log off: clients heartbeat every few seconds and watchers poll; the log is for state changes.
    config = uvicorn.Config(create_app(registry, data_dir=where), host=host, port=port, access_log=False,
                            log_config=None, timeout_graceful_shutdown=2, server_header=False)
    Server(config, registry).run()


if __name__ == "__main__":
    main()
