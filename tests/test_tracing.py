"""Order tracing: traceparent parsing, sampling, and the shipper -> worker -> OTLP pipeline
end to end against a real OTLP/HTTP receiver (tests/otlp_receiver.py)."""

from __future__ import annotations

import io
import os
import signal
import sys
import threading

import msgspec
import pytest
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from otlp_receiver import OtlpReceiver

from telemetry.trace_ids import format_traceparent, new_trace_id, parse_traceparent
from telemetry.trace_worker import run
from telemetry.tracing import OrderTrace, Sampler, TraceShipper

T0 = 1_700_000_000_000_000_000
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def order(trace_id: str, outcome: str = "accepted", parent: str = "", latency_ns: int = 50_000, **kw):
    fields = dict(
        trace_id=trace_id,
        parent_span_id=parent,
        order_id=kw.pop("order_id", 7),
        client_order_id="c-7",
        account="acct-1",
        symbol="BTC-USD",
        side="buy",
        order_type="limit",
        outcome=outcome,
        protocol="http",
        received_ns=T0,
        decoded_ns=T0 + 1_000,
        journal_start_ns=T0 + 2_000,
        journal_end_ns=T0 + 30_000,
        matched_ns=T0 + 35_000,
        acked_ns=T0 + latency_ns,
    )
    fields.update(kw)
    return OrderTrace(**fields)


# -- ids and traceparent ---------------------------------------------------------------------


def test_new_trace_id_is_32_lowercase_hex_and_unique():
    ids = {new_trace_id() for _ in range(1000)}
    assert len(ids) == 1000
    for tid in ids:
        assert len(tid) == 32 and tid == tid.lower() and int(tid, 16) != 0


def test_parse_valid_traceparent():
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-01") == (TRACE, SPAN)
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-00") == (TRACE, SPAN)  # not sampled upstream: still ours
    assert parse_traceparent(f" 00-{TRACE}-{SPAN}-01 ") == (TRACE, SPAN)
    # a future version may append fields
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-01-whatever") == (TRACE, SPAN)
    assert parse_traceparent(format_traceparent(TRACE, SPAN)) == (TRACE, SPAN)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        f"00-{TRACE}-{SPAN}",  # no flags
        f"00-{TRACE.upper()}-{SPAN}-01",  # uppercase hex
        f"00-{TRACE[:-1]}-{SPAN}-01",  # short trace id
        f"00-{TRACE}-{SPAN}0-01",  # long span id
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 has exactly four fields
        f"ff-{TRACE}-{SPAN}-01",  # version ff is invalid
        f"0g-{TRACE}-{SPAN}-01",
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero span id
        f"00_{TRACE}_{SPAN}_01",
    ],
)
def test_parse_rejects_invalid_traceparent(header):
    assert parse_traceparent(header) is None


# -- sampling ----------------------------------------------------------------------------------


def test_sampler_all_is_default_and_keeps_everything():
    assert Sampler.from_env({}).keep_all
    sampler = Sampler()
    assert all(sampler.should_sample(order(new_trace_id())) for _ in range(100))


def test_ratio_sampler_is_deterministic_and_agrees_with_otel():
    sampler = Sampler("ratio:0.25")
    otel = TraceIdRatioBased(0.25)
    ids = [new_trace_id() for _ in range(4000)]
    kept = [tid for tid in ids if sampler.should_sample(order(tid))]
    assert kept == [tid for tid in ids if sampler.should_sample(order(tid))]  # same answer twice
    assert kept == [
        tid for tid in ids if otel.should_sample(None, int(tid, 16), "order").decision.is_sampled()
    ]
    assert 800 < len(kept) < 1200
    assert not any(Sampler("ratio:0").should_sample(order(tid)) for tid in ids[:200])
    assert all(Sampler("ratio:1").should_sample(order(tid)) for tid in ids[:200])


def test_errors_and_slow_keeps_rejections_and_slow_orders():
    sampler = Sampler.from_env({"LOOM_TRACE_SAMPLING": "errors-and-slow:5"})
    ids = [new_trace_id() for _ in range(200)]
    assert all(sampler.should_sample(order(t, "rejected:PRICE_BAND")) for t in ids)
    assert all(sampler.should_sample(order(t, latency_ns=6_000_000)) for t in ids)  # 6 ms > 5 ms
    assert not any(sampler.should_sample(order(t, latency_ns=4_000_000)) for t in ids)  # fast, no ratio
    # plus a ratio of the rest, on the same rule as ratio:<p>
    with_ratio = Sampler("errors-and-slow:5:0.5")
    fast_kept = [t for t in ids if with_ratio.should_sample(order(t, latency_ns=1_000))]
    assert fast_kept == [t for t in ids if Sampler("ratio:0.5").should_sample(order(t))]
    assert 0 < len(fast_kept) < len(ids)


@pytest.mark.parametrize(
    "spec", ["ratio", "ratio:x", "ratio:1.5", "errors-and-slow", "errors-and-slow:-1", "some"]
)
def test_sampler_rejects_bad_specs(spec):
    with pytest.raises(ValueError, match="sampling spec"):
        Sampler(spec)


# -- the worker on its own (in-process) ---------------------------------------------------------


class ListExporter:
    def __init__(self):
        self.spans = []

    def export(self, spans):
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.spans.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self):
        pass

    def force_flush(self, timeout_millis=30_000):
        return True


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "little") + payload


def test_worker_skips_malformed_records_and_keeps_going():
    enc = msgspec.msgpack.encode
    stream = io.BytesIO(
        frame(b"\xc1not msgpack")
        + frame(enc(["too", "short"]))
        + frame(enc(order("zz" * 16)))  # not hex
        + frame(enc(order("0" * 32)))  # zero trace id
        + frame(enc(order(TRACE)))
        + frame(enc(order(TRACE, outcome="rejected:NO_LIQUIDITY", journal_start_ns=0, journal_end_ns=0)))
    )
    exporter = ListExporter()
    stats = run(stream, exporter)
    assert stats == {"records": 2, "spans": 5 + 3, "malformed": 4, "broken_stream": 0}
    names = sorted(s.name for s in exporter.spans)
    assert names.count("order") == 2 and names.count("journal") == 1
    assert {s.context.trace_id for s in exporter.spans} == {int(TRACE, 16)}


def test_worker_stops_cleanly_on_a_broken_stream():
    stream = io.BytesIO(frame(msgspec.msgpack.encode(order(TRACE))) + (10**9).to_bytes(4, "little") + b"x")
    exporter = ListExporter()
    stats = run(stream, exporter)
    assert stats["records"] == 1 and stats["broken_stream"] == 1
    assert len(exporter.spans) == 5  # what came before the break is still exported


# -- end to end: shipper -> worker process -> OTLP/HTTP -> receiver ------------------------------


@pytest.fixture
def receiver():
    rx = OtlpReceiver()
    yield rx
    rx.close()


def otlp_env(rx, protocol: str = "http/protobuf", **extra) -> dict[str, str]:
    """The worker's environment for exporting to a test receiver (HTTP or gRPC)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=rx.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        OTEL_BSP_SCHEDULE_DELAY="50",
        OTEL_SERVICE_NAME="loom-test",
        **extra,
    )
    return env


def test_end_to_end_spans_carry_the_records_ids_times_and_attributes(receiver):
    plain = order(new_trace_id(), order_id=1, outcome="accepted")
    remote_parent = "b7ad6b7169203331"
    child = order(new_trace_id(), order_id=2, parent=remote_parent, protocol="fix")
    rejected = order(
        new_trace_id(),
        order_id=3,
        outcome="rejected:PRICE_BAND",
        journal_start_ns=0,
        journal_end_ns=0,
        matched_ns=0,
        acked_ns=T0 + 5_000,
    )
    fills = [(900, 101_00, 30, T0 + 33_000), (901, 101_05, 20, T0 + 34_000)]
    filled = order(new_trace_id(), order_id=4, outcome="filled", fills=fills)
    records = [plain, child, rejected, filled]

    shipper = TraceShipper(Sampler("all"), env=otlp_env(receiver))
    for rec in records:
        shipper.record(rec)
    shipper.flush()
    assert shipper.close() == 0
    assert shipper.stats() == {"recorded": 4, "sampled_out": 0, "shipped": 4, "dropped": 0, "buffered": 0}

    expected = 5 + 5 + 2 + 5  # the rejection never reached the journal: order, receive/decode only
    spans = receiver.wait_for(lambda s: len(s) >= expected)
    assert len(spans) == expected
    assert receiver.rejected == []
    assert {s.resource.get("service.name") for s in spans} == {"loom-test"}

    for rec in records:
        mine = [s for s in spans if s.trace_id == rec.trace_id]
        roots = [s for s in mine if s.name == "order"]
        assert len(roots) == 1, mine
        root = roots[0]
        assert root.parent_span_id == rec.parent_span_id  # "" for a trace started here
        assert (root.start_ns, root.end_ns) == (rec.received_ns, rec.acked_ns)
        assert root.attributes == {
            "exchange.order.id": rec.order_id,
            "exchange.client_order.id": rec.client_order_id,
            "exchange.account": rec.account,
            "exchange.symbol": rec.symbol,
            "exchange.side": rec.side,
            "exchange.order.type": rec.order_type,
            "exchange.outcome": rec.outcome,
            "exchange.protocol": rec.protocol,
            "network.protocol.name": rec.protocol,  # these records name protocols OTel's way
        }
        children = {s.name: s for s in mine if s is not root}
        for s in children.values():
            assert s.parent_span_id == root.span_id
        assert children["receive/decode"].start_ns == rec.received_ns
        assert children["receive/decode"].end_ns == rec.decoded_ns
        if rec is rejected:
            assert set(children) == {"receive/decode"}
            assert root.status_code == 2  # STATUS_CODE_ERROR
            continue
        assert set(children) == {"receive/decode", "journal", "match", "ack"}
        assert (children["journal"].start_ns, children["journal"].end_ns) == (
            rec.journal_start_ns,
            rec.journal_end_ns,
        )
        assert (children["match"].start_ns, children["match"].end_ns) == (rec.journal_end_ns, rec.matched_ns)
        assert (children["ack"].start_ns, children["ack"].end_ns) == (rec.matched_ns, rec.acked_ns)
        got_fills = [
            (
                e.attributes["exchange.trade.id"],
                e.attributes["exchange.fill.price"],
                e.attributes["exchange.fill.qty"],
                e.time_ns,
            )
            for e in root.events
            if e.name == "fill"
        ]
        assert got_fills == list(rec.fills)

    assert next(s for s in spans if s.trace_id == child.trace_id and s.name == "order").parent_span_id == (
        remote_parent
    )


def test_sampled_out_records_never_reach_the_receiver(receiver):
    shipper = TraceShipper(Sampler("errors-and-slow:1"), env=otlp_env(receiver))
    slow = order(new_trace_id(), order_id=1, latency_ns=2_000_000)
    fast = order(new_trace_id(), order_id=2, latency_ns=10_000)
    bad = order(new_trace_id(), order_id=3, outcome="rejected:UNKNOWN_SYMBOL")
    for rec in (slow, fast, bad):
        shipper.record(rec)
    assert shipper.close() == 0
    assert (shipper.recorded, shipper.sampled_out, shipper.shipped) == (3, 1, 2)
    spans = receiver.wait_for(lambda s: len([x for x in s if x.name == "order"]) >= 2)
    assert {s.trace_id for s in spans} == {slow.trace_id, bad.trace_id}


def finished_without_blocking(work, what: str) -> None:
    """Run `work` in a thread and fail if it is still running after a minute: a hang, which a
    blocking pipe write would be (how fast it runs is a benchmark's business, not this test's)."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # re-raised below, in the test's thread
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), f"{what} blocked"
    if failures:
        raise failures[0]


def test_dead_worker_never_blocks_or_raises(receiver):
    shipper = TraceShipper(Sampler("all"), env=otlp_env(receiver))
    shipper.record(order(new_trace_id()))
    shipper.flush()
    assert shipper.shipped == 1
    os.kill(shipper.process.pid, signal.SIGKILL)
    shipper.process.wait(timeout=10)
    buffered: list[int] = []

    def record_all() -> None:
        for i in range(2000):
            shipper.record(order(new_trace_id(), order_id=i))
            buffered.append(shipper.buffered)
            if i % 10 == 0:
                shipper.flush()
        shipper.flush()

    finished_without_blocking(record_all, "recording to a dead worker")
    assert shipper.dropped == 2000
    assert shipper.recorded == shipper.shipped + shipper.dropped == 2001
    # Once the first write failed, a record is dropped on arrival: nothing piles up in memory.
    assert max(buffered[1:]) == 0, max(buffered)
    assert not shipper.alive()
    assert shipper.close(timeout=2) == -signal.SIGKILL


def test_hung_worker_never_blocks_and_drops_whole_records():
    # a "worker" that never reads: the pipe fills up and then every flush drops
    hung = [sys.executable, "-c", "import time; time.sleep(60)"]
    shipper = TraceShipper(Sampler("all"), command=hung, pipe_size=64 * 1024)
    n = 5000  # ~0.7 MB of records, far past a 64 KiB pipe

    def record_all() -> None:
        for i in range(n):
            shipper.record(order(new_trace_id(), order_id=i, client_order_id="x" * 64))
            if i % 50 == 0:
                shipper.flush()
        shipper.flush()

    # A blocking write into the full pipe would never return: the child never reads.
    finished_without_blocking(record_all, "recording to a worker that never reads")
    assert shipper.dropped > 0
    assert shipper.shipped > 0
    # every record is accounted for: shipped, dropped, or the tail of a partial write
    assert shipper.shipped + shipper.dropped + len(shipper._pending_ends) == n
    # It cannot drain, so it gives up and kills the child (which would sleep on for a minute).
    assert shipper.close(timeout=0.5) == -signal.SIGKILL
    assert shipper.shipped + shipper.dropped == n
    dropped = shipper.dropped
    shipper.record(order(new_trace_id()))  # after close: counted, not raised
    assert shipper.dropped == dropped + 1


def test_partial_writes_keep_the_stream_in_frame(receiver):
    # a tiny pipe forces partial writes; the worker must still decode every record it gets
    shipper = TraceShipper(Sampler("all"), env=otlp_env(receiver), pipe_size=4096)
    traces = [order(new_trace_id(), order_id=i, client_order_id="y" * 200) for i in range(300)]
    for i, rec in enumerate(traces):
        shipper.record(rec)
        if i % 40 == 0:
            shipper.flush()
    assert shipper.close() == 0
    assert shipper.shipped + shipper.dropped == len(traces)
    assert shipper.shipped > 0
    spans = receiver.wait_for(lambda s: len([x for x in s if x.name == "order"]) >= shipper.shipped)
    roots = [s for s in spans if s.name == "order"]
    assert len(roots) == shipper.shipped
    by_trace = {rec.trace_id: rec for rec in traces}
    for root in roots:
        assert root.attributes["exchange.order.id"] == by_trace[root.trace_id].order_id
