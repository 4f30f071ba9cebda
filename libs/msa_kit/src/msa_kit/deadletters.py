"""Operators' view of a service's dead-letter queue: list, inspect, replay.

Listing takes messages without acking and puts them all back at the end (AMQP has no "peek"). Replay moves a
message back into the service's own queue (not the exchange: other subscribers already had it) with its attempt
count reset, so a fixed handler gets a fresh set of tries; the inbox still guarantees at most one effect.
"""

from __future__ import annotations

import json
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from .events import ATTEMPT_HEADER, EventBus


def _describe(message: AbstractIncomingMessage) -> dict[str, Any]:
    # RabbitMQ's own x-death header holds timestamps and bytes: render every header as plain JSON.
    headers = json.loads(json.dumps(message.headers or {}, default=lambda v: v.decode(errors="replace")
                                    if isinstance(v, bytes) else str(v)))
    try:
        body: Any = json.loads(message.body)
    except ValueError:
        body = message.body.decode(errors="replace")
    return {"message_id": message.message_id, "type": message.type, "reason": headers.get("x-msa-reason"),
            "attempts": headers.get(ATTEMPT_HEADER), "routing_key": headers.get("x-msa-original-routing-key"),
            "headers": headers, "body": body}


class DeadLetters:
    def __init__(self, bus: EventBus) -> None:
        self.bus = bus

    async def _take(self, limit: int) -> tuple[aio_pika.abc.AbstractChannel, list[AbstractIncomingMessage]]:
        if self.bus.connection is None or self.bus.connection.is_closed:
            raise ConnectionError("not connected to the broker")
        channel = await self.bus.connection.channel()
        queue = await channel.declare_queue(self.bus.names.dlq, durable=True, arguments=self.bus.queue_args)
        taken: list[AbstractIncomingMessage] = []
        while len(taken) < limit:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            taken.append(message)
        return channel, taken

    async def list(self, limit: int = 50) -> list[dict[str, Any]]:
        channel, taken = await self._take(limit)
        try:
            return [_describe(m) for m in taken]
        finally:
            for m in taken:
                await m.nack(requeue=True)
            await channel.close()

    async def replay(self, message_id: str | None = None, limit: int = 1000) -> int:
        """Replay one message (by id) or every one; returns how many went back to the service's queue."""
        channel, taken = await self._take(limit)
        replayed = 0
        try:
            for m in taken:
                if message_id is not None and m.message_id != message_id:
                    await m.nack(requeue=True)
                    continue
                headers = {k: v for k, v in (m.headers or {}).items() if k != ATTEMPT_HEADER}
                headers["x-msa-replayed"] = True
                await channel.default_exchange.publish(
                    aio_pika.Message(m.body, headers=headers, content_type=m.content_type, message_id=m.message_id,
                                     type=m.type, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=self.bus.names.queue)
                await m.ack()
                replayed += 1
        finally:
            await channel.close()
        return replayed
