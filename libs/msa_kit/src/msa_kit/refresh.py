"""Live configuration: Spring Cloud Bus's refresh, over RabbitMQ.

`POST /actuator/busrefresh[/{destination}]` on the config server publishes a `RefreshRemoteApplicationEvent` on the
topic exchange `msa.bus`. Every instance listens on a queue of its own; when the event's `destinationService`
(`**`, `catalog:**`, `catalog:catalog-2`) names it, it re-fetches its configuration, validates it, and applies it —
or keeps the settings it has and logs why the new ones were refused.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from typing import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from .runtime import Runtime

log = logging.getLogger(__name__)


def addressed_to(destination: str, service: str, instance_id: str) -> bool:
    """Spring Cloud Bus destinations: `<application>[:<instance>]`, `*`/`**` as wildcards."""
    app_pattern, _, instance_pattern = (destination or "**").partition(":")
    instance_pattern = instance_pattern or "**"
    glob = lambda p: p.replace("**", "*")  # noqa: E731 - fnmatch's * already crosses ':'-free names
    return fnmatch.fnmatchcase(service, glob(app_pattern)) and fnmatch.fnmatchcase(instance_id, glob(instance_pattern))


class RefreshListener:
    def __init__(self, rt: Runtime, on_refresh: Callable[[str], Awaitable[None]]) -> None:
        self.rt, self.on_refresh = rt, on_refresh
        self.exchange = f"{rt.namespace}msa.bus"
        # Named after the service too: a service's broker user may declare only its own instances' queues (access.py).
        self.queue = f"{rt.namespace}msa.bus.{rt.service}.{rt.instance_id}"

    async def start(self, connection: AbstractRobustConnection) -> None:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(self.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        # Exclusive: the queue lives exactly as long as this instance's connection (RabbitMQ 4 refuses
        # non-durable shared queues); a robust connection re-declares it after a reconnect.
        queue = await channel.declare_queue(self.queue, exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="refresh")
        await queue.consume(self._on_message)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        async with message.process(ignore_processed=True):
            try:
                event = json.loads(message.body)
                destination = str(event.get("destinationService", "**"))
            except (ValueError, AttributeError):
                log.warning("ignoring an unreadable bus message")
                return
            if addressed_to(destination, self.rt.service, self.rt.instance_id):
                log.info("refresh requested for %s by %s", destination, event.get("originService", "?"))
                await self.on_refresh(destination)
