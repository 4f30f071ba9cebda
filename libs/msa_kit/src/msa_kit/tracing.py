"""OpenTelemetry for every process: one trace per request, across HTTP and RabbitMQ.

Spans go to OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (Jaeger in docker compose), otherwise to JSON lines
under `var/traces/<instance>.jsonl` so a trace can be read (and tested) with nothing else running.
"""

from __future__ import annotations

import json
import os
import time
from typing import IO, Sequence

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (INVALID_SPAN_CONTEXT, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode,
                                 TraceFlags)
from opentelemetry.util.types import AttributeValue

from .runtime import Runtime


class JsonLinesExporter(SpanExporter):
    """ConsoleSpanExporter's document, one span a line, a whole batch in one write, at a fraction of its cost.

    - One write per batch, the file not line-buffered: written span by span, the exporter thread took the
      interpreter lock back from the event loop for every span (measured on the gateway: c=1 p99 49-82 ms →
      6-10 ms, and +11 points of nginx's throughput).
    - `ReadableSpan.to_json()` serialises the process's resource for every span with `indent=4` (json's
      pure-Python encoder) and parses it back: ~12 % of a busy service's CPU (py-spy, order placement load). Here
      the line is assembled from parts: the resource is encoded once and spliced in, timestamps are formatted once
      per second, kinds, statuses and empty trace states come from small caches, and only the span's name and
      attributes go through json's C encoder: 26 µs → ~7 µs a span (it runs on a thread, but holding the GIL: on a
      busy gateway every µs here is one the event loop waits).
    """

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self._resource: Resource | None = None
        self._resource_json = ""
        self._second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text
        self._kinds: dict[SpanKind, str] = {}
        self._statuses: dict[StatusCode, str] = {}

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.out.write("".join([self._line(span) for span in spans]))
        self.out.flush()
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        self.out.flush()
        return True

    def shutdown(self) -> None:
        self.out.close()

    def _iso(self, ns: int) -> str:
        """ns_to_iso_str's text: `2026-11-24T21:28:13.996426Z`."""
        seconds, rest = divmod(ns, 1_000_000_000)
        if self._second[0] != seconds:
            self._second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
        return f"{self._second[1]}.{rest // 1000:06d}Z"

    def _line(self, span: ReadableSpan) -> str:
        """The document `ReadableSpan.to_json()` makes (same keys, same order), on one line."""
        if span.resource is not self._resource:
            self._resource, self._resource_json = span.resource, span.resource.to_json(indent=None)
        ctx, parent, status = span.context, span.parent, span.status
        if ctx:
            state = '"[]"' if not ctx.trace_state else _ENCODE(repr(ctx.trace_state))
            context = f'{{"trace_id": "0x{ctx.trace_id:032x}", "span_id": "0x{ctx.span_id:016x}", ' \
                      f'"trace_state": {state}}}'
        else:
            context = "null"
        kind = self._kinds.get(span.kind)
        if kind is None:
            kind = self._kinds[span.kind] = _ENCODE(str(span.kind))
        if status.description:
            status_json = _ENCODE({"status_code": status.status_code.name, "description": status.description})
        else:
            status_json = self._statuses.get(status.status_code)  # type: ignore[assignment]
            if status_json is None:
                status_json = self._statuses[status.status_code] = _ENCODE({"status_code": status.status_code.name})
        parent_id = f'"0x{parent.span_id:016x}"' if parent else "null"
        start = f'"{self._iso(span.start_time)}"' if span.start_time else "null"
        end = f'"{self._iso(span.end_time)}"' if span.end_time else "null"
        return (f'{{"name": {_ENCODE(span.name)}, "context": {context}, "kind": {kind}, "parent_id": {parent_id}, '
                f'"start_time": {start}, "end_time": {end}, "status": {status_json}, '
                f'"attributes": {_ENCODE(dict(span.attributes or {}))}, '
                f'"events": {self._events(span) if span.events else "[]"}, '
                f'"links": {self._links(span) if span.links else "[]"}, "resource": {self._resource_json}}}\n')

    def _events(self, span: ReadableSpan) -> str:
        return _ENCODE([{"name": e.name, "timestamp": self._iso(e.timestamp), "attributes": dict(e.attributes or {})}
                        for e in span.events])

    @staticmethod
    def _links(span: ReadableSpan) -> str:
        return _ENCODE([{"context": {"trace_id": f"0x{link.context.trace_id:032x}",
                                     "span_id": f"0x{link.context.span_id:016x}",
                                     "trace_state": repr(link.context.trace_state)},
                         "attributes": dict(link.attributes or {})} for link in span.links])


_ENCODE = json.JSONEncoder(default=str).encode  # one encoder, made once: json.dumps(default=) makes one a call
_UNSET = Status()


class ServerSpans:
    """SERVER spans for a hot path (the gateway's proxy), made whole when the request ends.

    The SDK's span is built to change while it lives — a lock, a validation of every attribute set, bounded lists
    for events and links — ~14 µs a request on the gateway's event loop. A proxied request's span gets a name,
    a few attributes and a status, all known by its end. So here: at the start the provider's sampler decides and
    its id generator makes the ids, exactly as the SDK's tracer does; at the end one `ReadableSpan` goes to the
    provider's span processor — the span, and its export, are the same (4 µs). Not done: span processors'
    `on_start` (the kit's BatchSpanProcessor does nothing there) and the SDK's own span-count metrics.
    Without tracing set up (a unit test), spans are invalid and nothing is recorded, like the API's no-op tracer.
    """

    def __init__(self, scope: str) -> None:
        self.scope = InstrumentationScope(scope)
        self._provider: object = None
        self._tracer: SdkTracer | None = None

    def _sdk(self) -> SdkTracer | None:
        provider = trace.get_tracer_provider()
        if provider is not self._provider:  # tracing was set up (or replaced) since the last span
            self._provider = provider
            tracer = provider.get_tracer(self.scope.name)
            self._tracer = tracer if isinstance(tracer, SdkTracer) else None
        return self._tracer

    def start(self, name: str, parent: Context | None = None,
              attributes: dict[str, AttributeValue] | None = None) -> "ServerSpan":
        tracer = self._sdk()
        if tracer is None:
            return ServerSpan(self, None, INVALID_SPAN_CONTEXT, None, attributes or {}, False)
        parent_ctx: SpanContext | None = trace.get_current_span(parent).get_span_context() if parent else None
        if parent_ctx is not None and parent_ctx.is_valid:
            trace_id, random_id = parent_ctx.trace_id, parent_ctx.trace_flags.random_trace_id
        else:
            parent_ctx = None
            trace_id, random_id = tracer.id_generator.generate_trace_id(), tracer.id_generator.is_trace_id_random()
        decision = tracer.sampler.should_sample(parent, trace_id, name, SpanKind.SERVER, attributes, ())
        flags = TraceFlags.SAMPLED if decision.decision.is_sampled() else TraceFlags.DEFAULT
        if random_id:
            flags |= TraceFlags.RANDOM_TRACE_ID
        ctx = SpanContext(trace_id, tracer.id_generator.generate_span_id(), False, TraceFlags(flags),
                          decision.trace_state)
        attrs = {**decision.attributes, **attributes} if decision.attributes else dict(attributes or {})
        return ServerSpan(self, tracer if decision.decision.is_recording() else None, ctx, parent_ctx, attrs, True)


class ServerSpan:
    """One request's span: `context` to propagate now, `end()` once the answer is sent."""

    __slots__ = ("context", "parent", "attributes", "start_ns", "_tracer", "_spans")

    def __init__(self, spans: ServerSpans, tracer: SdkTracer | None, context: SpanContext,
                 parent: SpanContext | None, attributes: dict[str, AttributeValue], timed: bool) -> None:
        self._spans, self._tracer, self.context, self.parent = spans, tracer, context, parent
        self.attributes = attributes
        self.start_ns = time.time_ns() if timed else 0

    def in_context(self) -> Context:
        """A context with this span current (for logs, and child spans of calls made while it runs)."""
        return trace.set_span_in_context(NonRecordingSpan(self.context))

    def end(self, name: str, attributes: dict[str, AttributeValue] | None = None, error: bool = False) -> None:
        tracer = self._tracer
        if tracer is None:
            return
        self._tracer = None  # once
        if attributes:
            self.attributes.update(attributes)
        tracer.span_processor.on_end(ReadableSpan(
            name=name, context=self.context, parent=self.parent, resource=tracer.resource,
            attributes=self.attributes, events=(), links=(), kind=SpanKind.SERVER,
            status=Status(StatusCode.ERROR) if error else _UNSET, start_time=self.start_ns, end_time=time.time_ns(),
            instrumentation_scope=self._spans.scope))


def setup_tracing(rt: Runtime) -> TracerProvider:
    resource = Resource.create({"service.name": rt.service, "service.instance.id": rt.instance_id})
    provider = TracerProvider(resource=resource)
    exporter: SpanExporter
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    else:
        exporter = JsonLinesExporter(open(rt.path("traces", f"{rt.instance_id}.jsonl"), "a"))
    provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_SCHEDULE_DELAY tunes the flush
    trace.set_tracer_provider(provider)
    AioPikaInstrumentor().instrument()
    return provider


def shutdown_tracing() -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


def carrier() -> dict[str, str]:
    """The current trace context as W3C headers, to store beside work that continues later (the outbox)."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers
