"""SIGTERM with orders in flight, as a Kubernetes rollout or node drain sends it: the instance leaves discovery while
it still serves, finishes what it accepted, hands its outbox rows and unacked events over, and exits inside the
10 s budget (supervisord's stopwaitsecs, the pod's grace period in deploy/k8s). Nothing accepted fails and nothing
is lost.

On the quorum-queue stack (events.queue_type: quorum, the Kubernetes stack's setting), which also keeps this
test's orders out of the stock the shared SQLite stack's tests count on."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
import time
from urllib.parse import urlsplit

import pytest

from support import Api, Stack
from test_config_refresh import wait_for
from test_discovery_outage import Traffic, deepest_stock

pytestmark = pytest.mark.integration

BUDGET_S = 10.0
ORDERS_PER_S = 30  # three loops of 10/s: 60 to 100 orders around one stop


class Watch:
    """When the victim left the registry and when its listener stopped accepting, polled every 10 ms."""

    def __init__(self, stack: Stack, victim: str) -> None:
        self.stack, self.victim = stack, victim
        self.service = victim.rpartition("-")[0]
        u = urlsplit(stack.topology.url(victim))
        self.address = (u.hostname or "127.0.0.1", u.port or 0)
        self.left_registry: float | None = None
        self.stopped_listening: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + BUDGET_S + 5
        while not self._stop.is_set() and time.monotonic() < deadline:
            now = time.monotonic()
            if self.left_registry is None:
                ids = {e["Service"]["ID"] for e in self.stack.topology.passing(self.service)}
                if self.victim not in ids:
                    self.left_registry = now
            if self.stopped_listening is None:
                try:
                    socket.create_connection(self.address, timeout=0.2).close()
                except OSError:
                    self.stopped_listening = now
            self._stop.wait(0.01)

    def __enter__(self) -> "Watch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def unsent_outbox_rows(stack: Stack, service: str) -> int:
    with sqlite3.connect(f"file:{stack.var_dir / 'data' / f'{service}.db'}?mode=ro", uri=True, timeout=5) as db:
        return db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]


@pytest.mark.parametrize("victim", ["order-2", "catalog-2"])
def test_sigterm_with_orders_in_flight_loses_nothing_and_leaves_discovery_first(quorum_stack: Stack, victim: str):
    stack, topology = quorum_stack, quorum_stack.topology
    service = victim.rpartition("-")[0]
    api = Api(stack.gateway).sign_up_and_log_in()
    sku = deepest_stock(api, needed=150)
    loops = [Traffic(api, sku, interval=3 / ORDERS_PER_S, limit=20) for _ in range(3)]
    with contextlib.ExitStack() as running:
        for loop in loops:
            running.enter_context(loop)
        time.sleep(1.0)  # the victim is serving its share
        with Watch(stack, victim) as watch:
            asked = time.monotonic()
            topology.stop(victim)  # SIGTERM; returns when the process has exited (KILL only after 10 s)
            took = time.monotonic() - asked
        time.sleep(1.0)  # and the others carry on alone
    try:
        results = [r for loop in loops for r in loop.results]
        failures = [r for loop in loops for r in loop.failures]
        print(f"{victim}: SIGTERM → exit {took:.2f} s; left the registry after "
              f"{(watch.left_registry or 0) - asked:.3f} s, stopped listening after "
              f"{(watch.stopped_listening or 0) - asked:.3f} s; {len(results)} placements, {len(failures)} failed")
        assert took < BUDGET_S, f"{victim} needed {took:.1f} s to stop (budget {BUDGET_S:g} s)"
        assert watch.left_registry is not None and watch.stopped_listening is not None
        # The order Kubernetes' and Consul's users expect: out of the registry first, still answering for a while.
        assert watch.left_registry < watch.stopped_listening, "it stopped listening before it left the registry"
        assert "SIGTERM: leaving the registry" in topology.log_tail(victim, 200)
        assert len(results) >= 40 and not failures, failures[:5]

        # Every accepted order reaches its end: the events raised around the stop were relayed, the ones the victim
        # had been delivered but not acknowledged were consumed elsewhere.
        placed = [order["id"] for order in api.orders()]
        assert len(placed) == len(results)
        pending = [o for o in (api.wait_final(i, timeout=20) for i in placed) if o["status"] == "PENDING"]
        assert not pending, f"{len(pending)} orders never left PENDING, e.g. {pending[0]}"
        wait_for(lambda: unsent_outbox_rows(stack, service) == 0 and unsent_outbox_rows(stack, "order") == 0,
                 timeout=15, what="every outbox row to be sent")
    finally:
        topology.start(victim)
        topology.wait_passing(service, 2)
