"""A small OTLP/HTTP trace receiver for tests.

Listens on 127.0.0.1 (port 0) in a thread, accepts `POST /v1/traces` with
`Content-Type: application/x-protobuf` (gzip allowed), decodes the real
`ExportTraceServiceRequest` protobuf and keeps the spans for assertions. Answers 200 with an
empty `ExportTraceServiceResponse`; other paths get 404, other content types 415.
"""

from __future__ import annotations

import gzip
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def _value(v: AnyValue) -> object:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


def _attrs(kvs) -> dict[str, object]:
    return {kv.key: _value(kv.value) for kv in kvs}


@dataclass
class ReceivedEvent:
    name: str
    time_ns: int
    attributes: dict[str, object]


@dataclass
class ReceivedSpan:
    trace_id: str  # hex
    span_id: str
    parent_span_id: str  # "" for a root
    name: str
    start_ns: int
    end_ns: int
    kind: int
    status_code: int
    attributes: dict[str, object]
    events: list[ReceivedEvent]
    resource: dict[str, object] = field(default_factory=dict)
    links: list[tuple[str, str]] = field(default_factory=list)  # (trace id, span id) hex


def decode_spans(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    """Every span of an OTLP export request (the HTTP and the gRPC receiver share it)."""
    spans = []
    for rs in request.resource_spans:
        resource = _attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        name=s.name,
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        kind=s.kind,
                        status_code=s.status.code,
                        attributes=_attrs(s.attributes),
                        events=[
                            ReceivedEvent(e.name, e.time_unix_nano, _attrs(e.attributes)) for e in s.events
                        ],
                        resource=resource,
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                    )
                )
    return spans


class OtlpReceiver:
    """`with OtlpReceiver() as rx: ... rx.endpoint ... rx.wait_for(lambda spans: ...)`."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self.rejected: list[str] = []  # why requests were refused
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/traces":
                    return self._refuse(404, f"path {self.path}")
                if self.headers.get("Content-Type") != "application/x-protobuf":
                    return self._refuse(415, f"content type {self.headers.get('Content-Type')}")
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                try:
                    request.ParseFromString(body)
                except Exception as exc:
                    return self._refuse(400, f"bad protobuf: {exc}")
                receiver._store(request)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def _refuse(self, code: int, why: str) -> None:
                with receiver._cond:
                    receiver.rejected.append(why)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="otlp-receiver", daemon=True
        )
        self._thread.start()

    def _store(self, request: ExportTraceServiceRequest) -> None:
        spans = decode_spans(request)
        with self._cond:
            self.requests += 1
            self.spans.extend(spans)
            self._cond.notify_all()

    def wait_for(self, predicate, timeout: float = 15.0) -> list[ReceivedSpan]:
        """Block until `predicate(spans)` holds (returns a copy of the spans) or fail."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.spans):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out: {len(self.spans)} spans received: {self.spans!r}")
                self._cond.wait(remaining)
            return list(self.spans)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> OtlpReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
