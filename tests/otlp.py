"""A small OTLP/HTTP receiver for the tests: what Jaeger's collector is in the compose stack.

Every program of a topology started with `OTEL_EXPORTER_OTLP_ENDPOINT=<receiver.url>` exports its spans here
through the official exporter (`opentelemetry-exporter-otlp-proto-http`); the receiver decodes each
`ExportTraceServiceRequest` with `opentelemetry-proto` and keeps the spans, in the shape of the JSON lines local
mode writes (`var/traces/*.jsonl`), so a test reads a trace the same way from either.
"""

from __future__ import annotations

import gzip
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                        ExportTraceServiceResponse)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

KINDS = {0: "SpanKind.INTERNAL", 1: "SpanKind.INTERNAL", 2: "SpanKind.SERVER", 3: "SpanKind.CLIENT",
         4: "SpanKind.PRODUCER", 5: "SpanKind.CONSUMER"}


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, which) if which else None


def _attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def decode(body: bytes) -> list[dict[str, Any]]:
    """An ExportTraceServiceRequest → spans in local mode's JSON-lines shape."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {"attributes": _attributes(resource_spans.resource.attributes)}
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                spans.append({
                    "name": s.name,
                    "context": {"trace_id": f"0x{s.trace_id.hex()}", "span_id": f"0x{s.span_id.hex()}"},
                    "kind": KINDS.get(s.kind, "SpanKind.INTERNAL"),
                    "parent_id": f"0x{s.parent_span_id.hex()}" if s.parent_span_id else None,
                    "start_time_unix_nano": s.start_time_unix_nano, "end_time_unix_nano": s.end_time_unix_nano,
                    "status": {"status_code": s.status.code},
                    "attributes": _attributes(s.attributes),
                    "resource": resource,
                })
    return spans


class OtlpReceiver:
    """`POST /v1/traces` (protobuf, plain or gzip/deflate), on a free loopback port, in a thread of its own."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path != "/v1/traces" or "protobuf" not in (self.headers.get("Content-Type") or ""):
                    self.send_error(404 if self.path != "/v1/traces" else 415)
                    return
                spans = decode(body)
                with receiver._lock:
                    receiver.spans += spans
                    receiver.requests += 1
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_args: Any) -> None:  # quiet: one line a batch from every process
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="otlp-receiver", daemon=True)

    def __enter__(self) -> "OtlpReceiver":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [s for s in self.spans if s["context"]["trace_id"] == f"0x{trace_id}"]
