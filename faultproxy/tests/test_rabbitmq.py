"""`python -m msa_faultproxy` as a real process, and an aio-pika robust connection to the real local RabbitMQ
through it: cut the proxy and the client notices; restore it and the client reconnects by itself.

Touches nothing on the broker but one uniquely named queue, deleted afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import aio_pika
import httpx
import pytest

from msa_faultproxy.client import FaultProxyClient

BROKER = os.environ.get("FAULTPROXY_TEST_BROKER", "127.0.0.1:5672")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def faultproxy() -> Iterator[tuple[str, int]]:
    """(API URL, broker proxy port) of a `python -m msa_faultproxy` process."""
    api_port, amqp_port = free_ports(2)
    proxies = [{"name": "rabbitmq", "listen": f"127.0.0.1:{amqp_port}", "upstream": BROKER}]
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(api_port), "FAULTPROXY_PROXIES": json.dumps(proxies)}
    process = subprocess.Popen([sys.executable, "-m", "msa_faultproxy"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{api_port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield url, amqp_port
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
        print(output.decode(errors="replace"))  # shown by pytest when a test failed
        # uvicorn re-raises the SIGTERM it caught once it has shut down: -15 is a clean stop too.
        assert process.returncode in (0, -15), process.returncode
        assert b"proxy rabbitmq closed" in output


@pytest.mark.integration
def test_the_process_serves_the_proxies_from_its_environment(faultproxy):
    url, amqp_port = faultproxy
    listed = httpx.get(f"{url}/proxies", trust_env=False).json()
    assert listed == {"rabbitmq": {"name": "rabbitmq", "listen": f"127.0.0.1:{amqp_port}", "upstream": BROKER,
                                   "enabled": True, "toxics": []}}


@pytest.mark.integration
def test_a_bad_proxy_list_stops_the_process_with_a_message():
    (api_port,) = free_ports(1)
    env = {**os.environ, "PORT": str(api_port), "FAULTPROXY_PROXIES": '[{"name": "x", "listen": "oops"}]'}
    proc = subprocess.run([sys.executable, "-m", "msa_faultproxy"], env=env, capture_output=True, text=True,
                          timeout=15)
    assert proc.returncode == 1
    assert "listen must be 'host:port'" in proc.stdout


async def _wait(event: asyncio.Event, timeout: float, what: str) -> float:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        pytest.fail(f"{what} within {timeout} s")
    return time.perf_counter() - started


async def _publish_and_get(channel: aio_pika.abc.AbstractChannel, queue: aio_pika.abc.AbstractQueue,
                           body: bytes) -> None:
    await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue.name)
    deadline = time.monotonic() + 5
    while (message := await queue.get(fail=False, no_ack=True)) is None:
        assert time.monotonic() < deadline, f"{body!r} never arrived"
        await asyncio.sleep(0.02)
    assert message.body == body


@pytest.mark.integration
async def test_robust_client_loses_the_broker_and_reconnects_by_itself(faultproxy):
    url, amqp_port = faultproxy
    queue_name = f"faultproxy-test-{uuid.uuid4().hex[:12]}"
    lost, back = asyncio.Event(), asyncio.Event()

    async with FaultProxyClient(url) as fp:
        await fp.reset()
        connection = await aio_pika.connect_robust(
            f"amqp://guest:guest@127.0.0.1:{amqp_port}/?reconnect_interval=0.3", timeout=5
        )
        try:
            connection.close_callbacks.add(lambda *_: lost.set())
            connection.reconnect_callbacks.add(lambda *_: back.set())
            channel = await connection.channel()
            queue = await channel.declare_queue(queue_name, durable=True)
            await _publish_and_get(channel, queue, b"before")

            await fp.disable("rabbitmq")
            noticed = await _wait(lost, 5, "the client did not notice the broker going away")
            await asyncio.sleep(1)  # a few reconnect attempts, each closed by the proxy at once
            assert not back.is_set()

            await fp.enable("rabbitmq")
            recovered = await _wait(back, 10, "the client did not reconnect")
            await _publish_and_get(channel, queue, b"after")  # the robust channel and queue were restored
            print(f"\nclient noticed the cut after {noticed * 1000:.0f} ms; reconnected {recovered * 1000:.0f} ms "
                  "after enable")
        finally:
            await fp.reset()
            await connection.close()
            # Clean up straight at the broker, whatever state the proxy is in.
            direct = await aio_pika.connect(f"amqp://guest:guest@{BROKER}/", timeout=5)
            async with direct:
                await (await direct.channel()).queue_delete(queue_name)
