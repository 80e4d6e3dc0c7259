"""A small OTLP/gRPC trace receiver for tests, the gRPC twin of tests/otlp_receiver.py.

Runs a real `grpc.server` on 127.0.0.1 (port 0, insecure) with the OTLP `TraceService`
registered; `Export` keeps the decoded spans for assertions (the same `ReceivedSpan` records
as the HTTP receiver) and answers an empty `ExportTraceServiceResponse`.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import (
    TraceServiceServicer,
    add_TraceServiceServicer_to_server,
)
from otlp_receiver import ReceivedSpan, decode_spans


class _TraceService(TraceServiceServicer):
    def __init__(self, receiver: OtlpGrpcReceiver) -> None:
        self.receiver = receiver

    def Export(
        self, request: ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> ExportTraceServiceResponse:
        self.receiver._store(request)
        return ExportTraceServiceResponse()


class OtlpGrpcReceiver:
    """`with OtlpGrpcReceiver() as rx: ... rx.endpoint ... rx.wait_for(lambda spans: ...)`."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self._cond = threading.Condition()
        self._server = grpc.server(ThreadPoolExecutor(max_workers=4, thread_name_prefix="otlp-grpc"))
        add_TraceServiceServicer_to_server(_TraceService(self), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        if not self.port:
            raise RuntimeError("could not bind an OTLP/gRPC port on 127.0.0.1")
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server.start()

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
        self._server.stop(grace=None).wait()

    def __enter__(self) -> OtlpGrpcReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
