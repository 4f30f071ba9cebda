"""Workshop 1 — kill an instance under load (client-side load balancing, outlier ejection, auto-recovery).

The twin of workshop/01-kill-an-instance.md: steady traffic through the gateway; kill -9 one of the two catalog
instances; no client sees an error, the callers stop trying the dead instance within a second (they eject it
themselves, without waiting for discovery), and supervisord brings it back.
"""

from __future__ import annotations

import calendar
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from support import ADMIN_TOKEN, Api, Stack, assert_healed, msa
from test_config_refresh import wait_for
from test_discovery_failover import CALLERS, attempts_at
from test_discovery_outage import Traffic, deepest_stock, heal

pytestmark = pytest.mark.integration
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
VICTIM = "catalog-2"


def resilience(stack: Stack, program: str) -> dict[str, Any]:
    return httpx.get(stack.topology.url(program) + "/admin/resilience", headers=ADMIN, timeout=5).json()["targets"]


def log_times(path: Path, needle: str) -> list[float]:
    """Wall times of the JSON log lines of `path` whose message contains `needle`."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if needle in line:
            ts = json.loads(line)["ts"]  # 2026-01-01T12:00:00.123Z, UTC
            out.append(calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + int(ts[20:23]) / 1000)
    return out


def ejection_times(stack: Stack, victim: str) -> list[float]:
    """When each caller ejected `victim` (the kit logs it)."""
    return [t for caller in CALLERS for t in log_times(stack.topology.log_path(caller), f"instance {victim} ejected")]


def answers(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_killing_an_instance_under_load_fails_no_request(stack: Stack, api: Api):
    topology = stack.topology
    before_ejections = len(ejection_times(stack, VICTIM))
    try:
        with Traffic(api, deepest_stock(api, needed=200), kinds=("products", "order"), interval=0.02) as loop:
            time.sleep(1.0)
            killed_wall, pid = time.time(), topology.pid(VICTIM)
            msa(stack, "chaos", "crash", "catalog", "--instance", VICTIM, "--kill")  # the page's command
            wait_for(lambda: topology.pid(VICTIM) not in (None, pid), timeout=20, what="supervisord's restart")
            wait_for(lambda: answers(topology.url(VICTIM)), timeout=20, what="the new catalog-2 to serve")
            back_wall = time.time()
            time.sleep(0.5)
        late = sorted(t for caller in CALLERS for t in attempts_at(topology.log_path(caller), VICTIM)
                      if killed_wall + 1.0 < t < back_wall)
        tried = [t for caller in CALLERS for t in attempts_at(topology.log_path(caller), VICTIM)
                 if killed_wall < t <= killed_wall + 1.0]
        ejected = [t - killed_wall for t in ejection_times(stack, VICTIM)[before_ejections:] if t >= killed_wall]
        print(f"\n{VICTIM} killed under load: {loop.summary()}; {len(tried)} attempt(s) at it in the first second "
              f"(each failed over), {len(late)} after; ejected by {len(ejected)} caller(s) "
              f"{', '.join(f'{e * 1000:.0f} ms' for e in ejected)} after the kill; serving again after "
              f"{back_wall - killed_wall:.1f} s (new pid {topology.pid(VICTIM)})")
        assert not loop.failures, loop.failures[:5]
        assert not late, f"{len(late)} attempt(s) at the dead {VICTIM} more than 1 s after its death"
    finally:
        heal(stack)
        msa(stack, "chaos", "heal")
        assert_healed(stack)
