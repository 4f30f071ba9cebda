"""What the Pact tests share (tests/ is on the path): where pacts live, a transport that sends a service client's
`http://catalog/...` calls to Pact's mock server, writing a consumer's pact beside the committed one, and serving a
provider's real app (its routes, domain and database; no registry, config server or broker) for verification.

The committed pacts in contracts/pacts/ are the contract. A consumer test writes its pact to a temporary folder and
fails when that differs from the committed file, with the command that updates it: `make contracts` runs the
consumer tests with MSA_UPDATE_PACTS=1. Provider verification reads the committed files only, so it never depends
on the order tests run in.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from msa_cli.spec import free_ports, repo_root

PACTS = repo_root() / "contracts" / "pacts"
UPDATE = "make contracts"


class ToMockServer(httpx.AsyncBaseTransport):
    """Every request to whatever host (`http://catalog`, `http://user`) goes to the mock server instead: the client
    code under test stays exactly as it runs behind the platform's balanced client."""

    def __init__(self, base_url: str) -> None:
        self.base = httpx.URL(base_url)
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(scheme=self.base.scheme, host=self.base.host, port=self.base.port)
        request.headers["host"] = f"{self.base.host}:{self.base.port}"
        return await self.inner.handle_async_request(request)


def check_or_update(written_dir: Path, name: str) -> None:
    """The pact the consumer test just wrote against the committed one."""
    written = json.loads((written_dir / name).read_text())
    committed_path = PACTS / name
    if os.environ.get("MSA_UPDATE_PACTS") == "1":
        committed_path.write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")
        return
    assert committed_path.exists(), f"contracts/pacts/{name} is missing: run `{UPDATE}`"
    committed = json.loads(committed_path.read_text())
    assert _comparable(committed) == _comparable(written), \
        f"the consumer's expectations changed and contracts/pacts/{name} was not updated: run `{UPDATE}`"


def _comparable(pact: dict[str, Any]) -> dict[str, Any]:
    # The library's own versions in the metadata are not part of the contract.
    return {k: v for k, v in pact.items() if k != "metadata"}


class Served:
    def __init__(self, url: str, loop: asyncio.AbstractEventLoop) -> None:
        self.url, self.loop = url, loop

    def run(self, coro: Any) -> Any:
        """Run a coroutine in the provider's own loop (its database engine lives there): provider states."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)


@contextmanager
def serving(app: Any, startup: Any = None) -> Iterator[Served]:
    """Serve an ASGI app on a free port in a thread of its own (lifespan off: no platform start, which would need
    the registry and the broker); `startup`, a coroutine function run in the server's loop first (the schema)."""
    (port,) = free_ports(1)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    loop = asyncio.new_event_loop()

    def run() -> None:
        asyncio.set_event_loop(loop)
        if startup is not None:
            loop.run_until_complete(startup())
        loop.run_until_complete(server.serve())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the provider did not start"
        time.sleep(0.02)
    try:
        yield Served(f"http://127.0.0.1:{port}", loop)
    finally:
        server.should_exit = True
        thread.join(10)


_apps: dict[str, Any] = {}


@contextmanager
def provider(service: str, build_app: Any, settings: Any, var_dir: Path, wrap: Any = None) -> Iterator[Served]:
    """A provider's real app (its routes, domain and own database, a SQLite file under the first `var_dir`), served for
    verification; `served.platform` seeds provider states through the service's own unit of work. `wrap`: an
    ASGI middleware around it (the tests' breaking changes)."""
    from msa_kit.runtime import Runtime
    from msa_kit.settings import ConfigSnapshot
    from msa_kit.sql import create_schema

    if service not in _apps:  # once a process: a service's app adds the outbox tables to its module's metadata
        rt = Runtime(service=service, instance_id=f"{service}-pact", var_dir=var_dir,
                     database_url=f"sqlite+aiosqlite:///{var_dir / (service + '.db')}")
        _apps[service] = build_app(rt, ConfigSnapshot(service, "pact", "pact", "snapshot"), settings)
    app = _apps[service]
    platform = app.state.platform

    async def schema() -> None:  # and the routes' adapters: what the lifespan, which is off, would do after start
        await create_schema(platform.engine, platform.metadata)
        app.state.adapters = app.state.make_adapters()

    with serving(wrap(app) if wrap else app, schema) as served:
        served.platform = platform  # type: ignore[attr-defined]
        try:
            yield served
        finally:
            served.run(platform.engine.dispose())


def verify(name: str, served: Served, states: dict[str, Any]) -> tuple[bool, str]:
    """Replay every committed pact naming provider `name` against `served`; (passed, the verifier's output)."""
    from pact import Verifier

    verifier = (Verifier(name, host="127.0.0.1").add_source(PACTS).add_transport(url=served.url)
                .state_handler({k: (lambda fn: lambda **_: served.run(fn()))(fn) for k, fn in states.items()}))
    try:
        verifier.verify()
        passed = True
    except Exception:  # the verifier raises on a mismatch; its output says which
        passed = False
    return passed, verifier.output(strip_ansi=True)
