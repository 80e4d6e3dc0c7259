"""Order tracing end to end over OTLP/gRPC: shipper -> worker process -> gRPC exporter ->
a real gRPC `TraceService` (tests/otlp_grpc_receiver.py). The OTLP/HTTP path and the span
layout in detail are covered by tests/test_tracing.py; this checks the grpc protocol choice
carries the same ids, parentage and attributes."""

from __future__ import annotations

import pytest
from otlp_grpc_receiver import OtlpGrpcReceiver
from test_tracing import order, otlp_env

from telemetry.trace_ids import new_trace_id
from telemetry.tracing import Sampler, TraceShipper


@pytest.fixture
def grpc_receiver():
    rx = OtlpGrpcReceiver()
    yield rx
    rx.close()


def grpc_env(rx: OtlpGrpcReceiver, **extra) -> dict[str, str]:
    return otlp_env(rx, "grpc", OTEL_EXPORTER_OTLP_INSECURE="true", **extra)


def test_end_to_end_over_grpc_keeps_trace_ids_parents_and_order_ids(grpc_receiver):
    remote_parent = "b7ad6b7169203331"
    plain = order(new_trace_id(), order_id=11)
    child = order(new_trace_id(), order_id=12, parent=remote_parent, protocol="fix")
    records = [plain, child]

    shipper = TraceShipper(Sampler("all"), env=grpc_env(grpc_receiver))
    for rec in records:
        shipper.record(rec)
    assert shipper.close() == 0
    assert (shipper.recorded, shipper.shipped, shipper.dropped) == (2, 2, 0)

    expected = 5 * len(records)  # order + receive/decode, journal, match, ack for each
    spans = grpc_receiver.wait_for(lambda s: len(s) >= expected)
    assert len(spans) == expected
    assert {s.trace_id for s in spans} == {rec.trace_id for rec in records}
    assert {s.resource.get("service.name") for s in spans} == {"loom-test"}

    for rec in records:
        mine = [s for s in spans if s.trace_id == rec.trace_id]
        roots = [s for s in mine if s.name == "order"]
        assert len(roots) == 1, mine
        root = roots[0]
        assert root.parent_span_id == rec.parent_span_id  # "" for a trace started here
        assert root.attributes["exchange.order.id"] == rec.order_id
        assert (root.start_ns, root.end_ns) == (rec.received_ns, rec.acked_ns)
        children = [s for s in mine if s is not root]
        assert sorted(s.name for s in children) == ["ack", "journal", "match", "receive/decode"]
        for s in children:
            assert s.parent_span_id == root.span_id
        assert len({s.span_id for s in mine}) == len(mine)

    root_of_child = next(s for s in spans if s.trace_id == child.trace_id and s.name == "order")
    assert root_of_child.parent_span_id == remote_parent
