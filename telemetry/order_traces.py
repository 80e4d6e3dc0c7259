"""A trace for every order, recorded at the service seam after each durable batch.

Every order is traceable by its id at no cost per order: its trace id is the caller's
(an incoming traceparent, journaled with the order) or derived from the venue and its
sequence number (see `derived_trace_id`). Exporting spans is what costs, so only sampled
orders become OrderTrace records, with the batch's stage timestamps, and go to the
TraceShipper, whose child process builds and exports the spans.

Sampling without touching every order: `ratio:p` keeps every (1/p)-th sequence number
(a stride over the batch, not a test per order); `errors-and-slow:ms[:p]` also scans the
batch for rejections and keeps every order of a submission slower than `ms`; `all` keeps
everything (the costly choice, for debugging).
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable

from engine.commands import NewOrder
from engine.domain import OrderType, Side
from engine.events import OrderCancelled, OrderDone, OrderRejected, Trade
from engine.gateways.texts import reject_code
from telemetry.tracing import OrderTrace, Sampler, TraceShipper

DEFAULT_EXPORT_SAMPLING = "errors-and-slow:10:0.01"
_SIDE = {int(s): s.name.lower() for s in Side}
_TYPE = {int(t): t.name.lower() for t in OrderType}


class OrderTraceRecorder:
    def __init__(self, shipper: TraceShipper, trace_id_of: Callable[[object], str], sampler: Sampler) -> None:
        """`shipper` should keep everything (Sampler("all")): the choice is made here,
        before any record is built, and must not be made twice."""
        self.shipper = shipper
        self.sampler = sampler
        self.trace_id_of = trace_id_of
        ratio = self.sampler.ratio
        self.stride = 1 if self.sampler.keep_all else (round(1 / ratio) if ratio > 0 else 0)
        self.recorded = 0

    def _chosen(self, batch: list, results: list[list], taken: list, starts: list[int], stages) -> list[int]:
        n = len(batch)
        sampler = self.sampler
        if sampler.keep_all:
            return list(range(n))
        chosen: set[int] = set()
        if self.stride and n:
            first = (-batch[0].seq) % self.stride
            chosen.update(range(first, n, self.stride))
        if sampler.keep_errors:
            for i, events in enumerate(results):
                if events and type(events[0]) is OrderRejected:
                    chosen.add(i)
            acked = stages[-1]
            for k, pending in enumerate(taken):
                if (acked - pending.queued_at) * 1e9 > sampler.slow_ns:
                    end = starts[k + 1] if k + 1 < len(starts) else n
                    chosen.update(range(starts[k], end))
        return sorted(chosen)

    def record_batch(self, taken: list, batch: list, results: list[list], stages_perf: tuple) -> None:
        """`taken`: the batch's submissions (commands, protocol, queued_at) in order; `batch`
        and `results`: every command and its events; `stages_perf`: perf_counter at stamp,
        journal start, durable, matched, published."""
        starts, pos = [], 0
        for pending in taken:
            starts.append(pos)
            pos += len(pending.commands)
        chosen = self._chosen(batch, results, taken, starts, stages_perf)
        if not chosen:
            return
        now_perf, now_ns = time.perf_counter(), time.time_ns()

        def epoch(t: float) -> int:
            return now_ns - int((now_perf - t) * 1e9)

        _stamp, j0, j1, matched, acked = (epoch(t) for t in stages_perf)
        record = self.shipper.record
        for i in chosen:
            cmd = batch[i]
            events = results[i]
            if type(cmd) is not NewOrder or not events:
                continue
            pending = taken[bisect_right(starts, i) - 1]
            received = epoch(pending.queued_at)
            first = events[0]
            if type(first) is OrderRejected:
                outcome, order_id = f"rejected:{reject_code(first.reason)}", 0
            else:
                last = type(events[-1])
                order_id = first.order_id
                outcome = (
                    "filled" if last is OrderDone else "cancelled" if last is OrderCancelled else "accepted"
                )
            fills = [(e.trade_id, e.price, e.qty, e.ts) for e in events if type(e) is Trade]
            record(
                OrderTrace(
                    self.trace_id_of(cmd),
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
            self.recorded += 1
        self.shipper.flush()
