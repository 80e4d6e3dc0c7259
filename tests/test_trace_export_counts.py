"""loom_trace_spans_exported / _dropped / loom_trace_export_errors: the trace worker counts
what became of its spans and the exchange reads the counts at scrape time. Against the
in-test OTLP receiver, an endpoint that refuses connections, and a real `loom run`."""

from __future__ import annotations

import os
import socket
import urllib.request

from loomproc import loom_run
from otlp_receiver import OtlpReceiver
from prometheus_client import CollectorRegistry, generate_latest
from test_runtime_signals import samples, wait_for
from test_tracing import order, otlp_env
from waiting import wait_until

from telemetry.collectors import TraceExportCollector
from telemetry.trace_ids import new_trace_id
from telemetry.tracing import ExportCounts, Sampler, TraceShipper


def refusing_endpoint() -> str:
    """A loopback URL on which nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def scrape_shipper(shipper: TraceShipper) -> dict[tuple, float]:
    registry = CollectorRegistry()
    registry.register(TraceExportCollector(shipper))
    return samples(generate_latest(registry).decode())


def test_counts_survive_the_file_round_trip_and_a_torn_record_is_refused():
    counts = ExportCounts(exported=7, queue_full=3, failed_spans=2, errors=1, handed=9, submitted=9)
    assert ExportCounts.unpack(counts.pack()) == counts
    torn = bytearray(counts.pack())
    torn[0] ^= 1  # a value half-written when it was read
    assert ExportCounts.unpack(bytes(torn)) is None
    assert ExportCounts.unpack(b"") is None


def test_exported_spans_are_counted_as_the_receiver_got_them():
    with OtlpReceiver() as rx:
        shipper = TraceShipper(Sampler("all"), env=otlp_env(rx))
        for i in range(20):
            shipper.record(order(new_trace_id(), order_id=i + 1))
        shipper.flush()
        assert shipper.close() == 0
        spans = rx.wait_for(lambda s: len(s) >= 100)
    got = scrape_shipper(shipper)
    assert got[("loom_trace_spans_exported_total", ())] == len(spans) == 100  # 5 spans an order
    for reason in ("queue_full", "export_failed", "not_shipped"):
        assert got[("loom_trace_spans_dropped_total", (("reason", reason),))] == 0
    assert got[("loom_trace_export_errors_total", ())] == 0


def test_a_refusing_endpoint_counts_export_errors_and_a_full_queue_drops():
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=refusing_endpoint(),
        OTEL_EXPORTER_OTLP_TIMEOUT="1",
        OTEL_BSP_SCHEDULE_DELAY="50",
        OTEL_BSP_MAX_QUEUE_SIZE="8",
        OTEL_BSP_MAX_EXPORT_BATCH_SIZE="4",
    )
    shipper = TraceShipper(Sampler("all"), env=env)
    for i in range(40):
        shipper.record(order(new_trace_id(), order_id=i + 1))
    shipper.flush()
    # While it runs: the counts reach the exchange before the worker ends.
    deadline_counts = wait_counts(
        shipper, "an export error and a full queue", lambda c: c.errors >= 1 and c.queue_full >= 1
    )
    assert deadline_counts.exported == 0
    assert shipper.close(timeout=60) == 0
    final = shipper.export_stats()
    assert final.exported == 0
    assert final.errors >= 1 and final.failed_spans >= final.errors
    # Every span the worker built is accounted for: refused with its export, or dropped.
    assert final.failed_spans + final.queue_full == 40 * 5
    got = scrape_shipper(shipper)
    assert got[("loom_trace_export_errors_total", ())] == final.errors
    assert got[("loom_trace_spans_dropped_total", (("reason", "queue_full"),))] == final.queue_full
    assert got[("loom_trace_spans_dropped_total", (("reason", "export_failed"),))] == final.failed_spans


def wait_counts(shipper: TraceShipper, what: str, check, timeout: float = 30.0) -> ExportCounts:
    """Read the shipper's export counts until `check(counts)` holds, and return them."""

    def matching() -> ExportCounts | None:
        counts = shipper.export_stats()
        return counts if check(counts) else None

    return wait_until(what, matching, timeout=timeout, interval=0.05)


def test_a_loom_run_exporting_traces_shows_the_counts_on_metrics(tmp_path):
    with OtlpReceiver() as rx:
        env = otlp_env(rx)
        args = ["--demo", "--rate", "200", "--data-dir", str(tmp_path / "data"), "--http-port", "0"]
        args += ["--fix-port", "-1", "--binary-port", "-1"]
        with loom_run(args, env) as base:
            got = wait_for(
                base, lambda g: g.get(("loom_trace_spans_exported_total", ()), 0) > 0, "spans exported"
            )
            assert got[("loom_trace_spans_exported_total", ())] <= len(rx.spans)
            assert got[("loom_trace_export_errors_total", ())] == 0
            with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
                assert b"loom_trace_spans_dropped_total" in resp.read()
