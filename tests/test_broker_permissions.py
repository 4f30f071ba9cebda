"""Least privilege on this machine's RabbitMQ: every program of a stack reaches the broker as a user of its own,
with only the permissions msa_kit.access gives it (imported with `rabbitmqctl import_definitions`, the document the
compose stack's broker loads at start). The saga still completes; catalog's user cannot read order's queue, nor
publish a forged `order.confirmed`, nor a configuration refresh: the broker refuses with ACCESS_REFUSED."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import uuid
from typing import Iterator
from urllib.parse import urlsplit

import aio_pika
import aiormq.exceptions
import pytest

from stacks import booted
from msa_cli.spec import Ports, Program, via_proxy
from msa_kit.access import PROGRAMS, broker_user, rabbitmq_definitions
from support import Api, Stack

pytestmark = pytest.mark.integration

RABBITMQCTL = shutil.which("rabbitmqctl")


def service_of(program: Program) -> str | None:
    """The access table's program an instance runs as: catalog-2 → catalog; None for discovery and the proxy."""
    if program.name in PROGRAMS:
        return program.name
    service = program.name.rsplit("-", 1)[0]
    return service if service in PROGRAMS else None


@pytest.fixture(scope="module")
def acl_stack(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> Iterator[tuple[Stack, dict[str, str]]]:
    # The broker make test uses is this machine's (Debian's rabbitmq-server, whose rabbitmqctl makes the users).
    assert RABBITMQCTL is not None, ("rabbitmqctl is not on this machine: install Debian's rabbitmq-server (the "
                                     "broker make test runs against), or the broker users cannot be made")
    namespace = f"test-{uuid.uuid4().hex[:8]}."
    passwords = {program: secrets.token_hex(12) for program in PROGRAMS}
    # Debian's rabbitmqctl runs as the broker's user, who cannot see pytest's private temporary folders: a file of
    # its own in /tmp, readable (it holds salted hashes, no password), gone once imported.
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir="/tmp") as document:
        json.dump(rabbitmq_definitions(passwords, namespace=namespace, vhost="/"), document)
        document.flush()
        os.chmod(document.name, 0o644)
        subprocess.run([RABBITMQCTL, "-q", "import_definitions", document.name], check=True, timeout=60)
    host = urlsplit(amqp_url).hostname
    urls = {p: f"amqp://{broker_user(p, namespace)}:{pw}@{host}:{urlsplit(amqp_url).port or 5672}/"
            for p, pw in passwords.items()}

    ports = Ports.free()

    def own_user(program: Program) -> dict[str, str]:
        service = service_of(program)
        return {"AMQP_URL": via_proxy(urls[service], ports.broker_proxy)} if service else {}

    try:
        with booted(tmp_path_factory, amqp_url, namespace=namespace, program_env=own_user, ports=ports) as stack:
            yield stack, urls
    finally:
        removals = [subprocess.Popen([RABBITMQCTL, "-q", "delete_user", broker_user(p, namespace)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in PROGRAMS]
        for removal in removals:
            removal.wait(timeout=60)


def test_the_saga_completes_with_a_broker_user_per_program(acl_stack: tuple[Stack, dict[str, str]]):
    stack, _ = acl_stack
    api = Api(stack.gateway).sign_up_and_log_in()
    placed = api.place([{"sku": "STICKER-CB", "quantity": 1}])
    assert placed.status_code == 201, placed.text
    assert api.wait_final(placed.json()["id"])["status"] == "CONFIRMED"
    # Each program is connected as its own user (the broker's own view).
    listed = subprocess.run([RABBITMQCTL or "", "-q", "list_connections", "user"], capture_output=True, text=True,
                            check=True, timeout=60).stdout.split()
    connected = {u.removeprefix(stack.namespace) for u in listed if u.startswith(stack.namespace)}
    assert {"user", "catalog", "order", "gateway", "probe", "console"} <= connected, listed


async def refused(url: str, attempt: str, namespace: str) -> str:
    """Try one forbidden thing as the user of `url`; the broker's refusal, as text."""
    connection = await aio_pika.connect(url, timeout=5)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        try:
            if attempt == "consume order's queue":
                queue = await channel.get_queue(f"{namespace}order.events", ensure=False)
                await queue.consume(lambda m: None)
            elif attempt == "publish order.confirmed":
                exchange = await channel.get_exchange(f"{namespace}msa.events", ensure=False)
                await exchange.publish(aio_pika.Message(b'{"forged": true}'), routing_key="order.confirmed")
            elif attempt == "publish a refresh":
                exchange = await channel.get_exchange(f"{namespace}msa.bus", ensure=False)
                await exchange.publish(aio_pika.Message(b'{"destinationService": "**"}'), routing_key="refresh")
            elif attempt == "publish stock.probe":  # its own kind of event: allowed (parked: nobody consumes it)
                exchange = await channel.get_exchange(f"{namespace}msa.events", ensure=False)
                await exchange.publish(aio_pika.Message(b"{}"), routing_key="stock.probe")
                return "allowed"
        except aiormq.exceptions.ChannelAccessRefused as exc:
            return f"ACCESS_REFUSED {exc}"
    return "allowed"


@pytest.mark.parametrize("attempt,refusal", [
    ("consume order's queue", "access to queue '{ns}order.events'"),
    ("publish order.confirmed", "access to topic 'order.confirmed' in exchange '{ns}msa.events'"),
    ("publish a refresh", "access to exchange '{ns}msa.bus'"),
])
def test_catalogs_user_is_refused_what_is_not_catalogs(acl_stack: tuple[Stack, dict[str, str]], attempt: str,
                                                       refusal: str):
    stack, urls = acl_stack
    answer = asyncio.run(refused(urls["catalog"], attempt, stack.namespace))
    assert answer.startswith("ACCESS_REFUSED"), answer
    assert refusal.format(ns=stack.namespace) in answer and f"for user '{stack.namespace}catalog'" in answer, answer


def test_catalogs_user_may_publish_its_own_events(acl_stack: tuple[Stack, dict[str, str]]):
    stack, urls = acl_stack
    assert asyncio.run(refused(urls["catalog"], "publish stock.probe", stack.namespace)) == "allowed"
