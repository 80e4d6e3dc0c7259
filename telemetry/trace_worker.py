"""Order tracing, the expensive half: the child process that turns records into spans.

`TraceShipper` (telemetry/tracing.py) starts `python -m telemetry.trace_worker` and writes
length-prefixed (u32 little-endian) msgpack `OrderTrace` records to its stdin. For each one
this builds OpenTelemetry SDK spans with explicit start and end times, so the span timings
are the exchange's own stamps, not the moment this process got round to them:

  order            received -> acked  (child of the incoming `traceparent` span, if any)
    receive/decode received -> decoded
    journal        journal_start -> journal_end (durable)
    match          journal_end -> matched
    risk           the pre-trade checks, inside match (only when the order's batch had
                   them timed: one batch in 8 while risk limits are set)
    ack            matched -> acked
  and one "fill" event on "order" per fill, at the fill's time.

A `FillTrace` (a resting order filled by a later order) becomes one more child of that
order's root span: "fill", durable -> matched of the batch that traded, with a "fill" event
at the trade's time and a link to the taker's root span. Root span ids are a function of
(trace id, order id) (`root_span_id`), so the fill finds its parent with no shared state.

The spans carry the record's trace id. The exporter is configured by the standard variables:
OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL (http/protobuf by default, or grpc),
OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, OTEL_SERVICE_NAME (default "loom-exchange"),
OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_*; OTEL_TRACES_EXPORTER=console|none for debugging.
On EOF (or SIGTERM) it exports what it holds and exits 0. Records that do not decode are
counted and skipped.

What happens to the spans is counted (`ExportCounts`: exported, dropped because the export
queue was full, failed exports) and written every 0.25 s to the file the exchange passed in
LOOM_TRACE_STATS_FD, which the exchange reads at scrape time (loom_trace_spans_*).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import BinaryIO

import msgspec
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import Link, SpanContext, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue

from telemetry.trace_ids import root_span_id
from telemetry.tracing import (
    FRAME_HEADER,
    MAX_RECORD_BYTES,
    STATS_FD_ENV,
    ExportCounts,
    FillTrace,
    OrderTrace,
)

DEFAULT_SERVICE_NAME = "loom-exchange"
DEFAULT_MAX_QUEUE_SIZE = 65_536  # the SDK's 2048 drops spans in a burst (5 spans an order)
REPORT_INTERVAL_S = 0.25
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


class CountingExporter(SpanExporter):
    """Wraps the OTLP exporter: counts the spans it exported and the exports that failed
    (a refusal, an unreachable endpoint, a timeout, or an exception)."""

    def __init__(self, inner: SpanExporter, counts: ExportCounts) -> None:
        self.inner = inner
        self.counts = counts

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        n = len(spans)
        counts = self.counts
        counts.submitted += n
        try:
            result = self.inner.export(spans)
        except Exception as exc:  # the SDK would log it with a traceback; count it instead
            print(f"trace_worker: export failed: {exc!r}", file=sys.stderr)
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            counts.exported += n
        else:
            counts.errors += 1
            counts.failed_spans += n
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


class BoundedProcessor(SpanProcessor):
    """The batch processor behind a bound this process keeps itself: at `limit` spans waiting
    for export, a new span is dropped and counted (the SDK's own queue would drop silently).
    The SDK queue is as large as the bound, so it never drops on its own."""

    def __init__(self, exporter: CountingExporter, limit: int) -> None:
        self.counts = exporter.counts
        self.limit = limit
        self.inner = BatchSpanProcessor(exporter, max_queue_size=limit)

    def on_start(self, span, parent_context=None) -> None:
        self.inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        counts = self.counts
        if counts.handed - counts.submitted >= self.limit:
            counts.queue_full += 1
            return
        counts.handed += 1
        self.inner.on_end(span)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


class CountsReporter:
    """Writes the counts to the exchange's stats file every REPORT_INTERVAL_S (when they
    changed), from a daemon thread, and once more at the end."""

    def __init__(self, fd: int, counts: ExportCounts) -> None:
        self.fd = fd
        self.counts = counts
        self._stop = threading.Event()
        self._last = b""
        self._thread = threading.Thread(target=self._run, name="trace-counts", daemon=True)
        self._thread.start()

    def write(self) -> None:
        data = self.counts.pack()
        if data != self._last:
            try:
                os.pwrite(self.fd, data, 0)
            except OSError:
                return
            self._last = data

    def _run(self) -> None:
        while not self._stop.wait(REPORT_INTERVAL_S):
            self.write()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.write()


class RecordIdGenerator(RandomIdGenerator):
    """Hands the SDK the trace id of the record being built. The SDK asks the generator for a
    trace id only for a root span (no valid parent), which is exactly when it must be the
    record's; the root's span id is `root_span_id`, the others' random."""

    def __init__(self) -> None:
        self.next_trace_id = 0
        self.next_span_id = 0

    def generate_trace_id(self) -> int:
        return self.next_trace_id or super().generate_trace_id()

    def generate_span_id(self) -> int:
        span_id, self.next_span_id = self.next_span_id, 0  # once: the root's only
        return span_id or super().generate_span_id()


def _env(name: str, default: str = "") -> str:
    return os.environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or os.environ.get(
        f"OTEL_EXPORTER_OTLP_{name}", default
    )


def make_exporter() -> SpanExporter | None:
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if kind == "none":
        return None
    if kind == "console":
        return ConsoleSpanExporter()
    protocol = _env("PROTOCOL", "http/protobuf").strip().lower()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    if protocol != "http/protobuf":
        print(f"trace_worker: protocol {protocol!r} unsupported, using http/protobuf", file=sys.stderr)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


# What the exchange tells its worker about itself (telemetry.tracing.SERVER_ENV): the
# resource's version, instance and environment, and the listeners' address and ports.
_RESOURCE_ENV = {
    "service.version": "LOOM_SERVICE_VERSION",
    "service.instance.id": "LOOM_SERVICE_INSTANCE_ID",
    "deployment.environment": "LOOM_DEPLOYMENT_ENVIRONMENT",
}
# OpenTelemetry's network.protocol.name of each gateway
_PROTOCOL_NAME = {"rest": "http", "websocket": "websocket", "fix": "fix", "binary": "binary"}


def make_resource() -> Resource:
    """OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME first (Resource.create reads them), then
    what the exchange passed for attributes they leave unset."""
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    explicit = {
        item.partition("=")[0].strip() for item in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(",")
    }
    ours = {k: os.environ[v] for k, v in _RESOURCE_ENV.items() if os.environ.get(v) and k not in explicit}
    return resource.merge(Resource(ours))  # over the SDK's defaults (a random instance id)


@functools.lru_cache(maxsize=64)  # per (protocol, status): the environment is read once
def server_attributes(protocol: str, status_code: int = 0) -> dict[str, AttributeValue]:
    """OpenTelemetry semantic conventions of an order's receive: the protocol, the listener
    (server.address, server.port) and for REST the method, path and response status."""
    attributes: dict[str, AttributeValue] = {"network.protocol.name": _PROTOCOL_NAME.get(protocol, protocol)}
    address = os.environ.get("LOOM_SERVER_ADDRESS")
    if address:
        attributes["server.address"] = address
    listener = "HTTP" if protocol in ("rest", "websocket") else protocol.upper()
    port = os.environ.get(f"LOOM_SERVER_PORT_{listener}")
    if port and port.isdigit():
        attributes["server.port"] = int(port)
    if protocol == "rest":
        attributes["http.request.method"] = "POST"  # the only REST request that creates an order
        attributes["url.path"] = "/v1/orders"
        if status_code:
            attributes["http.response.status_code"] = status_code
    return attributes


class SpanBuilder:
    """Builds the spans of one `OrderTrace` on a tracer whose provider uses `ids`."""

    def __init__(self, tracer: trace.Tracer, ids: RecordIdGenerator) -> None:
        self.tracer = tracer
        self.ids = ids

    def build(self, rec: OrderTrace | FillTrace) -> int:
        """Emit the record's spans; returns how many. Raises ValueError for a bad trace id."""
        trace_id = _trace_id(rec.trace_id)
        if isinstance(rec, FillTrace):
            return self.build_fill(rec, trace_id)
        parent_ctx = None
        if rec.parent_span_id:
            try:
                parent_span_id = int(rec.parent_span_id, 16)
            except ValueError:
                parent_span_id = 0
            if 0 < parent_span_id < 1 << 64:
                remote = SpanContext(trace_id, parent_span_id, is_remote=True, trace_flags=_SAMPLED)
                parent_ctx = trace.set_span_in_context(trace.NonRecordingSpan(remote))
        stamps = [
            t
            for t in (rec.decoded_ns, rec.journal_start_ns, rec.journal_end_ns, rec.matched_ns, rec.acked_ns)
            if t
        ]
        start = rec.received_ns or min(stamps, default=0)
        end = rec.acked_ns or max([start, *stamps, *(f[3] for f in rec.fills)])
        attributes: dict[str, AttributeValue] = {
            "exchange.order.id": rec.order_id,
            "exchange.client_order.id": rec.client_order_id,
            "exchange.account": rec.account,
            "exchange.symbol": rec.symbol,
            "exchange.side": rec.side,
            "exchange.order.type": rec.order_type,
            "exchange.outcome": rec.outcome,
            "exchange.protocol": rec.protocol,
        }
        received = server_attributes(rec.protocol, rec.status_code)  # shared: never mutated
        attributes.update(received)
        self.ids.next_trace_id = trace_id
        self.ids.next_span_id = int(root_span_id(rec.trace_id, rec.order_id), 16)
        try:
            root = self.tracer.start_span(
                "order",
                context=parent_ctx,
                kind=trace.SpanKind.SERVER,
                attributes=attributes,
                start_time=start,
            )
        finally:
            self.ids.next_trace_id = self.ids.next_span_id = 0
        if rec.outcome.startswith("rejected"):
            root.set_status(Status(StatusCode.ERROR, rec.outcome.partition(":")[2] or rec.outcome))
        for trade_id, price, qty, ts_ns in rec.fills:
            root.add_event(
                "fill",
                {"exchange.trade.id": trade_id, "exchange.fill.price": price, "exchange.fill.qty": qty},
                timestamp=ts_ns,
            )
        ctx = trace.set_span_in_context(root)
        count = 1
        for name, t0, t1 in (
            ("receive/decode", rec.received_ns, rec.decoded_ns),
            ("journal", rec.journal_start_ns, rec.journal_end_ns),
            ("match", rec.journal_end_ns, rec.matched_ns),
            ("risk", rec.risk_start_ns, rec.risk_end_ns),
            ("ack", rec.matched_ns, rec.acked_ns),
        ):
            if t0 and t1 and t1 >= t0:  # a stage the order never reached has no span
                stage_attributes = received if name == "receive/decode" else None
                span = self.tracer.start_span(name, context=ctx, start_time=t0, attributes=stage_attributes)
                span.end(end_time=t1)
                count += 1
        root.end(end_time=end)
        return count

    def build_fill(self, rec: FillTrace, trace_id: int) -> int:
        """The maker's fill as a child of the maker's root span (whenever that was exported)."""
        parent = SpanContext(
            trace_id, int(root_span_id(rec.trace_id, rec.order_id), 16), is_remote=False, trace_flags=_SAMPLED
        )
        links = []
        if rec.taker_trace_id:
            taker = _trace_id(rec.taker_trace_id)
            span_id = int(root_span_id(rec.taker_trace_id, rec.taker_order_id), 16)
            links.append(Link(SpanContext(taker, span_id, is_remote=False, trace_flags=_SAMPLED)))
        fill = {
            "exchange.trade.id": rec.trade_id,
            "exchange.fill.price": rec.price,
            "exchange.fill.qty": rec.qty,
        }
        span = self.tracer.start_span(
            "fill",
            context=trace.set_span_in_context(trace.NonRecordingSpan(parent)),
            attributes={
                "exchange.order.id": rec.order_id,
                "exchange.account": rec.account,
                "exchange.symbol": rec.symbol,
                "exchange.side": rec.side,
                "exchange.liquidity": "maker",
                "exchange.order.leaves": rec.leaves,
                "exchange.counterparty.order.id": rec.taker_order_id,
                **fill,
            },
            links=links,
            start_time=rec.start_ns,
        )
        span.add_event("fill", fill, timestamp=rec.ts_ns)
        span.end(end_time=max(rec.end_ns, rec.start_ns))
        return 1


def _trace_id(text: str) -> int:
    trace_id = int(text, 16)
    if not 0 < trace_id < 1 << 128 or len(text) != 32:
        raise ValueError(f"bad trace id {text!r}")
    return trace_id


def read_frames(stream: BinaryIO):
    """Yield each record's bytes until EOF. A length past MAX_RECORD_BYTES or a truncated
    frame means the stream itself is broken: stop."""
    while True:
        header = stream.read(FRAME_HEADER)
        if len(header) < FRAME_HEADER:
            return
        size = int.from_bytes(header, "little")
        if size > MAX_RECORD_BYTES:
            raise ValueError(f"frame of {size} bytes: stream out of sync")
        payload = stream.read(size)
        if len(payload) < size:
            raise ValueError("truncated frame at EOF")
        yield payload


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(0)


def run(
    stream: BinaryIO, exporter: SpanExporter | None, counts: ExportCounts | None = None
) -> dict[str, int]:
    """Build and export the spans of every record on `stream`; `counts` (when given) is kept
    up to date with what became of the spans."""
    ids = RecordIdGenerator()
    provider = TracerProvider(resource=make_resource(), id_generator=ids, sampler=ALWAYS_ON)
    if exporter is not None:
        queue = int(os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_MAX_QUEUE_SIZE))
        counting = CountingExporter(exporter, counts if counts is not None else ExportCounts())
        provider.add_span_processor(BoundedProcessor(counting, queue))
    builder = SpanBuilder(provider.get_tracer("loom.exchange.orders"), ids)
    decode = msgspec.msgpack.Decoder(OrderTrace | FillTrace).decode
    stats = {"records": 0, "spans": 0, "malformed": 0, "broken_stream": 0}
    try:
        for payload in read_frames(stream):
            try:
                stats["spans"] += builder.build(decode(payload))
                stats["records"] += 1
            except (msgspec.DecodeError, ValueError, TypeError, OverflowError):
                stats["malformed"] += 1
    except ValueError as exc:
        stats["broken_stream"] = 1
        print(f"trace_worker: {exc}", file=sys.stderr)
    finally:
        provider.shutdown()  # exports what the batch processor still holds
    return stats


def _signal_ready() -> None:
    """Tell the shipper the SDK is imported and the exporter built (one byte on the fd it
    passed in LOOM_TRACE_READY_FD), so a benchmark can start its clock after start-up."""
    fd = os.environ.get("LOOM_TRACE_READY_FD")
    if fd and fd.isdigit():
        try:
            os.write(int(fd), b"1")
            os.close(int(fd))
        except OSError:
            pass


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    exporter = make_exporter()
    counts = ExportCounts()
    fd = os.environ.get(STATS_FD_ENV, "")
    reporter = CountsReporter(int(fd), counts) if fd.isdigit() else None
    _signal_ready()
    try:
        stats = run(sys.stdin.buffer, exporter, counts)
    finally:
        if reporter is not None:
            reporter.close()
    if stats["malformed"] or stats["broken_stream"] or os.environ.get("LOOM_TRACE_WORKER_VERBOSE"):
        print(f"trace_worker: {stats}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
