"""OpenTelemetry for every process: one trace per request, across HTTP and RabbitMQ.

Spans go to OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (Jaeger in docker compose), otherwise to JSON lines
under `var/traces/<instance>.jsonl` so a trace can be read (and tested) with nothing else running.
"""

from __future__ import annotations

import os
from typing import IO

from opentelemetry import propagate, trace
from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from .runtime import Runtime

_trace_file: IO[str] | None = None


def _one_line(span: ReadableSpan) -> str:
    return span.to_json(indent=None) + "\n"


def setup_tracing(rt: Runtime) -> TracerProvider:
    global _trace_file
    resource = Resource.create({"service.name": rt.service, "service.instance.id": rt.instance_id})
    provider = TracerProvider(resource=resource)
    exporter: SpanExporter
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    else:
        _trace_file = open(rt.path("traces", f"{rt.instance_id}.jsonl"), "a", buffering=1)
        exporter = ConsoleSpanExporter(out=_trace_file, formatter=_one_line)
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
