"""The recorder's choice under errors-and-slow sampling: every rejected order is exported
(found through the shared walk by seq, or by a scan when the journal refused the whole
batch and the rejections carry no seq), and nothing else when no order is slow."""

from __future__ import annotations

import asyncio
import os

import pytest

from engine.bench.workload import INSTRUMENT, SYMBOL
from engine.core.commands import Cancel, NewOrder
from engine.core.domain import OrderType, Side
from engine.core.events import OrderRejected
from engine.exchange import ExchangeNode, NodeConfig
from engine.service import ExchangeService
from telemetry.order_traces import OrderTraceRecorder
from telemetry.tracing import Sampler, TraceShipper

ONLY_ERRORS = "errors-and-slow:3600000"  # slower than an hour: only rejections are kept


def batch() -> list:
    return [
        NewOrder("alice", "ok", SYMBOL, int(Side.BUY), int(OrderType.LIMIT), 100_000, 5),
        NewOrder("alice", "bad", "NO-SUCH", int(Side.BUY), int(OrderType.LIMIT), 100_000, 5),
        Cancel("alice", 999),  # rejected too, but not an order: no order trace
        NewOrder("alice", "zero", SYMBOL, int(Side.SELL), int(OrderType.LIMIT), 100_000, 0),
    ]


@pytest.mark.parametrize("journal_fails", [False, True])
def test_errors_and_slow_exports_exactly_the_rejected_orders(tmp_path, journal_fails):
    node = ExchangeNode(NodeConfig(tmp_path, (INSTRUMENT,), snapshot_every_s=0))
    service = ExchangeService(node, write_thread=False)
    shipper = TraceShipper(Sampler("all"), {**os.environ, "OTEL_TRACES_EXPORTER": "none"})
    recorder = OrderTraceRecorder(shipper, node.trace_id_of, Sampler(ONLY_ERRORS))
    service.add_observer(recorder)

    async def main() -> list[list]:
        service.start()
        if journal_fails:
            node.journal.fail_writes()
        results = await service.submit(batch())
        await service.stop()
        return results

    try:
        results = asyncio.run(main())
    finally:
        shipper.close()
        node.close()
    rejected_orders = [
        events
        for cmd, events in zip(batch(), results, strict=True)
        if type(cmd) is NewOrder and type(events[0]) is OrderRejected
    ]
    assert len(rejected_orders) == (3 if journal_fails else 2)
    assert recorder.recorded == len(rejected_orders)
    assert shipper.stats()["shipped"] == len(rejected_orders)
