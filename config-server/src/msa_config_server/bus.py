"""The refresh bus: ``POST /actuator/busrefresh`` becomes one message every service instance hears.

Spring Cloud Bus publishes ``RefreshRemoteApplicationEvent``s on a topic exchange (``springCloudBus``); each
instance has its own queue bound to it, checks ``destinationService`` against its own id, and if it matches
re-fetches its configuration. We keep that shape with our own exchange name:

* exchange ``{MSA_NAMESPACE}msa.bus`` — topic, durable; routing key ``refresh``
* body (JSON) ``{"type": "RefreshRemoteApplicationEvent", "id": <uuid>, "originService": "config-server",
  "destinationService": "catalog:**", "timestamp": <epoch ms>}``

``destinationService`` is Spring's pattern ``<application>:<instance>``: ``**`` = everyone, ``catalog:**`` = every
catalog instance, ``catalog:catalog-2`` = that one instance. Filtering is the receiver's job, as in Spring.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractRobustConnection

__all__ = ["BusUnavailableError", "BusPublisher", "destination_service", "refresh_event", "ROUTING_KEY"]

ROUTING_KEY = "refresh"


class BusUnavailableError(Exception):
    """The broker cannot be reached or did not confirm in time. The message never names the URL (it may
    carry a password)."""


def destination_service(destination: str | None) -> str:
    """``catalog`` → ``catalog:**`` (every instance of catalog), as Spring's busrefresh endpoint expands it."""
    if not destination or destination in ("*", "**"):
        return "**"
    return destination if ":" in destination else f"{destination}:**"


def refresh_event(destination: str | None, origin: str = "config-server") -> dict[str, Any]:
    return {
        "type": "RefreshRemoteApplicationEvent",
        "id": str(uuid.uuid4()),
        "originService": origin,
        "destinationService": destination_service(destination),
        "timestamp": int(time.time() * 1000),
    }


class BusPublisher:
    """Connects on first use (the config server must start, and serve config, with the broker down) and keeps
    one robust connection that aio-pika re-establishes after a broker restart."""

    def __init__(self, amqp_url: str, exchange_name: str, *, connect_timeout: float = 3.0,
                 publish_timeout: float = 5.0) -> None:
        self.exchange_name = exchange_name
        self._url = amqp_url
        self._connect_timeout = connect_timeout
        self._publish_timeout = publish_timeout
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._lock = asyncio.Lock()

    async def _ensure_exchange(self) -> AbstractExchange:
        async with self._lock:
            if self._exchange is not None and self._connection is not None and not self._connection.is_closed:
                return self._exchange
            await self._close_connection()
            try:
                # Both bounds matter: `timeout` covers the AMQP handshake, wait_for also covers DNS/TCP stalls.
                self._connection = await asyncio.wait_for(
                    aio_pika.connect_robust(self._url, timeout=self._connect_timeout, reconnect_interval=1),
                    self._connect_timeout + 1
                )
                channel = await self._connection.channel(publisher_confirms=True)
                self._exchange = await channel.declare_exchange(
                    self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
                )
            except (asyncio.TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
                await self._close_connection()
                raise BusUnavailableError(f"message broker unreachable ({type(exc).__name__})") from exc
            return self._exchange

    async def publish_refresh(self, destination: str | None) -> dict[str, Any]:
        event = refresh_event(destination)
        exchange = await self._ensure_exchange()
        message = aio_pika.Message(
            json.dumps(event).encode(),
            content_type="application/json",
            message_id=event["id"],
            type=event["type"],
            app_id=event["originService"],
        )
        try:
            # Awaits the broker's confirm; bounded, because a robust connection mid-reconnect would wait forever.
            await asyncio.wait_for(exchange.publish(message, routing_key=ROUTING_KEY), self._publish_timeout)
        except (asyncio.TimeoutError, OSError, RuntimeError, aio_pika.exceptions.AMQPError) as exc:
            raise BusUnavailableError(f"message broker did not accept the event ({type(exc).__name__})") from exc
        return event

    async def _close_connection(self) -> None:
        connection, self._connection, self._exchange = self._connection, None, None
        if connection is not None:
            try:
                await asyncio.wait_for(connection.close(), 2)
            except Exception:  # closing a dead connection may fail in many ways; it is gone either way
                pass

    async def close(self) -> None:
        async with self._lock:
            await self._close_connection()
