"""A crashed instance: its TTL runs out, discovery drops it, callers stop routing to it, supervisord restarts it.

Observable: every caller logs each attempt at an instance. The gateway's access log names the instance that
answered (`"upstream": "catalog-2"`) and the kit logs every refused attempt (`catalog instance catalog-2 refused the
connection`); the order service calls catalog too (prices), so its logs count as well. After catalog-2 has left
the passing set, and the callers' watchers have heard (a blocking query: milliseconds), no line may name it.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import time
from pathlib import Path

import pytest

from msa_cli.errors import TopologyError
from support import Api, Stack
from test_discovery_outage import HEARTBEAT_S, TOLERANCE_S, TTL_S, Traffic, deepest_stock, heal

pytestmark = pytest.mark.integration

VICTIM = "catalog-2"
CALLERS = ("gateway", "order-1", "order-2")  # every program that calls catalog
NOTICE_S = 1.0  # how long callers may still try the instance after it left the passing set


def attempts_at(path: Path, instance: str) -> list[float]:
    """Wall times of the log lines in which a caller tried `instance` (answered or refused)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        msg = str(doc.get("msg", ""))
        # The access line names the instance that answered (a field, or `upstream=` in older text lines).
        if doc.get("upstream") == instance or f"upstream={instance} " in msg or f"instance {instance} refused" in msg:
            ts = doc["ts"]  # 2025-01-01T12:00:00.123Z, UTC
            out.append(calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + int(ts[20:23]) / 1000)
    return out


def passing_ids(stack: Stack, service: str) -> set[str]:
    return {e["Service"]["ID"] for e in stack.topology.passing(service)}


def test_a_killed_instance_leaves_the_passing_set_within_its_ttl_and_gets_no_more_traffic(stack: Stack, api: Api):
    topology = stack.topology
    original_pid = topology.pid(VICTIM)
    try:
        with Traffic(api, deepest_stock(api), kinds=("products", "order")) as loop:
            time.sleep(1.0)  # traffic reaches both catalog instances: the observable is live
            assert attempts_at(topology.log_path("gateway"), VICTIM), "the gateway never routed to catalog-2 before"

            # kill -9, and kill again every process supervisord restarts in its place until discovery has dropped it
            # and we have watched the callers for a while: a crash loop. A single kill races the TTL: the new process
            # needs about as long to boot as the TTL takes to run out, and if it re-registers first, Consul's rule
            # (a re-registered check keeps its status) keeps catalog-2 passing without it ever leaving the set.
            killed = [topology.kill(VICTIM)]
            killed_at, killed_wall = time.monotonic(), time.time()
            left_at = left_wall = None
            while time.monotonic() - killed_at < TTL_S + TOLERANCE_S + 2.0:
                pid = topology.pid(VICTIM)
                if pid and pid not in killed:
                    with contextlib.suppress(TopologyError, ProcessLookupError):  # it may die first on its own
                        killed.append(topology.kill(VICTIM))
                if left_at is None and VICTIM not in passing_ids(stack, "catalog"):
                    left_at, left_wall = time.monotonic(), time.time()
                if left_at is not None and time.monotonic() - left_at > NOTICE_S + 1.5:
                    break
                time.sleep(0.02)
            dead_until_wall = time.time()
            assert left_at is not None, f"{VICTIM} still passing {time.monotonic() - killed_at:.1f} s after kill -9"

            # Now let supervisord bring it back (it restarts on its own; we only stop killing), traffic still flowing.
            topology.wait_passing("catalog", 2, timeout=30)
            back_at = time.monotonic()
            time.sleep(0.5)
        late = sorted(t for caller in CALLERS for t in attempts_at(topology.log_path(caller), VICTIM)
                      if left_wall + NOTICE_S < t < dead_until_wall)
        tried = [t for caller in CALLERS for t in attempts_at(topology.log_path(caller), VICTIM)
                 if killed_wall < t < left_wall]
        print(f"\n{VICTIM} killed (pid {original_pid}; {len(killed) - 1} restart(s) killed too): left the passing set "
              f"{left_at - killed_at:.2f} s after kill -9 (TTL {TTL_S:.0f} s, heartbeat every {HEARTBEAT_S:.0f} s); "
              f"passing again {back_at - killed_at:.1f} s after the kill as pid {topology.pid(VICTIM)}\n"
              f"  calls that tried {VICTIM} while dead, before it left the set: {len(tried)} (each failed over); "
              f"after it left + {NOTICE_S:.0f} s: {len(late)}\n  traffic: {loop.summary()}")
        assert not loop.failures, loop.failures[:5]
        assert left_at - killed_at <= TTL_S + TOLERANCE_S
        assert not late, f"{len(late)} attempt(s) at {VICTIM} after it left the passing set"
        assert topology.pid(VICTIM) not in (None, *killed), "supervisord did not restart it"
    finally:
        heal(stack)
