"""The registry's state machine: services, their health checks, the KV store and Consul's indexes.

Plain Python with no web or network code, so it can be driven and tested with a fake clock. The HTTP
layer (api.py) translates requests into these calls, and checks.py drives time (TTL expiry, reaping)
and feeds in the results of HTTP/TCP probes.

How Consul's indexes work, and why they matter to clients:
- every write gets the next number of one monotonic *raft index* (we have no raft; a counter is the same thing
  for a single node);
- each "table" remembers the index of its last write: "services", "checks", "kvs", "tombstones", and one per
  service name, "service.<name>", bumped when an instance of that name or one of its checks changes;
- a read answers with the index of what it looked at (X-Consul-Index). A *blocking query* sends that index back
  and is held until the index of what it watches moves past it, which is how clients watch without polling.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "PASSING", "WARNING", "CRITICAL", "STATUSES", "Node", "CheckDefinition", "ServiceDefinition",
    "Service", "Check", "KVEntry", "HealthEntry", "Registry", "UnknownCheck", "NotATTLCheck",
]

Status = Literal["passing", "warning", "critical"]
PASSING: Status = "passing"
WARNING: Status = "warning"
CRITICAL: Status = "critical"
STATUSES: tuple[str, ...] = (PASSING, WARNING, CRITICAL)

log = logging.getLogger("msa_discovery")


class UnknownCheck(LookupError):
    """An update or deregistration of a check this agent does not have (a 404, so a client knows to re-register)."""

    def __init__(self, check_id: str) -> None:
        super().__init__(f'Unknown check ID "{check_id}". Ensure that the check ID is passed, not the check name.')


class NotATTLCheck(ValueError):
    """A TTL update (pass/warn/fail/update) of a check the registry probes itself (HTTP/TCP): a 500 in Consul."""

    def __init__(self, check_id: str) -> None:
        super().__init__(f'CheckID "{check_id}" does not have associated TTL')


@dataclass(frozen=True)
class Node:
    name: str
    id: str
    address: str
    datacenter: str = "dc1"


@dataclass(frozen=True, eq=False)  # compared by identity: a re-registration makes a new definition
class CheckDefinition:
    check_id: str
    name: str
    service_id: str | None  # None for node-level checks (serfHealth, or one registered without a ServiceID)
    ttl: float | None = None
    http: str | None = None
    tcp: str | None = None
    interval: float | None = None
    timeout: float | None = None
    method: str = "GET"
    header: dict[str, list[str]] = field(default_factory=dict)
    tls_skip_verify: bool = False
    deregister_after: float | None = None
    notes: str = ""
    initial_status: Status = CRITICAL

    @property
    def type(self) -> str:
        return "ttl" if self.ttl else "http" if self.http else "tcp" if self.tcp else ""


@dataclass(frozen=True, eq=False)
class ServiceDefinition:
    id: str
    name: str
    address: str = ""
    port: int = 0
    tags: tuple[str, ...] = ()
    meta: dict[str, str] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=lambda: {"Passing": 1, "Warning": 1})
    enable_tag_override: bool = False
    tagged_addresses: dict[str, object] = field(default_factory=dict)


@dataclass
class Service:
    definition: ServiceDefinition
    create_index: int
    modify_index: int
    # False for catalog-only entries that no client registered through the agent API, like Consul's own "consul"
    # service: they show in the catalog and health endpoints but not in /v1/agent/services.
    local: bool = True

    @property
    def id(self) -> str:
        return self.definition.id

    @property
    def name(self) -> str:
        return self.definition.name


@dataclass
class Check:
    definition: CheckDefinition
    status: Status
    output: str
    create_index: int
    modify_index: int
    critical_since: float | None  # clock time it turned critical; drives DeregisterCriticalServiceAfter
    ttl_deadline: float | None  # clock time a TTL check expires unless updated first
    # False for the catalog-only serfHealth, which the servers keep for each node (Consul's leader writes it from
    # gossip): it shows in the health endpoints but not in /v1/agent/checks, and cannot be updated or removed there.
    local: bool = True

    @property
    def id(self) -> str:
        return self.definition.check_id


@dataclass
class KVEntry:
    key: str
    value: bytes | None
    flags: int
    create_index: int
    modify_index: int
    lock_index: int = 0


@dataclass
class HealthEntry:
    """One row of /v1/health/service/<name>: an instance, its node, and every check that bears on it."""

    node: Node
    service: Service
    checks: list[Check]

    @property
    def passing(self) -> bool:
        return all(c.status == PASSING for c in self.checks)


class Registry:
    def __init__(self, node: Node, clock: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self._clock = clock
        self.index = 0
        # Bumped by every change, including the ones that are not writes (a heartbeat moving a TTL deadline):
        # what the persister watches to know that the data dir is behind (persistence.py).
        self.revision = 0
        self._tables: dict[str, int] = {}
        self.services: dict[str, Service] = {}
        self.checks: dict[str, Check] = {}
        # Secondary indexes, so that a read of one service costs the same with 10 or 1,000 instances registered
        # (the benchmark's load: a full scan per read was most of the registry's time). Kept in step by the _put_*
        # and _drop_* helpers, the only code that changes `services` and `checks`.
        self._ids_by_name: dict[str, set[str]] = {}
        self._check_ids_by_owner: dict[str | None, set[str]] = {}  # service id (None: node checks) -> check ids
        self.kv: dict[str, KVEntry] = {}
        self._tombstones: dict[str, int] = {}  # deleted key -> index of the delete, so prefix watches see deletes
        # One Event per "generation": every write sets the current one and replaces it. A waiter takes the current
        # Event, so it cannot miss a write that happens after it looked (no lock needed on one event loop).
        self._changed = asyncio.Event()
        self._released = False  # set at shutdown: blocking queries answer at once
        # A fresh Consul server already holds its own node, serfHealth check and "consul" service; so do we.
        idx = self._write("nodes", "services", "checks", "service.consul")
        consul = ServiceDefinition(id="consul", name="consul", port=8300, weights={"Passing": 1, "Warning": 1})
        self._put_service(Service(consul, idx, idx, local=False))
        serf = CheckDefinition("serfHealth", "Serf Health Status", None, initial_status=PASSING)
        self._put_check(Check(serf, PASSING, "Agent alive and reachable", idx, idx, None, None, local=False))

    def _put_service(self, s: Service) -> None:
        old = self.services.get(s.id)
        if old is not None and old.name != s.name:
            self._discard(self._ids_by_name, old.name, s.id)
        self.services[s.id] = s
        self._ids_by_name.setdefault(s.name, set()).add(s.id)

    def _drop_service(self, service_id: str) -> None:
        s = self.services.pop(service_id)
        self._discard(self._ids_by_name, s.name, service_id)

    def _put_check(self, c: Check) -> None:
        old = self.checks.get(c.id)
        if old is not None:  # a check id may move to another service on re-registration
            self._discard(self._check_ids_by_owner, old.definition.service_id, c.id)
        self.checks[c.id] = c
        self._check_ids_by_owner.setdefault(c.definition.service_id, set()).add(c.id)

    def _drop_check(self, check_id: str) -> None:
        c = self.checks.pop(check_id)
        self._discard(self._check_ids_by_owner, c.definition.service_id, check_id)

    @staticmethod
    def _discard(index: dict, key: object, member: str) -> None:  # type: ignore[type-arg]
        members = index.get(key)
        if members is not None:
            members.discard(member)
            if not members:
                del index[key]

    def _tables_of(self, service_id: str | None) -> list[str]:
        """The per-name indexes a change to a check of this owner moves. A node-level check bears on every instance
        on the node, so it moves every service name's index, as Consul's updateAllServiceIndexesOfNode does: a
        watcher of any service is woken when, say, a node check turns critical."""
        if service_id is None:
            return [f"service.{name}" for name in self._ids_by_name]
        svc = self.services.get(service_id)
        return [f"service.{svc.name}"] if svc else []

    # -- indexes and waiting ------------------------------------------------------------------------------------

    def _write(self, *tables: str) -> int:
        self.index += 1
        self.revision += 1
        for t in tables:
            self._tables[t] = self.index
        self._wake()
        return self.index

    def _wake(self) -> None:
        # Set *and replace*: awaiting an Event that stays set never yields, so waiters would spin.
        self._changed.set()
        self._changed = asyncio.Event()

    def table_index(self, *tables: str) -> int:
        # Consul never answers with index 0: clients treat 0 as "don't block".
        return max([self._tables.get(t, 0) for t in tables] + [1])

    def service_index(self, name: str) -> int:
        """The index a health/catalog query for one service name reports and blocks on."""
        if f"service.{name}" in self._tables:
            return self._tables[f"service.{name}"]
        # A name with no instances reports when the last service of any name went away ("extinction"); so a
        # watcher of a missing name is woken when it appears (its service.<name> index is then newer).
        return self.table_index("service_last_extinction") if "service_last_extinction" in self._tables \
            else self.table_index("services")

    async def wait_for(self, index_of: Callable[[], int], after: int, timeout: float) -> None:
        """Block until index_of() > after, or timeout seconds pass: the heart of a blocking query."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while index_of() <= after and not self._released:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return

    def release_waiters(self) -> None:
        """Shutting down: let every parked blocking query answer now (with what it has), not be cut off."""
        self._released = True
        self._wake()

    async def wait_changed(self, timeout: float | None) -> None:
        """Wait for the next write of any kind (used by the check runner)."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    def now(self) -> float:
        return self._clock()

    # -- services and checks ------------------------------------------------------------------------------------

    def register(self, service: ServiceDefinition, checks: list[CheckDefinition],
                 replace_existing_checks: bool = False) -> None:
        """Add or replace an instance and its checks (Consul's PUT /v1/agent/service/register)."""
        now = self._clock()
        old = self.services.get(service.id)
        tables = {"services", "checks", f"service.{service.name}"}
        if old is not None:
            tables.add(f"service.{old.name}")
        idx = self._write(*tables)
        self._put_service(Service(service, old.create_index if old else idx, idx))
        new_ids = {d.check_id for d in checks}
        if replace_existing_checks:
            for c in self._checks_of(service.id):
                if c.id not in new_ids:
                    self._drop_check(c.id)
        for d in checks:
            prev = self.checks.get(d.check_id)
            # Like Consul, re-registering keeps a known check's last status and output, so an instance that
            # re-registers (e.g. after a restart of its client) does not flap to critical and back.
            status, output = (prev.status, prev.output) if prev else (d.initial_status, "")
            self._put_check(Check(
                d, status, output, prev.create_index if prev else idx, idx,
                critical_since=now if status == CRITICAL else None,
                ttl_deadline=now + d.ttl if d.ttl else None,
            ))
        log.info("registered %s %s (%s:%s) tags=%s checks=%s", "updated" if old else "new", service.id,
                 service.address or self.node.address, service.port, list(service.tags),
                 [f"{d.check_id}={self.checks[d.check_id].status}" for d in checks])

    def deregister(self, service_id: str, reason: str = "deregistered") -> bool:
        svc = self.services.get(service_id)
        if svc is None or not svc.local:
            return False
        idx = self._write("services", "checks", f"service.{svc.name}")
        self._drop_service(service_id)
        for c in self._checks_of(service_id):
            self._drop_check(c.id)
        if svc.name not in self._ids_by_name:
            # Last instance of that name gone: its per-name index goes, and "extinction" remembers when.
            del self._tables[f"service.{svc.name}"]
            self._tables["service_last_extinction"] = idx
        log.info("%s %s (service %s)", reason, service_id, svc.name)
        return True

    def register_check(self, d: CheckDefinition) -> None:
        """Add or replace one check (Consul's PUT /v1/agent/check/register): a node-level check when d.service_id
        is None, else a check of that (existing) instance, beside the ones its registration brought."""
        if d.service_id is not None and d.service_id not in self.services:
            raise LookupError(f"ServiceID {d.service_id!r} does not exist")
        now = self._clock()
        prev = self.checks.get(d.check_id)
        tables = {"checks", *self._tables_of(d.service_id)}
        if prev is not None:
            tables.update(self._tables_of(prev.definition.service_id))
        idx = self._write(*tables)
        # Consul snapshots a known check's state before re-adding it and puts it back after, "to avoid flapping".
        status, output = (prev.status, prev.output) if prev else (d.initial_status, "")
        self._put_check(Check(d, status, output, prev.create_index if prev else idx, idx,
                              critical_since=now if status == CRITICAL else None,
                              ttl_deadline=now + d.ttl if d.ttl else None))
        log.info("registered %s check %s (%s) %s", "updated" if prev else "new", d.check_id,
                 f"service {d.service_id}" if d.service_id else "node", status)

    def deregister_check(self, check_id: str) -> None:
        """PUT /v1/agent/check/deregister/<id>: any check the agent holds, a service's own included."""
        c = self.checks.get(check_id)
        if c is None or not c.local:
            raise UnknownCheck(check_id)
        self._write("checks", *self._tables_of(c.definition.service_id))
        self._drop_check(check_id)
        log.info("deregistered check %s", check_id)

    def update_ttl(self, check_id: str, status: Status, output: str) -> None:
        """A client's heartbeat: PUT /v1/agent/check/pass|warn|fail|update. Restarts the TTL clock."""
        c = self.checks.get(check_id)
        if c is None or not c.local:
            raise UnknownCheck(check_id)
        if not c.definition.ttl:
            raise NotATTLCheck(check_id)
        c.ttl_deadline = self._clock() + c.definition.ttl
        self.revision += 1
        self._set_status(c, status, output)

    def record_result(self, definition: CheckDefinition, status: Status, output: str) -> None:
        """Result of a probe the registry ran itself (HTTP/TCP). Ignored if the check was replaced or removed
        while the probe was in flight."""
        c = self.checks.get(definition.check_id)
        if c is not None and c.definition is definition:
            self._set_status(c, status, output)

    def _set_status(self, c: Check, status: Status, output: str) -> None:
        # Unchanged status and output is not a write: TTL heartbeats must not wake every watcher.
        if c.status == status and c.output == output:
            return
        idx = self._write("checks", *self._tables_of(c.definition.service_id))
        if c.status != status:
            log.info("check %s %s -> %s%s", c.id, c.status, status, f": {output}" if output else "")
            c.critical_since = self._clock() if status == CRITICAL else None
        c.status, c.output, c.modify_index = status, output, idx

    def tick(self) -> float | None:
        """Apply what time has made due (TTL expiry, reaping); return when something next falls due."""
        now = self._clock()
        for c in list(self.checks.values()):
            if c.ttl_deadline is not None and c.ttl_deadline <= now:
                c.ttl_deadline = None  # stays expired until the next update restarts the clock
                last = "" if c.output.startswith("TTL expired") else c.output
                self._set_status(c, CRITICAL, f"TTL expired (last output before timeout follows): {last}"
                                 if last else "TTL expired")
        doomed = {c.definition.service_id for c in self.checks.values()
                  if c.definition.service_id and (t := self._reap_at(c)) is not None and t <= now}
        for service_id in sorted(doomed):  # type: ignore[type-var]
            self.deregister(service_id, reason="reaped (critical longer than DeregisterCriticalServiceAfter)")
        deadlines = [c.ttl_deadline for c in self.checks.values() if c.ttl_deadline is not None]
        deadlines += [t for c in self.checks.values() if (t := self._reap_at(c)) is not None]
        return min(deadlines, default=None)

    @staticmethod
    def _reap_at(c: Check) -> float | None:
        if c.definition.deregister_after is None or c.critical_since is None:
            return None
        return c.critical_since + c.definition.deregister_after

    def restore(self, index: int, services: list[Service], checks: list[Check], kv: list[KVEntry],
                tombstones: dict[str, int]) -> None:
        """Load what an earlier run persisted, before serving (Consul's agent: loadServices/loadChecks at start).

        Indexes continue from where they were, so X-Consul-Index never goes backwards across a restart and a KV
        `cas` taken before it still means the same thing. The restore itself is one write, so any watcher holding
        an index from before the restart wakes up and reads the restored state."""
        self.index = max(self.index, index)
        for s in services:
            self._put_service(s)
        for c in checks:
            self._put_check(c)
        self.kv.update((e.key, e) for e in kv)
        self._tombstones.update(tombstones)
        names = {f"service.{s.name}" for s in services}
        self._write("services", "checks", "kvs", "tombstones", *names, *self._tables_of(None))

    # -- reads --------------------------------------------------------------------------------------------------

    def _checks_of(self, service_id: str | None) -> list[Check]:
        return [self.checks[i] for i in sorted(self._check_ids_by_owner.get(service_id, ()))]

    def node_checks(self) -> list[Check]:
        return self._checks_of(None)

    def service_checks(self, service_id: str) -> list[Check]:
        return self._checks_of(service_id)

    def instances(self, name: str) -> list[Service]:
        return [self.services[i] for i in sorted(self._ids_by_name.get(name, ()))]

    def health(self, name: str) -> list[HealthEntry]:
        # Node checks count for every instance on the node: a dead node takes all its services down with it.
        node_checks = self.node_checks()
        return [HealthEntry(self.node, s, node_checks + self._checks_of(s.id)) for s in self.instances(name)]

    def catalog(self) -> dict[str, list[str]]:
        """Service name -> union of its instances' tags (GET /v1/catalog/services)."""
        out: dict[str, set[str]] = {}
        for s in self.services.values():
            out.setdefault(s.name, set()).update(s.definition.tags)
        return {name: sorted(tags) for name, tags in sorted(out.items())}

    # -- KV -----------------------------------------------------------------------------------------------------

    def kv_get(self, key: str) -> tuple[int, KVEntry | None]:
        e = self.kv.get(key)
        return (e.modify_index if e else self.table_index("kvs", "tombstones")), e

    def kv_list(self, prefix: str) -> tuple[int, list[KVEntry]]:
        entries = [e for k, e in sorted(self.kv.items()) if k.startswith(prefix)]
        idx = max([e.modify_index for e in entries] +
                  [i for k, i in self._tombstones.items() if k.startswith(prefix)] + [0])
        return (idx or self.table_index("kvs", "tombstones")), entries

    def kv_put(self, key: str, value: bytes | None, flags: int = 0, cas: int | None = None) -> bool:
        """Check-and-set: cas=0 means "only if absent", cas=N "only if ModifyIndex is still N"."""
        old = self.kv.get(key)
        if cas is not None and cas != (old.modify_index if old else 0):
            return False
        idx = self._write("kvs")
        self.kv[key] = KVEntry(key, value, flags, old.create_index if old else idx, idx)
        self._tombstones.pop(key, None)
        return True

    def kv_delete(self, key: str, recurse: bool = False, cas: int | None = None) -> bool:
        if recurse:
            doomed = [k for k in self.kv if k.startswith(key)]
        else:
            old = self.kv.get(key)
            if cas is not None and (old is None or cas != old.modify_index):
                return False
            doomed = [key] if old else []
        if doomed:
            idx = self._write("kvs", "tombstones")
            for k in doomed:
                del self.kv[k]
                self._tombstones[k] = idx
        return True
