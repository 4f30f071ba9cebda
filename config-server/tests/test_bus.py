"""``POST /actuator/busrefresh``: one RefreshRemoteApplicationEvent on the bus exchange."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import aio_pika
import pytest

from msa_config_server.bus import BusPublisher, destination_service

@pytest.mark.parametrize("given,expected", [(None, "**"), ("**", "**"), ("catalog", "catalog:**"),
                                            ("catalog:*", "catalog:*"), ("catalog:catalog-2", "catalog:catalog-2")])
def test_destination_is_expanded_like_spring(given: str | None, expected: str) -> None:
    assert destination_service(given) == expected


async def test_unreachable_broker_is_a_fast_503(write_repo, client_for) -> None:
    started = time.monotonic()
    async with client_for(write_repo(), amqp_url="amqp://guest:guest@127.0.0.1:1/") as client:
        response = await client.post("/actuator/busrefresh")
        config = await client.get("/catalog/default")  # config is still served without a broker
    assert response.status_code == 503 and response.headers["content-type"] == "application/problem+json"
    assert "guest" not in response.text  # the broker URL (and its password) never reaches a client
    assert config.status_code == 200 and time.monotonic() - started < 5


@pytest.mark.integration
async def test_busrefresh_publishes_on_the_namespaced_exchange(write_repo, client_for, amqp_url) -> None:
    namespace = f"test-{uuid.uuid4().hex[:8]}."
    exchange_name = f"{namespace}msa.bus"
    connection = await aio_pika.connect(amqp_url, timeout=5)
    bus = BusPublisher(amqp_url, exchange_name)  # ours, so the test can close it (ASGITransport runs no lifespan)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True)  # server-named, gone with our connection
        await queue.bind(exchange, routing_key="#")
        async with client_for(write_repo(), bus=bus) as client:
            targeted = await client.post("/actuator/busrefresh/catalog")
            broadcast = await client.post("/actuator/busrefresh")
        assert targeted.status_code == broadcast.status_code == 204
        received = []
        for _ in range(2):
            message = await asyncio.wait_for(_next(queue), 5)
            assert message.routing_key == "refresh" and message.content_type == "application/json"
            received.append(json.loads(message.body))
        first, second = received
        assert first["type"] == "RefreshRemoteApplicationEvent" and first["originService"] == "config-server"
        assert first["destinationService"] == "catalog:**" and second["destinationService"] == "**"
        assert uuid.UUID(first["id"]) and abs(first["timestamp"] - time.time() * 1000) < 60_000
    finally:
        await bus.close()
        channel = await connection.channel()
        await channel.exchange_delete(exchange_name)
        await connection.close()


async def _next(queue: aio_pika.abc.AbstractQueue) -> aio_pika.abc.AbstractIncomingMessage:
    while True:
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            return message
        await asyncio.sleep(0.02)
