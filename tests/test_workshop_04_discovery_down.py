"""Workshop 04, discovery goes down (workshop/04-discovery-down.md), step by step: a small load through the gateway,
`msa chaos stop discovery`, `msa status`, `msa chaos start discovery`, `msa chaos heal`. Callers route from their
cached copy of the registry, so not one request fails. (tests/test_discovery_outage.py is the thorough version.)"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from msa_cli import load as load_generator
from support import Stack, assert_healed, msa

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RATE, SECONDS, DOWN_S = 4.0, 9.0, 4.0


def test_workshop_04_discovery_down_cached_instances_keep_traffic_flowing(stack: Stack):
    report: list[load_generator.Report] = []
    # `msa load --rate 4 --seconds 9` in another terminal: the CLI's own load generator, in a thread.
    load = threading.Thread(target=lambda: report.append(
        asyncio.run(load_generator.run(stack.gateway, RATE, SECONDS, live=False))))
    try:
        load.start()
        time.sleep(1.5)  # traffic flowing first: every caller has looked its targets up
        stopped = time.monotonic()
        msa(stack, "chaos", "stop", "discovery")
        status = msa(stack, "status", ok=False)  # exit 1: discovery refused; nobody can be shown as passing
        assert "discovery" in status and "refused" in status, status
        time.sleep(max(0.0, stopped + DOWN_S - time.monotonic()))
        msa(stack, "chaos", "start", "discovery")
        back = time.monotonic()
        for service, count in stack.topology.spec.expected.items():
            stack.topology.wait_passing(service, count, timeout=20)
        all_passing = time.monotonic() - back
        status = msa(stack, "status")  # exit 0: everything healthy and passing again
        load.join(timeout=60)
        assert report, "the load generator did not finish"
        total = report[0].total
        failed = sum(total.failures.values())
        print(f"\n[04] discovery down {back - stopped:.1f} s; every instance passing {all_passing:.2f} s after the "
              f"start; load: {total.requests} requests, {failed} failed, p50 {total.pct(50):.0f} ms, "
              f"p99 {total.pct(99):.0f} ms; {dict(total.failures)}")
        assert total.requests >= RATE * SECONDS * 2  # each step is 2-3 requests
        assert failed == 0, dict(total.failures)
    finally:
        load.join(timeout=60)
        msa(stack, "chaos", "heal")
        assert_healed(stack)
