"""An instance deregisters itself when it is stopped (SIGTERM), at once — not a TTL later — and registers again
when it comes back."""

from __future__ import annotations

import time

import httpx
import pytest

from support import Stack
from test_config_refresh import wait_for

pytestmark = pytest.mark.integration


def registered(stack: Stack) -> set[str]:
    return set(httpx.get(f"http://127.0.0.1:{stack.ports.discovery}/v1/agent/services").json())


def test_a_stopped_instance_deregisters_at_once_and_a_started_one_registers_again(stack: Stack):
    assert "order-2" in registered(stack)
    started = time.monotonic()
    stack.topology.stop("order-2")  # supervisord sends SIGTERM and waits for the exit
    gone = time.monotonic() - started
    assert "order-2" not in registered(stack)
    ttl = 3.0
    print(f"order-2 stopped and deregistered in {gone:.2f} s (its TTL is {ttl:g} s)")
    assert len(stack.topology.passing("order")) == 1
    stack.topology.start("order-2")
    wait_for(lambda: "order-2" in registered(stack), timeout=20, what="order-2 to register again")
    stack.topology.wait_passing("order", 2)
