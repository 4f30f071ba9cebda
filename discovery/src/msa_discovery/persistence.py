"""Surviving a restart the way Consul's agent does: registrations, check states and KV kept in a data dir.

Why: with everything in memory, a restarted registry knows no instance until each one's next heartbeat
re-registers it, and for that moment every watcher is told "no passing instance". Consul's agent writes each
service and check it is given to its data dir (persistService / persistCheck), writes a TTL check's state on every
update (persistCheckState, with `Expires = now + TTL`), and at start loads them back (loadServices / loadChecks).
We follow those rules:

- every instance and check comes back (with its indexes, so X-Consul-Index stays monotonic), node-level checks
  registered through /v1/agent/check/register included;
- a TTL check gets its last status and output back **only if its TTL had not yet run out** (Consul:
  `if now >= Expires { don't restore }`), and its TTL clock starts afresh from the load, as a restarted Consul
  agent starts a new TTL timer. A TTL that ran out while we were down is not evidence that the instance is alive,
  so that check starts from its registered initial status (critical, unless the registration said otherwise)
  until the instance's next heartbeat;
- HTTP and TCP checks start from their initial status and are probed again at once;
- KV entries come back unchanged. The node's own serfHealth check and "consul" service are not persisted.

One JSON document, rewritten whole at most every `interval` (0.5 s) when something changed (heartbeats included,
since they move TTL deadlines), and once more on shutdown, via a temporary file and an atomic rename, so a crash
at any moment leaves the previous or the next snapshot, never half of one. After a crash, a TTL deadline on disk
may be up to `interval` older than the real one: a check then counts as expired up to that much early, the safe
side. (Consul writes one small file per TTL check on every update instead; with one document for everything, doing
that on every heartbeat would rewrite ~700 kB a thousand times a second for 1,000 instances.) Deadlines live on
the monotonic clock in memory and are written as wall-clock times, the only clock that means anything to the next
process.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from .registry import CRITICAL, CheckDefinition, Check, KVEntry, Registry, Service, ServiceDefinition

__all__ = ["Persister", "snapshot", "restore", "FORMAT"]

log = logging.getLogger("msa_discovery")
FORMAT = 1  # bump when the document's shape changes; an unknown format is not loaded


def _shallow(definition: ServiceDefinition | CheckDefinition) -> dict[str, Any]:
    # Not dataclasses.asdict: its deep copy made a snapshot of 1,000 instances cost 30 ms of the event loop.
    # The values are str, numbers, tuples and flat dicts, which json.dumps takes as they are.
    return {f.name: getattr(definition, f.name) for f in fields(definition)}


def snapshot(reg: Registry, wall_now: float) -> dict[str, Any]:
    """The registry as a JSON-able document (what a restart must not forget)."""
    mono_now = reg.now()
    services = [{**_shallow(s.definition), "create_index": s.create_index, "modify_index": s.modify_index}
                for s in reg.services.values() if s.local]
    checks = []
    for c in reg.checks.values():
        if not c.local:  # the node's own serfHealth: a new process has its own
            continue
        expires = None if c.ttl_deadline is None else wall_now + (c.ttl_deadline - mono_now)
        checks.append({**_shallow(c.definition), "status": c.status, "output": c.output, "expires": expires,
                       "create_index": c.create_index, "modify_index": c.modify_index})
    kv = [{"key": e.key, "value": base64.b64encode(e.value).decode() if e.value is not None else None,
           "flags": e.flags, "create_index": e.create_index, "modify_index": e.modify_index,
           "lock_index": e.lock_index} for e in reg.kv.values()]
    return {"format": FORMAT, "saved_at": wall_now, "index": reg.index, "services": services, "checks": checks,
            "kv": kv, "tombstones": dict(reg._tombstones)}


def restore(reg: Registry, doc: dict[str, Any], wall_now: float) -> dict[str, int]:
    """Load a snapshot into a fresh registry with the check states Consul would have after a restart.
    Returns counts for the log line."""
    if doc.get("format") != FORMAT:
        raise ValueError(f"unknown snapshot format {doc.get('format')!r}")
    mono_now = reg.now()
    services = []
    for raw in doc["services"]:
        d = dict(raw)
        created, modified = d.pop("create_index"), d.pop("modify_index")
        d["tags"] = tuple(d["tags"])
        services.append(Service(ServiceDefinition(**d), created, modified))
    known = {s.id for s in services}
    checks, counts = [], {"instances": len(services), "restored": 0, "expired": 0, "reset": 0, "kv": len(doc["kv"])}
    for raw in doc["checks"]:
        d = dict(raw)
        status, output, expires = d.pop("status"), d.pop("output"), d.pop("expires")
        created, modified = d.pop("create_index"), d.pop("modify_index")
        definition = CheckDefinition(**d)
        if definition.service_id is not None and definition.service_id not in known:
            continue
        if definition.ttl:
            alive = expires is not None and wall_now < expires
            counts["restored" if alive else "expired"] += 1
        else:  # HTTP/TCP: probed again straight away; until then, what a new registration would have
            alive = False
            counts["reset"] += 1
        if not alive:
            status, output = definition.initial_status, ""
        checks.append(Check(definition, status, output, created, modified,
                            critical_since=mono_now if status == CRITICAL else None,
                            ttl_deadline=mono_now + definition.ttl if definition.ttl else None))
    kv = [KVEntry(e["key"], base64.b64decode(e["value"]) if e["value"] is not None else None, e["flags"],
                  e["create_index"], e["modify_index"], e["lock_index"]) for e in doc["kv"]]
    reg.restore(int(doc["index"]), services, checks, kv, {k: int(v) for k, v in doc["tombstones"].items()})
    return counts


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one


class Persister:
    """Keeps `<data_dir>/registry.json` at most `interval` seconds behind the registry."""

    def __init__(self, registry: Registry, data_dir: Path, interval: float = 0.5) -> None:
        self.registry, self.interval = registry, interval
        self.path = Path(data_dir) / "registry.json"
        self._saved_revision: int | None = None

    def load(self) -> None:
        """Restore the last snapshot, if any. A file we cannot read is set aside, not fatal: a registry that
        starts empty is what we had before persistence, and clients re-register on their next heartbeat."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            log.info("no saved registry at %s: starting empty", self.path)
            return
        try:
            doc = json.loads(self.path.read_bytes())
            wall_now = time.time()
            counts = restore(self.registry, doc, wall_now)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            aside = self.path.with_name(self.path.name + ".unreadable")
            os.replace(self.path, aside)
            log.error("could not restore %s (%s: %s); moved it to %s and starting empty",
                      self.path, type(exc).__name__, exc, aside)
            return
        log.info("restored %d instance(s) and %d KV key(s) from %s, saved %.1f s ago: TTL checks %d restored with "
                 "their status, %d expired while we were down (back to their initial status), %d HTTP/TCP checks "
                 "to probe again", counts["instances"], counts["kv"], self.path, wall_now - doc["saved_at"],
                 counts["restored"], counts["expired"], counts["reset"])
        self._saved_revision = self.registry.revision

    def save(self) -> None:
        revision = self.registry.revision
        _write_atomically(self.path, json.dumps(snapshot(self.registry, time.time())).encode())
        self._saved_revision = revision

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self.registry.revision == self._saved_revision:
                continue
            revision = self.registry.revision
            # Built on the loop (a consistent view), written in a thread (fsync must not stall every request).
            data = json.dumps(snapshot(self.registry, time.time())).encode()
            try:
                await asyncio.to_thread(_write_atomically, self.path, data)
                self._saved_revision = revision
            except OSError as exc:  # a full disk must not take the registry down; keep serving, retry next tick
                log.error("could not save the registry to %s: %s", self.path, exc)
