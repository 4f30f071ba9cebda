"""Service discovery through the Consul HTTP API: register, heartbeat, deregister, and watch.

Works unchanged against the sandbox's own `discovery/` and against a real Consul agent (`CONSUL_HTTP_ADDR`).
Requests never call the registry: a `ServiceWatcher` per needed service keeps a local cache of passing instances
fresh with blocking queries, and keeps serving the last known instances while the registry is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import consul
import consul.aio

from .runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Instance:
    id: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    meta: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    @classmethod
    def from_health_entry(cls, entry: dict[str, Any]) -> "Instance":
        svc = entry["Service"]
        address = svc.get("Address") or entry.get("Node", {}).get("Address") or "127.0.0.1"
        return cls(svc["ID"], address, int(svc["Port"]), tuple(svc.get("Tags") or ()), dict(svc.get("Meta") or {}))


def consul_client(rt: Runtime) -> consul.aio.Consul:
    # consul.aio builds an aiohttp session, so it must be created inside the running loop (DESIGN §7).
    host, port = rt.consul_host_port
    return consul.aio.Consul(host=host, port=port, token=rt.consul_http_token.get_secret_value() or None)


async def _wait_listening(host: str, port: int, timeout: float = 10.0) -> None:
    """Uvicorn runs the lifespan before it binds: only claim to be healthy once we really accept connections."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)


class ServiceRegistration:
    """This instance in the registry: a TTL check we keep passing; re-registered whenever the registry forgot us."""

    def __init__(self, client: consul.aio.Consul, rt: Runtime, *, ttl_s: float = 3.0,
                 deregister_after: str = "30s", tags: list[str] | None = None,
                 meta: dict[str, str] | None = None) -> None:
        self.client, self.rt = client, rt
        self.ttl_s, self.deregister_after = ttl_s, deregister_after
        self.tags, self.meta = tags or [], meta or {}
        self.check_id = f"service:{rt.instance_id}"
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    async def _register(self) -> None:
        check = consul.Check.ttl(f"{self.ttl_s:g}s")
        check["DeregisterCriticalServiceAfter"] = self.deregister_after
        await self.client.agent.service.register(
            self.rt.service, service_id=self.rt.instance_id, address=self.rt.address, port=self.rt.port,
            tags=self.tags, meta=self.meta, check=check)
        log.info("registered %s as %s at %s:%s", self.rt.service, self.rt.instance_id, self.rt.address, self.rt.port)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._heartbeat(), name=f"heartbeat:{self.rt.instance_id}")

    async def _heartbeat(self) -> None:
        await _wait_listening(self.rt.local_host, self.rt.port)
        registered = False
        while True:
            try:
                if not registered:
                    await self._register()
                    registered = True
                # py-consul answers False (HTTP 404) for a check the registry does not know: it restarted or
                # reaped us. Real Consul may answer 500 instead, which lands in the except below. Either way: re-register.
                if not await self.client.agent.check.ttl_pass(self.check_id):
                    log.warning("the registry does not know %s (restarted or reaped us): registering again",
                                self.check_id)
                    registered = False
                    continue
            except Exception as exc:  # registry down: keep serving, keep trying
                log.warning("heartbeat to the registry failed: %s", exc or type(exc).__name__)
                registered = False
            await asyncio.sleep(self.ttl_s / 3)

    async def stop(self) -> None:
        """Stop the heartbeat and deregister, once: a second call (the platform leaves on SIGTERM, then stops)
        does nothing."""
        if self._stopped:
            return
        self._stopped = True
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.agent.service.deregister(self.rt.instance_id), 2.0)
            log.info("deregistered %s", self.rt.instance_id)


class ServiceWatcher:
    """Keeps `instances` equal to the registry's passing set for one service, via blocking queries.

    One exception, right after an outage (the registry was unreachable, or its index went backwards because it
    restarted): an *empty* answer does not wipe a non-empty cache for `recovery_grace_s`. A registry that has just
    come back may not yet have heard from instances that are alive and serving: an in-memory one (or
    `consul agent -dev`) knows nothing until each instance's next heartbeat re-registers it, and even Consul with a
    data dir restores a TTL check as critical when its TTL ran out during the outage. Believing that empty answer
    would turn "the registry was down" into "every call fails with 503" for up to a heartbeat interval, which is
    exactly what a registry outage must not do. This is Envoy's panic threshold in its simplest form: when health
    data says nothing is healthy, trust it less than the traffic that was flowing a moment ago. Outside that window
    an empty answer is believed at once, so a service that really is gone fails fast; and since the grace is only
    on the watcher's side, the registry's answers stay exactly Consul's.
    """

    def __init__(self, client: consul.aio.Consul, service: str, *, wait: str = "30s",
                 recovery_grace_s: float = 3.0) -> None:
        # 3 s: the default registry TTL (config-repo registry.ttl_s). A live instance heartbeats every TTL/3 and
        # re-registers on the first heartbeat that reaches the registry, so all of them are back well within it.
        self.client, self.service, self.wait = client, service, wait
        self.recovery_grace_s = recovery_grace_s
        self.instances: list[Instance] = []
        self.stale = False  # true while we serve a set other than the registry's answer (unreachable, or grace)
        # time.monotonic() of the registry's last answer that the cache took; since the start until one came.
        self.confirmed_at = time.monotonic()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"watch:{self.service}")

    async def ready(self, timeout: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        index: str | None = None
        backoff = 0.2
        outage = False  # the last query failed: the next answer comes from a registry that may have restarted
        grace_until = 0.0  # loop time until which an empty answer does not replace a non-empty cache
        holding = False  # the registry's last answer was empty and we kept the cache instead
        while True:
            wait = self.wait
            left = grace_until - loop.time()
            if holding and left > 0:
                # Block no longer than the grace, so that an empty answer still standing when it ends is taken at
                # once rather than after a full `wait`.
                wait = f"{max(1, int(left * 1000))}ms"
            try:
                new_index, entries = await self.client.health.service(
                    self.service, passing=True, index=index, wait=wait)
                # Consul's rule: an index that goes backwards (registry restarted) resets the watch.
                if index is not None and new_index is not None and int(new_index) < int(index):
                    new_index, outage = None, True
                if outage:
                    outage, grace_until = False, loop.time() + self.recovery_grace_s
                index = new_index
                instances = [Instance.from_health_entry(e) for e in entries]
                if not instances and self.instances and loop.time() < grace_until:
                    if not holding:
                        log.warning("the registry is back but lists no passing %s instance yet: keeping %d cached "
                                    "instance(s) for up to %.1f s while instances re-register", self.service,
                                    len(self.instances), grace_until - loop.time())
                    self.stale, holding, backoff = True, True, 0.2
                    continue
                holding = False
                if instances != self.instances:
                    log.info("%s instances: %s", self.service, [i.id for i in instances] or "none")
                self.instances, self.stale, backoff = instances, False, 0.2
                self.confirmed_at = time.monotonic()
                self._ready.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self.stale:
                    log.warning("registry unreachable while watching %s (%s): serving %d cached instance(s)",
                                self.service, exc or type(exc).__name__, len(self.instances))
                self.stale, outage, holding = True, True, False
                index = None  # after an outage, ask without blocking: the registry may have restarted
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def cache_age_s(self) -> float:
        """How old the cached set is: 0 while it is the registry's (a blocking query in flight keeps it so: it
        returns at once on a change), else the seconds since the registry last confirmed it."""
        return time.monotonic() - self.confirmed_at if self.stale else 0.0

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Discovery:
    """The process's view of the registry: one watcher per service it calls, created on first need."""

    def __init__(self, client: consul.aio.Consul) -> None:
        self.client = client
        self._watchers: dict[str, ServiceWatcher] = {}

    @property
    def watchers(self) -> Mapping[str, ServiceWatcher]:
        """The services watched so far, to read (`watch` adds one)."""
        return self._watchers

    def watch(self, service: str) -> ServiceWatcher:
        watcher = self._watchers.get(service)
        if watcher is None:
            watcher = self._watchers[service] = ServiceWatcher(self.client, service)
            watcher.start()
        return watcher

    async def instances(self, service: str) -> list[Instance]:
        watcher = self.watch(service)
        if not watcher._ready.is_set():
            await watcher.ready(timeout=2.0)  # only the very first call for a service waits
        return watcher.instances

    async def stop(self) -> None:
        for w in self._watchers.values():
            await w.stop()
