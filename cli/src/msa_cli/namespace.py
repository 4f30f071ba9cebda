"""A topology's broker names carry its namespace (tests and benches use a unique one, so they never collide with a
running sandbox). Whoever made a namespace removes what it left on the shared broker: its queues and exchanges."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

import aio_pika

if TYPE_CHECKING:
    from .runner import Topology

SERVICES = ("user", "catalog", "order", "gateway", "producer", "consumer")  # the last two: the events bench's


async def _drop(amqp_url: str, namespace: str, services: tuple[str, ...]) -> None:
    connection = await aio_pika.connect(amqp_url, timeout=5)
    async with connection:
        channel = await connection.channel()
        for service in services:
            for suffix in ("events", "events.retry", "events.dlq"):
                await channel.queue_delete(f"{namespace}{service}.{suffix}")
        await channel.queue_delete(f"{namespace}msa.events.unrouted")  # where unrouted events are parked
        for exchange in ("msa.events", "msa.events.unrouted", "msa.bus"):
            await channel.exchange_delete(f"{namespace}{exchange}")


def drop_namespace(amqp_url: str, namespace: str, services: tuple[str, ...] = SERVICES) -> None:
    """Delete every queue and exchange a topology in `namespace` declared. Never call it with the empty namespace:
    that would be the sandbox `make up` runs."""
    if not namespace:
        raise ValueError("refusing to drop the default namespace (a running sandbox's broker names)")
    asyncio.run(_drop(amqp_url, namespace, services))


@contextmanager
def scratch_topology(prefix: str = "bench", timeout: float = 60.0, **spec_kwargs: Any) -> Iterator[Topology]:
    """A whole topology on free ports, in a var dir and a broker namespace of its own, for a benchmark or a
    tool: up on entry; down, its var dir removed and its broker names dropped on exit."""
    from .runner import Topology
    from .spec import Ports, default_spec

    with tempfile.TemporaryDirectory(prefix=f"msa-{prefix}-") as tmp:
        namespace = f"{prefix}-{uuid.uuid4().hex[:6]}."
        spec = default_spec(Ports.free(), var_dir=tmp, namespace=namespace, **spec_kwargs)
        topology = Topology(spec)
        topology.up(timeout=timeout)
        try:
            yield topology
        finally:
            topology.down()
            drop_namespace(spec.amqp_url, namespace)
