"""`Platform`: everything a service instance plugs into, built in bootstrap and started in the app's lifespan.

Registry registration and heartbeat, the discovery cache, the resilient client for other services, the event bus,
the service's own database with its outbox relay. A service's bootstrap.py composes one and hands it the parts
that are its business (tables, event handlers).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import Any, Awaitable, Callable, Literal, TypeVar

import httpx
import sqlalchemy as sa
from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator

from .balancing import STRATEGIES
from .discovery import Discovery, ServiceRegistration, consul_client
from .events import EventBus
from .inbox import Inbox, InboxDispatcher, Upcaster
from .faults import FaultBook, HttpFault
from .guards import OutlierPolicy, RetryPolicy
from .resilience import BreakerPolicy, Policies, ResilientStack, service_client
from .runtime import Runtime
from .refresh import RefreshListener
from .settings import ConfigSnapshot, ConfigUnavailable, ServiceSettings, build_settings, fetch_config, save_snapshot
from .outbox import OutboxRelay, SqlUnitOfWork, add_messaging_tables
from .sql import SchemaOutdated, create_schema, database_engine

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


class HttpSettings(BaseModel):
    timeout_s: float = 2.0  # calls to other services
    # Request bodies this instance accepts (msa_kit.bodies.BodyLimit); the largest valid order is ~7 KB (100 lines).
    max_body_bytes: int = Field(1_048_576, ge=1024)
    body_timeout_s: float = Field(10.0, gt=0, le=300)  # a body must arrive whole within this (slow-loris): 408


class BreakerSettings(BaseModel):
    fail_max: int = 5
    reset_timeout_s: float = 10.0


class EventSettings(BaseModel):
    max_attempts: int = 5
    prefetch: int = 50
    # classic: one broker (local mode, compose); quorum: replicated across a RabbitMQ cluster's nodes. Set it before
    # the queues exist: a queue keeps the type it was first declared with.
    queue_type: Literal["classic", "quorum"] = "classic"


class RetrySettings(BaseModel):
    max_retries: int = Field(1, ge=0, le=5)  # per idempotent call, on another instance
    budget_ratio: float = Field(0.2, ge=0, le=1)  # retries add at most this share of recent calls ...
    min_retries_per_s: float = Field(3.0, ge=0)  # ... plus this floor
    backoff_ms: float = Field(25.0, ge=0)


class OutlierSettings(BaseModel):
    consecutive_failures: int = Field(3, ge=1)  # refused connections, timeouts or 5xx in a row eject an instance
    ejection_s: float = Field(10.0, gt=0)


class BulkheadSettings(BaseModel):
    max_concurrent: int = Field(100, ge=1)  # calls in flight to one target service; more fail fast ...
    services: dict[str, int] = {}  # ... unless a service has its own limit here, e.g. {catalog: 20}


class LoadBalancingSettings(BaseModel):
    strategy: str = "round_robin"  # for every target service ...
    services: dict[str, str] = {}  # ... unless named here, e.g. {catalog: random}
    weights: dict[str, dict[str, int]] = {}  # per service, by instance version: {catalog: {v1: 90, v2: 10}}

    @field_validator("strategy")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {name!r}; one of {sorted(STRATEGIES)}")
        return name

    @field_validator("services")
    @classmethod
    def _known_each(cls, names: dict[str, str]) -> dict[str, str]:
        for name in names.values():
            cls._known(name)
        return names


class AdminSettings(BaseModel):
    token: SecretStr = SecretStr("")  # the admin API's bearer token; `{cipher}` in config-repo


class FaultSettings(BaseModel):
    failing_events: list[str] = []  # event types whose handler fails here (the poison-message exercise)
    http: list[HttpFault] = []  # faults in the request path (latency, error, hang), see faults.py
    slow_start_s: float = Field(0.0, ge=0, le=120)  # an instance takes this long to start (readiness lessons)


class RegistrySettings(BaseModel):
    ttl_s: float = 3.0
    deregister_critical_after: str = "30s"
    # On SIGTERM an instance leaves the registry, then keeps serving this long before it stops accepting: callers'
    # watches drop it within milliseconds, a platform's load balancer (Kubernetes' Service endpoints) in seconds.
    drain_s: float = Field(0.3, ge=0, le=30)


class PlatformSettings(ServiceSettings):
    """What every service's settings have; a service subclasses it and adds its own section."""

    http: HttpSettings = HttpSettings()
    breaker: BreakerSettings = BreakerSettings()
    events: EventSettings = EventSettings()
    registry: RegistrySettings = RegistrySettings()
    loadbalancing: LoadBalancingSettings = LoadBalancingSettings()
    retry: RetrySettings = RetrySettings()
    outlier: OutlierSettings = OutlierSettings()
    bulkhead: BulkheadSettings = BulkheadSettings()
    admin: AdminSettings = AdminSettings()
    features: dict[str, bool] = {}
    faults: FaultSettings = FaultSettings()


class Platform:
    def __init__(self, rt: Runtime, config: ConfigSnapshot, settings: PlatformSettings, *,
                 metadata: sa.MetaData | None = None, uow_class: type[SqlUnitOfWork] = SqlUnitOfWork,
                 meta: dict[str, str] | None = None) -> None:
        self.rt, self.config, self.settings = rt, config, settings
        # `version` is what the gateway's canary weights split by; MSA_VERSION sets it (`msa canary start`).
        self.meta = {"version": os.environ.get("MSA_VERSION") or "v1", **(meta or {})}
        self.metadata, self.uow_class = metadata, uow_class
        self.engine = database_engine(rt) if metadata is not None else None
        self.outbox, self.inbox_table = add_messaging_tables(metadata) if metadata is not None else (None, None)
        self.bus = EventBus(rt, max_attempts=settings.events.max_attempts, prefetch=settings.events.prefetch,
                            queue_type=settings.events.queue_type)
        self.relay = OutboxRelay(self.engine, self.outbox, self.bus) if self.engine is not None else None
        self.inbox = Inbox(self.uow, max_batch=settings.events.prefetch)
        self.discovery: Discovery
        self.http: httpx.AsyncClient
        self.resilience: ResilientStack
        self._registration: ServiceRegistration
        self._on_start: list[Callable[[], Awaitable[None]]] = []
        self._on_refresh: list[Callable[[Any], Awaitable[None]]] = []
        self._on_stop: list[Callable[[], Awaitable[None]]] = []
        self.refreshes = 0
        self.faults = FaultBook(rt.instance_id, lambda: self.settings.faults.http)

    # -- composition (bootstrap) -------------------------------------------------------------------------------
    def uow(self, *, read_only: bool = False) -> SqlUnitOfWork:
        """A unit of work on the service's database; `read_only` ones never wait for (or hold) the write lock."""
        assert self.engine is not None and self.outbox is not None and self.inbox_table is not None
        return self.uow_class(self.engine, self.outbox, self.inbox_table, source=f"/{self.rt.service}",
                              relay=self.relay, read_only=read_only)

    def handle(self, event_type: str, model: type[M], handler: Callable[[M, Any], Awaitable[None]], *,
               upcasters: Mapping[int, Upcaster] | None = None) -> None:
        """Consume `event_type`: its payload is parsed into `model`, then `handler(payload, uow)` runs at most once
        per event, inside a transaction (shared with other events consumed at the same time: `Inbox`). `model.version`
        is the payload version it reads; `upcasters` ({1: v1_to_v2, …}) bring older payloads up to it."""
        self.bus.subscribe(event_type, InboxDispatcher(
            self.inbox, model, handler, failing=lambda t: t in self.settings.faults.failing_events,
            upcasters=upcasters))

    def policies(self, *, retries: bool = True) -> Policies:
        """The resilient client's knobs, read from self.settings on every call: a refresh applies at once."""
        s = lambda: self.settings  # noqa: E731
        return Policies(
            breaker=lambda _svc: BreakerPolicy(s().breaker.fail_max, s().breaker.reset_timeout_s),
            outlier=lambda _svc: OutlierPolicy(s().outlier.consecutive_failures, s().outlier.ejection_s),
            retry=lambda _svc: RetryPolicy(s().retry.max_retries if retries else 0, s().retry.budget_ratio,
                                           s().retry.min_retries_per_s, s().retry.backoff_ms),
            bulkhead=lambda svc: s().bulkhead.services.get(svc, s().bulkhead.max_concurrent),
            strategy=lambda svc: s().loadbalancing.services.get(svc, s().loadbalancing.strategy),
            weights=lambda svc: s().loadbalancing.weights.get(svc))

    def on_start(self, fn: Callable[[], Awaitable[None]]) -> None:
        self._on_start.append(fn)

    def on_stop(self, fn: Callable[[], Awaitable[None]]) -> None:
        """`fn()` runs first when the platform stops, while discovery, the clients and the bus still work: a
        service's own tasks (the probe's loop, the console's load) end there, not half-done against closed clients."""
        self._on_stop.append(fn)

    def on_refresh(self, fn: Callable[[Any], Awaitable[None]]) -> None:
        """`fn(new_settings)` runs after a refresh validated; the kit's own knobs read `self.settings` live."""
        self._on_refresh.append(fn)

    async def refresh(self) -> str:
        """Re-fetch, validate, apply. A refused configuration leaves the current one in force."""
        try:
            snap = await fetch_config(self.rt, attempts=2, fallback=False)
            new = build_settings(type(self.settings), snap)
        except (ConfigUnavailable, ValidationError) as exc:
            log.error("configuration refresh refused, keeping version %s: %s", self.config.version, exc)
            return "refused"
        old_version, self.settings, self.config = self.config.version, new, snap
        logging.getLogger().setLevel(new.log_level.upper())
        self.http.timeout = httpx.Timeout(new.http.timeout_s, connect=min(1.0, new.http.timeout_s))
        for fn in self._on_refresh:
            await fn(new)
        self.refreshes += 1
        log.info("configuration refreshed: version %s -> %s", old_version, snap.version)
        try:  # last, and best effort: a snapshot that can't be written must not undo an applied refresh
            save_snapshot(self.rt, snap)
        except OSError as exc:
            log.warning("could not save the configuration snapshot: %s", exc)
        return "applied"

    # -- lifecycle (lifespan) ----------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.settings.faults.slow_start_s:
            log.warning("slow start (faults.slow_start_s): %.1f s", self.settings.faults.slow_start_s)
            await asyncio.sleep(self.settings.faults.slow_start_s)
        if self.engine is not None and self.metadata is not None:
            try:
                await create_schema(self.engine, self.metadata)
            except SchemaOutdated as exc:
                log.error("cannot start %s: %s", self.rt.instance_id, exc)
                raise
        consul = consul_client(self.rt)
        self.discovery = Discovery(consul)
        self.resilience = ResilientStack(self.discovery, self.policies())
        self.http = service_client(self.resilience, timeout_s=self.settings.http.timeout_s)
        for fn in self._on_start:  # the service's own start-up (seed data, ...), with every client ready
            await fn()
        self.bus.on_connect(RefreshListener(self.rt, lambda _dest: self.refresh()).start)
        self.bus.start()
        if self.relay:
            self.relay.start()
        self._registration = ServiceRegistration(
            consul, self.rt, ttl_s=self.settings.registry.ttl_s,
            deregister_after=self.settings.registry.deregister_critical_after,
            meta=self.meta)
        await self._registration.start()

    async def leave(self) -> None:
        """The first step of a graceful shutdown (msa_kit.app.LeavingServer, the gateway's server): leave the
        registry, then keep serving for `registry.drain_s` — requests answered, events consumed — while callers'
        watches (and a platform's Service endpoints) drop this instance."""
        drain_s = self.settings.registry.drain_s
        log.info("SIGTERM: leaving the registry, then serving %.1f s more before stopping", drain_s)
        try:
            await self._registration.stop()
        except Exception as exc:  # a registry that is gone: its TTL check deregisters us anyway
            log.warning("could not leave the registry: %s", exc or type(exc).__name__)
        await asyncio.sleep(drain_s)

    async def stop(self) -> None:
        for fn in self._on_stop:
            await fn()
        await self._registration.stop()
        # Handlers in flight finish first: the events they raise are still relayed by this instance.
        await self.bus.stop_consuming()
        if self.relay:
            await self.relay.stop()
        await self.discovery.stop()
        await self.bus.close()
        await self.http.aclose()
        if self.engine is not None:
            await self.engine.dispose()

    async def readiness(self) -> dict[str, str]:
        checks = {"config": f"{self.config.source}@{self.config.version}"}
        # aio-pika clears `connected` while a robust connection is reconnecting; `is_closed` stays False then.
        connection = self.bus.connection
        checks["broker"] = "up" if connection is not None and connection.connected.is_set() else "down"
        if self.engine is not None:
            try:
                async with self.engine.connect() as conn:
                    await asyncio.wait_for(conn.execute(sa.text("SELECT 1")), 2)
                checks["database"] = "up"
            except Exception as exc:
                checks["database"] = f"down: {type(exc).__name__}"
        return checks
