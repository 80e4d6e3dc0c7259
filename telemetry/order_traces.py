"""A trace for every order, recorded at the service seam after each durable batch.

Every new order gets a trace id before it is journaled (the gateway continues an incoming
traceparent; otherwise one is made here). After the batch, each sampled order becomes an
OrderTrace with the batch's stage timestamps and goes to the TraceShipper, whose child
process builds and exports the spans: this process only stamps clocks and writes a pipe.
"""

from __future__ import annotations

import time

from engine.commands import NewOrder
from engine.domain import OrderType, Side
from engine.events import OrderCancelled, OrderDone, OrderRejected, Trade
from engine.gateways.texts import reject_code
from telemetry.tracing import OrderTrace, Sampler, TraceShipper, new_trace_id

_SIDE = {int(s): s.name.lower() for s in Side}
_TYPE = {int(t): t.name.lower() for t in OrderType}


def assign_trace_ids(batch: list) -> None:
    """Orders that came without a trace id (binary, FIX, internal) get one before the
    journal write, so every order is traceable by its id after any restart."""
    for cmd in batch:
        if type(cmd) is NewOrder and not cmd.trace_id:
            cmd.trace_id = new_trace_id()


class OrderTraceRecorder:
    def __init__(self, shipper: TraceShipper, sampler: Sampler | None = None) -> None:
        self.shipper = shipper
        self.sampler = sampler or shipper.sampler
        self.sampled_out = 0

    def record_batch(self, taken: list, results: list[list], stages_perf: tuple[float, ...]) -> None:
        """`taken`: the batch's submissions (commands, protocol, queued_at); `results`: the
        events of every command of the batch, in order; `stages_perf`: perf_counter at
        stamp, journal start, durable, matched, published."""
        now_perf, now_ns = time.perf_counter(), time.time_ns()

        def epoch(t: float) -> int:
            return now_ns - int((now_perf - t) * 1e9)

        _stamp, j0, j1, matched, acked = (epoch(t) for t in stages_perf)
        keep = self.sampler.keep
        record = self.shipper.record
        i = 0
        for pending in taken:
            received = epoch(pending.queued_at)
            for cmd in pending.commands:
                events = results[i]
                i += 1
                if type(cmd) is not NewOrder or not events:
                    continue
                first = events[0]
                rejected = type(first) is OrderRejected
                if not keep(cmd.trace_id, rejected, acked - received):
                    self.sampled_out += 1
                    continue
                if rejected:
                    outcome, order_id = f"rejected:{reject_code(first.reason)}", 0
                else:
                    last = type(events[-1])
                    order_id = first.order_id
                    outcome = (
                        "filled"
                        if last is OrderDone
                        else "cancelled"
                        if last is OrderCancelled
                        else "accepted"
                    )
                fills = [(e.trade_id, e.price, e.qty, e.ts) for e in events if type(e) is Trade]
                record(
                    OrderTrace(
                        cmd.trace_id,
                        cmd.trace_parent,
                        order_id,
                        cmd.client_order_id,
                        cmd.account,
                        cmd.symbol,
                        _SIDE.get(cmd.side, "?"),
                        _TYPE.get(cmd.order_type, "?"),
                        outcome,
                        pending.protocol,
                        received,
                        received,
                        j0,
                        j1,
                        matched,
                        acked,
                        fills,
                    )
                )
        self.shipper.flush()
