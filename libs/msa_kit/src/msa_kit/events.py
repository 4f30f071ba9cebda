"""Events over RabbitMQ: CloudEvents 1.0 envelopes on the durable topic exchange `msa.events`.

Publishing goes through the transactional outbox (sql.py writes the row; `OutboxRelay` publishes it with
publisher confirms and `mandatory`, and marks it sent only once the broker has it). Consuming is idempotent
(`InboxDispatcher`), retried with growing delays through a retry queue, and dead-lettered after N attempts
(or at once when unparseable) to `<service>.events.dlq` with the reason in its headers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Generic, TypeVar

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from opentelemetry import context as otel_context
from opentelemetry import propagate
from pydantic import BaseModel, Field, ValidationError

from .runtime import Runtime

log = logging.getLogger(__name__)

ATTEMPT_HEADER = "x-msa-attempt"
BUSY_GATHER_S = 0.002


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

    def __init__(self, rt: Runtime, *, max_attempts: int = 5, prefetch: int = 50) -> None:
        self.rt = rt
        self.names = Names(rt.namespace, rt.service)
        self.max_attempts, self.prefetch = max_attempts, prefetch
        self.connection: aio_pika.abc.AbstractRobustConnection | None = None
        self.channel: aio_pika.abc.AbstractChannel | None = None
        self.exchange: aio_pika.abc.AbstractExchange | None = None
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.subscriptions: dict[str, Handler] = {}
        self._on_connect: list[Callable[[aio_pika.abc.AbstractRobustConnection], Awaitable[None]]] = []

    def subscribe(self, event_type: str, handler: Handler) -> None:
        self.subscriptions[event_type] = handler

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
            "x-max-length": 10_000, "x-overflow": "drop-head"})
        await parking.bind(unrouted)
        return await self.channel.declare_exchange(n.exchange, aio_pika.ExchangeType.TOPIC, durable=True,
                                                   arguments={"alternate-exchange": n.unrouted})

    async def _declare_and_consume(self) -> None:
        assert self.channel and self.exchange
        n = self.names
        await self.channel.declare_queue(n.dlq, durable=True)
        # Expired retries go back to the main queue through the default exchange.
        await self.channel.declare_queue(n.retry_queue, durable=True, arguments={
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": n.queue})
        queue = await self.channel.declare_queue(n.queue, durable=True, arguments={
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": n.dlq})
        for event_type in self.subscriptions:
            await queue.bind(self.exchange, routing_key=event_type)
        await queue.consume(self._on_message)

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
                routing_key=event_type, mandatory=True)
        finally:
            otel_context.detach(token)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        attempt = int((message.headers or {}).get(ATTEMPT_HEADER, 0)) + 1
        try:
            event = CloudEvent.model_validate_json(message.body)
        except ValidationError as exc:
            await self._dead_letter(message, f"unparseable: {exc.errors()[0]['msg']}", attempt)
            return
        handler = self.subscriptions.get(event.type)
        try:
            if handler is None:
                raise LookupError(f"no handler for {event.type}")
            await handler(event)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if attempt >= self.max_attempts or isinstance(exc, (LookupError, PoisonMessage)):
                await self._dead_letter(message, reason, attempt)
                return
            delay_ms = min(100 * 2 ** (attempt - 1), 10_000)
            log.warning("%s %s failed (attempt %d/%d, retry in %d ms): %s",
                        event.type, event.id, attempt, self.max_attempts, delay_ms, reason)
            await self._republish(message, self.names.retry_queue, attempt, expiration_ms=delay_ms)
            return
        await message.ack()

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

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
        if self.connection:
            await self.connection.close()


M = TypeVar("M", bound=BaseModel)


@dataclasses.dataclass
class _Delivery:
    event: CloudEvent
    apply: Callable[[Any], Awaitable[None]]
    context: otel_context.Context
    done: asyncio.Future[None]


class Inbox:
    """Applies consumed events at most once — each event's id is stored in the transaction that holds its effect —
    and many events per transaction: a group commit, as databases do with their log.

    Deliveries arrive as concurrent tasks (up to the prefetch). While one transaction runs, the next ones queue;
    the next transaction takes every queued delivery (up to `max_batch`), so under load one BEGIN/COMMIT (and one
    trip through SQLite's single writer) serves many events, and with one event in flight nothing waits. A handler
    that fails rolls the shared transaction back; that event alone takes the failure path (retry, dead letter) and
    the others are applied again one per transaction. Outbox rows a handler raises carry that event's own trace
    context, not the batch's.
    """

    def __init__(self, uow_factory: Callable[[], Any], *, max_batch: int = 100) -> None:
        self.uow_factory, self.max_batch = uow_factory, max_batch
        self._queue: list[_Delivery] = []
        self._worker: asyncio.Task[None] | None = None
        self._busy = False

    async def apply(self, event: CloudEvent, apply: Callable[[Any], Awaitable[None]]) -> None:
        """Returns once `apply(uow)` is committed (or the event was a duplicate); raises what it raised."""
        delivery = _Delivery(event, apply, otel_context.get_current(), asyncio.get_running_loop().create_future())
        delivery.done.add_done_callback(_retrieved)  # nobody may be left to await it (below)
        self._queue.append(delivery)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain(), name="inbox")
        # A cancelled delivery (the broker connection dropped) may still be committed: it was not acked, so it
        # comes again and is then a duplicate.
        await asyncio.shield(delivery.done)

    async def _drain(self) -> None:
        while self._queue:
            # Deliveries come in bursts (the broker pushes up to the prefetch at once, a task each): let the ones
            # already running reach the queue before taking the batch. It costs no waiting, only one loop turn.
            await asyncio.sleep(0)
            # Under load (the queue grew while the last transaction ran), a few more loop turns let the deliveries
            # already read off the socket join this batch: fewer, larger transactions; with one event in flight the
            # queue does not grow and nothing waits.
            if self._busy and len(self._queue) < self.max_batch:
                await asyncio.sleep(BUSY_GATHER_S)
            batch = self._queue[:self.max_batch]
            del self._queue[:len(batch)]
            try:
                await self._apply(batch)
                self._busy = bool(self._queue)
            except BaseException:  # cancelled while applying (shutdown): nobody waits in vain
                for d in batch + self._queue:
                    _settle(d, ConnectionError("the inbox stopped"))
                self._queue.clear()
                raise

    async def _apply(self, batch: list[_Delivery]) -> None:
        failed: tuple[_Delivery, Exception] | None = None
        try:
            async with self.uow_factory() as uow:
                seen = await uow.processed([d.event.id for d in batch])
                applied = []
                for d in batch:
                    if d.event.id in seen:
                        log.info("duplicate %s %s ignored", d.event.type, d.event.id)
                        continue
                    token = otel_context.attach(d.context)
                    try:
                        await d.apply(uow)
                        uow.stage_new_events()
                    except Exception as exc:
                        failed = (d, exc)
                        break
                    finally:
                        otel_context.detach(token)
                    seen.add(d.event.id)
                    applied.append(d)
                if failed is None:
                    await uow.mark_processed([(d.event.id, d.event.type) for d in applied])
                    await uow.commit()
        except Exception as exc:  # the database failed: every event of the batch fails alike, and is retried
            for d in batch:
                _settle(d, exc)
            return
        if failed is None:
            for d in batch:
                _settle(d, None)
            return
        _settle(*failed)
        for d in batch:
            if d is not failed[0]:
                await self._apply([d])


def _retrieved(done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        done.exception()


def _settle(delivery: _Delivery, exc: BaseException | None) -> None:
    if delivery.done.done():
        return
    if exc is None:
        delivery.done.set_result(None)
    else:
        delivery.done.set_exception(exc)


class InboxDispatcher(Generic[M]):
    """Parses the payload into its typed model at the edge, then has the inbox apply the event at most once."""

    def __init__(self, inbox: Inbox, model: type[M], handler: Callable[[M, Any], Awaitable[None]],
                 failing: Callable[[str], bool] = lambda _type: False) -> None:
        self.inbox, self.model, self.handler, self.failing = inbox, model, handler, failing

    async def __call__(self, event: CloudEvent) -> None:
        try:
            payload = self.model.model_validate(event.data)
        except ValidationError as exc:
            raise PoisonMessage(f"{event.type} payload rejected by {self.model.__name__}: {exc.errors()[0]}") from None

        async def apply(uow: Any) -> None:
            if self.failing(event.type):
                raise InjectedFault(f"injected failure for {event.type} (faults.failing_events)")
            await self.handler(payload, uow)

        await self.inbox.apply(event, apply)
