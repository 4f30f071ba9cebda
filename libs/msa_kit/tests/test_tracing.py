"""msa_kit.tracing: the JSON-lines exporter writes what the SDK's own `to_json()` says, and ServerSpans makes the
spans the SDK's tracer would (ids, parent, sampling, attributes, status), exported through the same processor."""

from __future__ import annotations

import io
import json
from datetime import datetime

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler
from opentelemetry.trace import Link, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from msa_kit.tracing import JsonLinesExporter, ServerSpans


def same_document(line: str, sdk_json: str) -> bool:
    """Equal, except that times may differ by the µs the SDK's float rounding adds (it goes through a float)."""
    ours, theirs = json.loads(line), json.loads(sdk_json)

    def us(text: str) -> float:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1e6

    def walk(a: object, b: object, key: str = "") -> bool:
        if key in ("start_time", "end_time", "timestamp") and isinstance(a, str) and isinstance(b, str):
            return abs(us(a) - us(b)) <= 1.5
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(walk(a[k], b[k], k) for k in a)
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(walk(x, y) for x, y in zip(a, b))
        return a == b

    return walk(ours, theirs)


def install(sampler: Sampler | None = None) -> tuple[TracerProvider, InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    p = TracerProvider(resource=Resource.create({"service.name": "gateway", "service.instance.id": "gateway-1"}),
                       sampler=sampler)
    p.add_span_processor(SimpleSpanProcessor(memory))
    trace._TRACER_PROVIDER = p  # the API lets a process set its provider once; tests swap it (see the fixture)
    return p, memory


@pytest.fixture(autouse=True)
def global_provider():
    previous = trace._TRACER_PROVIDER
    yield
    trace._TRACER_PROVIDER = previous


@pytest.fixture
def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    return install()


def test_a_line_is_the_sdks_document(provider):
    p, memory = provider
    tracer = p.get_tracer("t")
    with tracer.start_as_current_span("parent", kind=SpanKind.CLIENT) as parent:
        parent.add_event("retry", {"attempt": 2})
        with tracer.start_as_current_span("child \"quoted\" ✓", links=[Link(parent.get_span_context(), {"k": 1})],
                                          attributes={"a": "x", "n": 3, "f": 1.5, "b": True, "l": ["p", "q"]}) as c:
            c.set_status(StatusCode.ERROR, "it broke")
    out = io.StringIO()
    exporter = JsonLinesExporter(out)
    spans = memory.get_finished_spans()
    exporter.export(spans)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    for line, span in zip(lines, spans):
        assert same_document(line, span.to_json()), (line, span.to_json())


def test_server_spans_are_the_sdks_spans(provider):
    _, memory = provider
    spans = ServerSpans("msa_gateway")
    span = spans.start("GET gateway", attributes={"http.request.method": "GET"})
    assert span.context.is_valid and span.context.trace_flags.sampled
    assert trace.get_current_span(span.in_context()).get_span_context() == span.context
    span.end("GET catalog", {"http.response.status_code": 502}, error=True)
    span.end("again")  # once only
    (done,) = memory.get_finished_spans()
    assert done.name == "GET catalog" and done.kind == SpanKind.SERVER and done.parent is None
    assert dict(done.attributes) == {"http.request.method": "GET", "http.response.status_code": 502}
    assert done.status.status_code == StatusCode.ERROR and done.end_time >= done.start_time > 0
    assert done.resource.attributes["service.name"] == "gateway"
    assert done.instrumentation_scope.name == "msa_gateway"
    assert same_document(JsonLinesExporter(io.StringIO())._line(done), done.to_json())


def test_server_spans_continue_a_remote_parent_and_honour_its_sampling(provider):
    _, memory = provider
    spans = ServerSpans("msa_gateway")
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    sampled = TraceContextTextMapPropagator().extract({"traceparent": f"00-{trace_id}-{parent_id}-01"})
    span = spans.start("GET gateway", sampled)
    assert format(span.context.trace_id, "032x") == trace_id and span.context.span_id != int(parent_id, 16)
    span.end("GET x")
    (done,) = memory.get_finished_spans()
    assert done.parent is not None and format(done.parent.span_id, "016x") == parent_id and done.parent.is_remote

    unsampled = TraceContextTextMapPropagator().extract({"traceparent": f"00-{trace_id}-{parent_id}-00"})
    span = spans.start("GET gateway", unsampled)
    assert not span.context.trace_flags.sampled
    span.end("GET x")
    assert len(memory.get_finished_spans()) == 1  # not recorded


def test_server_spans_follow_the_providers_sampler():
    _, memory = install(ParentBased(ALWAYS_OFF))  # what OTEL_TRACES_SAMPLER=parentbased_always_off makes
    span = ServerSpans("msa_gateway").start("GET gateway")
    span.end("GET x")
    assert span.context.is_valid and not span.context.trace_flags.sampled
    assert memory.get_finished_spans() == ()


def test_without_tracing_spans_are_invalid_and_silent():
    trace._TRACER_PROVIDER = None  # the API's proxy provider: tracing not set up
    span = ServerSpans("msa_gateway").start("GET gateway")
    assert not span.context.is_valid
    span.end("GET x")
    assert span.start_ns == 0
