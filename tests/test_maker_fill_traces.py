"""Fills on the maker's trace: an order that rests and is later traded against gets a
"fill" span on its own trace (under its root span, linked to the taker's), exported by the
real `loom run` to a receiver that decodes the real OTLP/HTTP protobuf; and an order that
was not sampled gets none."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request

import pytest
from loomproc import loom_run
from otlp_receiver import OtlpReceiver

from engine.bench.workload import INSTRUMENT, SYMBOL
from engine.core.commands import NewOrder
from engine.core.domain import OrderType, Side
from engine.exchange import ExchangeNode, NodeConfig
from engine.service import ExchangeService
from telemetry.order_traces import OrderTraceRecorder
from telemetry.trace_ids import root_span_id
from telemetry.tracing import Sampler, TraceShipper

ALICE, BOB = "alice-key-0000000000", "bob-key-000000000000"
CONFIG = f"""
[[instruments]]
symbol = "{SYMBOL}"
tick_size = 1
lot_size = 1
min_qty = 1
max_qty = 1000000

[[accounts]]
name = "alice"
api_key = "{ALICE}"

[[accounts]]
name = "bob"
api_key = "{BOB}"
"""


@pytest.fixture(scope="module")
def exchange(tmp_path_factory):
    root = tmp_path_factory.mktemp("makerfill")
    (root / "loom.toml").write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    with OtlpReceiver() as rx:
        env.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_BSP_SCHEDULE_DELAY="50",
            LOOM_TRACE_SAMPLING="all",
        )
        args = ["--config", str(root / "loom.toml"), "--data-dir", str(root / "data"), "--http-port", "0"]
        with loom_run([*args, "--fix-port", "-1", "--binary-port", "-1"], env) as base:
            yield base, rx


def post_order(base: str, key: str, side: str, qty: int, price: int) -> tuple[int, str]:
    body = {"symbol": SYMBOL, "side": side, "qty": qty, "price": price, "client_order_id": f"{side}-{qty}"}
    req = urllib.request.Request(
        base + "/v1/orders",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"X-API-Key": key, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["order"]["order_id"], resp.headers["X-Trace-Id"]


def test_a_resting_orders_fills_are_spans_on_its_own_trace(exchange):
    base, rx = exchange
    maker_id, maker_trace = post_order(base, ALICE, "sell", 3, 100_000)
    taker_id, taker_trace = post_order(base, BOB, "buy", 1, 100_000)
    last_id, _ = post_order(base, BOB, "buy", 2, 100_000)  # fills the rest of the maker

    def mine(spans):
        return [s for s in spans if s.trace_id == maker_trace]

    spans = rx.wait_for(lambda spans: sum(s.name == "fill" for s in mine(spans)) == 2 and mine(spans))
    root = next(s for s in mine(spans) if s.name == "order")
    assert root.span_id == root_span_id(maker_trace, maker_id)
    assert root.attributes["exchange.outcome"] == "accepted"  # it rested when it was recorded
    fills = sorted((s for s in mine(spans) if s.name == "fill"), key=lambda s: s.start_ns)
    assert [f.parent_span_id for f in fills] == [root.span_id] * 2
    assert [f.attributes["exchange.fill.qty"] for f in fills] == [1, 2]
    assert [f.attributes["exchange.order.leaves"] for f in fills] == [2, 0]
    assert [f.attributes["exchange.counterparty.order.id"] for f in fills] == [taker_id, last_id]
    assert {f.attributes["exchange.liquidity"] for f in fills} == {"maker"}
    assert all(f.attributes["exchange.order.id"] == maker_id for f in fills)
    assert all(root.start_ns <= f.start_ns <= f.end_ns for f in fills)
    assert fills[0].links == [(taker_trace, root_span_id(taker_trace, taker_id))]
    assert [e.name for e in fills[0].events] == ["fill"]
    # The taker's own trace has the same trade as an event on its root span.
    taker_root = next(s for s in rx.spans if s.trace_id == taker_trace and s.name == "order")
    assert taker_root.span_id == root_span_id(taker_trace, taker_id)
    trade_ids = {e.attributes["exchange.trade.id"] for e in taker_root.events if e.name == "fill"}
    assert trade_ids == {fills[0].attributes["exchange.trade.id"]}


def limit(account: str, side: Side, qty: int) -> NewOrder:
    return NewOrder(account, f"{account}-{qty}", SYMBOL, int(side), int(OrderType.LIMIT), 100_000, qty)


@pytest.mark.parametrize(("sampling", "maker_fills"), [("ratio:0", 0), ("ratio:1", 1)])
def test_only_an_exported_makers_fills_are_recorded(tmp_path, sampling, maker_fills):
    node = ExchangeNode(NodeConfig(tmp_path, (INSTRUMENT,), snapshot_every_s=0))
    service = ExchangeService(node, write_thread=False)
    shipper = TraceShipper(Sampler("all"), {**os.environ, "OTEL_TRACES_EXPORTER": "none"})
    recorder = OrderTraceRecorder(shipper, node.trace_id_of, Sampler(sampling))
    service.add_observer(recorder)

    async def main() -> None:
        service.start()
        await service.submit([limit("alice", Side.SELL, 5)])
        await service.submit([limit("bob", Side.BUY, 2)])
        await service.stop()

    try:
        asyncio.run(main())
    finally:
        shipper.close()
        node.close()
    assert recorder.maker_fills == maker_fills
    assert len(recorder.resting) == maker_fills  # 3 lots still rest, remembered when exported
