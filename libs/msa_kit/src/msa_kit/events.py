"""Events over RabbitMQ: CloudEvents 1.0 envelopes on the durable topic exchange `msa.events`.

The events part of the kit, one idea a module: this one is the envelope and the bus. Publishing goes through the
transactional outbox (outbox.py: the unit of work writes the row, `OutboxRelay` publishes it with publisher
confirms and `mandatory`, and marks it sent only once the broker has it). Consuming is idempotent (inbox.py),
retried with growing delays through a retry queue, and dead-lettered after N attempts (or at once when
unparseable) to `<service>.events.dlq` with the reason in its headers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

import aio_pika
import aiormq.abc
from aio_pika.abc import AbstractIncomingMessage
from opentelemetry import context as otel_context
from opentelemetry import propagate
from prometheus_client import Counter
from pydantic import BaseModel, Field, ValidationError

from .runtime import Runtime

log = logging.getLogger(__name__)

ATTEMPT_HEADER = "x-msa-attempt"

DELIVERIES = Counter("msa_consumer_deliveries", "Events consumed, by outcome: ack (handled), retry (sent to the "
                     "retry queue), dead_letter", ["event_type", "outcome"])
REDELIVERIES = Counter("msa_consumer_redeliveries", "Deliveries of an event that are not its first (redelivered by "
                       "the broker, or back from the retry queue)", ["event_type"])
UNKNOWN_TYPE = "unknown"  # the event type of a message that does not parse
# A confirm that never comes (its channel lost mid-publish while the connection was being restored) must end as a
# failure the relay retries, not hold the relay's publishing task, and every event handed to it, until shutdown.
PUBLISH_TIMEOUT_S = 5.0


class CloudEvent(BaseModel):
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    source: str
    type: str
    specversion: str = "1.0"
    time: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    datacontenttype: str = "application/json"
    subject: str | None = None
    dataschema: str | None = None
    data: dict[str, Any]

    @classmethod
    def from_domain(cls, source: str, subject: str, event: Any) -> "CloudEvent":
        # The payload's version travels in `dataschema`: a consumer can tell v1 from v2 before parsing the data.
        version = getattr(event, "version", 1)
        return cls(source=source, type=event.type, subject=subject, dataschema=f"urn:msa:{event.type}:v{version}",
                   data=dataclasses.asdict(event))


class PoisonMessage(Exception):
    """A message that can never succeed (unparseable, or a payload its schema rejects): dead-letter it at once."""


class InjectedFault(RuntimeError):
    """A failure switched on in config (`faults.failing_events`), for the poison-message exercise."""


class Names:
    """Broker names; the namespace keeps a test run's names apart from a running sandbox on the same broker."""

    def __init__(self, namespace: str, service: str) -> None:
        self.exchange = f"{namespace}msa.events"
        self.unrouted = f"{namespace}msa.events.unrouted"
        self.queue = f"{namespace}{service}.events"
        self.retry_queue = f"{namespace}{service}.events.retry"
        self.dlq = f"{namespace}{service}.events.dlq"


Handler = Callable[[CloudEvent], Awaitable[None]]


class EventBus:
    """One robust connection per process; it reconnects by itself and re-declares what it consumed."""

    def __init__(self, rt: Runtime, *, max_attempts: int = 5, prefetch: int = 50, queue_type: str = "classic") -> None:
        self.rt = rt
        # classic (one broker: local mode, compose) or quorum (replicated: a RabbitMQ cluster, deploy/k8s). A queue
        # keeps the type it was declared with: RabbitMQ refuses to redeclare it as the other (PRECONDITION_FAILED).
        self.queue_args = {"x-queue-type": queue_type}
        self.names = Names(rt.namespace, rt.service)
        self.max_attempts, self.prefetch = max_attempts, prefetch
        self.connection: aio_pika.abc.AbstractRobustConnection | None = None
        self.channel: aio_pika.abc.AbstractChannel | None = None
        self.exchange: aio_pika.abc.AbstractExchange | None = None
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.subscriptions: dict[str, Handler] = {}
        self._on_connect: list[Callable[[aio_pika.abc.AbstractRobustConnection], Awaitable[None]]] = []
        self._inspect: aiormq.abc.AbstractChannel | None = None  # for queue_depths only
        self._inspecting = asyncio.Lock()  # one inspection at a time: two scrapes would open two channels
        self._consumer: tuple[aio_pika.abc.AbstractQueue, str] | None = None
        self._handling = 0  # deliveries whose handler runs now
        self._idle = asyncio.Event()
        self._idle.set()

    def subscribe(self, event_type: str, handler: Handler) -> None:
        self.subscriptions[event_type] = handler
        # Every outcome's series at 0 from the start (here, per process: not at import, which supervisord's
        # preload would share with programs that consume nothing): a dashboard has a line before the first retry.
        for outcome in ("ack", "retry", "dead_letter"):
            DELIVERIES.labels(event_type, outcome)
        REDELIVERIES.labels(event_type)

    def on_connect(self, fn: Callable[[aio_pika.abc.AbstractRobustConnection], Awaitable[None]]) -> None:
        """Other users of the process's one broker connection (e.g. the config bus) set up here."""
        self._on_connect.append(fn)

    def start(self) -> None:
        self._task = asyncio.create_task(self._connect_forever(), name="event-bus")

    async def _connect_forever(self) -> None:
        delay = 0.2
        while True:
            try:
                # Reconnect every second (aio-pika's default is 5 s): a cut broker link heals as soon as it can.
                self.connection = await aio_pika.connect_robust(self.rt.amqp_url, timeout=5, reconnect_interval=1)
                break
            except Exception as exc:
                log.warning("broker unreachable (%s); retrying in %.1fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        await self.channel.set_qos(prefetch_count=self.prefetch)
        self.exchange = await self._declare_exchange()
        if self.subscriptions:
            await self._declare_and_consume()
        for fn in self._on_connect:
            await fn(self.connection)
        self.connected.set()
        log.info("connected to the broker; consuming %s", sorted(self.subscriptions) or "nothing")

    async def _declare_exchange(self) -> aio_pika.abc.AbstractExchange:
        """The topic exchange, with an alternate exchange for event types nobody subscribes to (yet).

        Without it a `mandatory` publish of such an event comes back NO_ROUTE and would sit in the outbox forever;
        with it the event is kept, bounded, in `msa.events.unrouted` where an operator can see it.
        """
        assert self.channel
        n = self.names
        unrouted = await self.channel.declare_exchange(n.unrouted, aio_pika.ExchangeType.FANOUT, durable=True)
        parking = await self.channel.declare_queue(n.unrouted, durable=True, arguments={
            **self.queue_args, "x-max-length": 10_000, "x-overflow": "drop-head"})
        await parking.bind(unrouted)
        return await self.channel.declare_exchange(n.exchange, aio_pika.ExchangeType.TOPIC, durable=True,
                                                   arguments={"alternate-exchange": n.unrouted})

    async def _declare_and_consume(self) -> None:
        assert self.channel and self.exchange
        n = self.names
        await self.channel.declare_queue(n.dlq, durable=True, arguments=self.queue_args)
        # Expired retries go back to the main queue through the default exchange.
        await self.channel.declare_queue(n.retry_queue, durable=True, arguments={
            **self.queue_args, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": n.queue})
        queue = await self.channel.declare_queue(n.queue, durable=True, arguments={
            **self.queue_args, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": n.dlq})
        for event_type in self.subscriptions:
            await queue.bind(self.exchange, routing_key=event_type)
        self._consumer = (queue, await queue.consume(self._on_message))

    async def publish(self, envelope: str, event_id: str, event_type: str, trace_headers: dict[str, str]) -> None:
        """Publish one CloudEvent — its JSON, as the outbox stores it — under the trace context it was written in;
        returns once the broker confirmed."""
        if self.exchange is None:
            raise ConnectionError("not connected to the broker")
        token = otel_context.attach(propagate.extract(trace_headers))
        try:
            await self.exchange.publish(
                aio_pika.Message(envelope.encode(), content_type="application/cloudevents+json",
                                 message_id=event_id, type=event_type,
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=event_type, mandatory=True, timeout=PUBLISH_TIMEOUT_S)
        finally:
            otel_context.detach(token)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._handling += 1
        self._idle.clear()
        try:
            await self._handle(message)
        finally:
            self._handling -= 1
            if not self._handling:
                self._idle.set()

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        attempt = int((message.headers or {}).get(ATTEMPT_HEADER, 0)) + 1
        try:
            event = CloudEvent.model_validate_json(message.body)
        except ValidationError as exc:
            if message.redelivered or attempt > 1:
                REDELIVERIES.labels(UNKNOWN_TYPE).inc()
            await self._dead_letter(message, f"unparseable: {exc.errors()[0]['msg']}", attempt)
            DELIVERIES.labels(UNKNOWN_TYPE, "dead_letter").inc()
            return
        if message.redelivered or attempt > 1:
            REDELIVERIES.labels(event.type).inc()
        handler = self.subscriptions.get(event.type)
        try:
            if handler is None:
                raise LookupError(f"no handler for {event.type}")
            await handler(event)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if attempt >= self.max_attempts or isinstance(exc, (LookupError, PoisonMessage)):
                await self._dead_letter(message, reason, attempt)
                DELIVERIES.labels(event.type, "dead_letter").inc()
                return
            delay_ms = min(100 * 2 ** (attempt - 1), 10_000)
            log.warning("%s %s failed (attempt %d/%d, retry in %d ms): %s",
                        event.type, event.id, attempt, self.max_attempts, delay_ms, reason)
            await self._republish(message, self.names.retry_queue, attempt, expiration_ms=delay_ms)
            DELIVERIES.labels(event.type, "retry").inc()
            return
        await message.ack()
        DELIVERIES.labels(event.type, "ack").inc()

    async def _republish(self, message: AbstractIncomingMessage, queue: str, attempt: int, *,
                         expiration_ms: int | None = None, extra: dict[str, Any] | None = None) -> None:
        assert self.channel
        headers = dict(message.headers or {})
        headers[ATTEMPT_HEADER] = attempt
        headers.update(extra or {})
        await self.channel.default_exchange.publish(
            aio_pika.Message(message.body, headers=headers, content_type=message.content_type,
                             message_id=message.message_id, type=message.type,
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                             expiration=expiration_ms / 1000 if expiration_ms else None),
            routing_key=queue)
        await message.ack()  # only after the copy is confirmed: nothing is lost in between

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str, attempt: int) -> None:
        log.error("dead-lettering message %s after %d attempt(s): %s", message.message_id, attempt, reason)
        await self._republish(message, self.names.dlq, attempt,
                              extra={"x-msa-reason": reason[:500], "x-msa-original-routing-key": message.routing_key})

    async def queue_depths(self, timeout_s: float = 1.0) -> dict[str, int]:
        """Messages waiting in this service's queues, by role: main, retry, dlq. Empty when the broker does not
        answer within `timeout_s` (or is not connected): a caller such as /metrics must answer anyway."""
        names = {"main": self.names.queue, "retry": self.names.retry_queue, "dlq": self.names.dlq}
        try:
            async with asyncio.timeout(timeout_s), self._inspecting:
                channel = await self._inspection_channel()
                return {role: (await channel.queue_declare(queue, passive=True)).message_count or 0
                        for role, queue in names.items()}
        except Exception as exc:  # timed out, closed, refused, not connected: all mean "not known now"
            log.debug("queue depths unavailable: %s", exc or type(exc).__name__)
            return {}

    async def _inspection_channel(self) -> aiormq.abc.AbstractChannel:
        """A bare aiormq channel of the connection, for passive declares. Not the bus's channel: a passive declare
        of a missing queue, or an RPC cut short by a timeout, closes its channel, and that one publishes and
        consumes. Not an aio-pika channel either: its robust re-declare would remember the queues. Opened again
        when closed (by the broker, or with the connection: aio-pika's reconnect makes a new one)."""
        channel = self._inspect
        if channel is None or channel.is_closed:
            transport = self.connection.transport if self.connection is not None else None
            if transport is None:
                raise ConnectionError("not connected to the broker")
            channel = self._inspect = await transport.connection.channel()
        return channel

    async def stop_consuming(self, timeout_s: float = 5.0) -> None:
        """Take no new deliveries and let the handlers in flight finish (their acks need the channel), for at most
        `timeout_s`. What was delivered but not acked goes back to the queue when the channel closes: another
        instance takes it, and its inbox drops a duplicate."""
        if self._consumer is not None:
            queue, tag = self._consumer
            self._consumer = None
            try:
                await asyncio.wait_for(queue.cancel(tag), 2)
            except Exception as exc:  # a cut link: the broker requeues everything unacked when the channel goes
                log.warning("could not cancel the consumer: %s", exc or type(exc).__name__)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("%d event handler(s) still running at shutdown; their messages will be redelivered",
                        self._handling)

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
        if self.connection:
            await self.connection.close()
