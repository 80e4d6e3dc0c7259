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

Fills on the maker's trace: an exported order that rests is remembered (order id -> its
trace id and labels; bounded, forgotten when it is filled or cancelled); when a later
order trades against it, a `FillTrace` goes to the worker, which hangs a "fill" span
under that order's root span. Which orders were exported is known only to this process,
so after a restart the resting orders of before it get no maker fills on their traces.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable

from engine.core.batch_events import BatchEvents
from engine.core.commands import NewOrder
from engine.core.domain import OrderType, Side
from engine.core.events import OrderCancelled, OrderDone, OrderRejected, Trade
from engine.observer import CommittedBatch, Observer
from engine.reason_texts import reject_code, reject_status
from telemetry.tracing import FillTrace, OrderTrace, Sampler, TraceShipper

DEFAULT_EXPORT_SAMPLING = "errors-and-slow:10:0.01"
MAX_RESTING = 100_000  # exported resting orders remembered for their maker fills
_SIDE = {int(s): s.name.lower() for s in Side}
_TYPE = {int(t): t.name.lower() for t in OrderType}


class OrderTraceRecorder(Observer):
    """The order traces' side of the node's observer seam (engine/observer.py): each
    committed batch's sampled orders become trace records for the shipper."""

    wants_events = True  # reads the batch's events by type (the service's shared walk)

    def __init__(self, shipper: TraceShipper, trace_id_of: Callable[[object], str], sampler: Sampler) -> None:
        """`shipper` should keep everything (Sampler("all")): the choice is made here,
        before any record is built, and must not be made twice."""
        self.shipper = shipper
        self.sampler = sampler
        self.trace_id_of = trace_id_of
        ratio = self.sampler.ratio
        self.stride = 1 if self.sampler.keep_all else (round(1 / ratio) if ratio > 0 else 0)
        self.recorded = 0
        self.maker_fills = 0
        # order id -> (trace id, account, symbol, side) of exported orders still resting
        self.resting: dict[int, tuple[str, str, str, str]] = {}

    def _chosen(
        self, batch: list, results: list[list], taken: list, starts: list[int], stages, split: BatchEvents
    ) -> list[int]:
        n = len(batch)
        sampler = self.sampler
        if sampler.keep_all:
            return list(range(n))
        chosen: set[int] = set()
        if self.stride and n:
            first = (-batch[0].seq) % self.stride
            chosen.update(range(first, n, self.stride))
        if sampler.keep_errors:
            chosen.update(self._rejected(batch, results, split))
            acked = stages[-1]
            for k, pending in enumerate(taken):
                if (acked - pending.queued_at) * 1e9 > sampler.slow_ns:
                    end = starts[k + 1] if k + 1 < len(starts) else n
                    chosen.update(range(starts[k], end))
        return sorted(chosen)

    @staticmethod
    def _rejected(batch: list, results: list[list], split: BatchEvents) -> list[int]:
        """Indexes of the batch's rejected commands: from the shared walk by seq, or by a
        scan when a rejection carries no seq (a batch the journal refused)."""
        first = batch[0].seq if batch else 0
        if first and all(ev.seq for ev in split.rejected):
            return [ev.seq - first for ev in split.rejected]
        return [i for i, events in enumerate(results) if events and type(events[0]) is OrderRejected]

    def batch_committed(self, batch: CommittedBatch) -> None:
        self.record_batch(
            batch.submissions, batch.commands, batch.results, batch.stamps, batch.split, batch.risk_timed
        )

    def record_batch(
        self,
        taken: list,
        batch: list,
        results: list[list],
        stages_perf: tuple,
        split: BatchEvents | None = None,
        risk_timed: dict[int, tuple[int, int]] | None = None,
    ) -> None:
        """`taken`: the batch's submissions (commands, protocol, queued_at) in order; `batch`
        and `results`: every command and its events; `stages_perf`: perf_counter at stamp,
        journal start, durable, matched, published; `split`: the events by type (the
        service's shared walk; built here when not given); `risk_timed`: seq ->
        (perf_counter_ns, ns) of the new orders whose risk checks were timed."""
        if split is None:
            split = BatchEvents(results)
        starts, pos = [], 0
        for pending in taken:
            starts.append(pos)
            pos += len(pending.commands)
        chosen = self._chosen(batch, results, taken, starts, stages_perf, split)
        if not chosen and not self.resting:
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
                status = reject_status(first.reason)
            else:
                status = 201
                last = type(events[-1])
                order_id = first.order_id
                outcome = (
                    "filled" if last is OrderDone else "cancelled" if last is OrderCancelled else "accepted"
                )
            fills = [(e.trade_id, e.price, e.qty, e.ts) for e in events if type(e) is Trade]
            risk = risk_timed.get(cmd.seq) if risk_timed else None
            risk_start = epoch(risk[0] / 1e9) if risk else 0
            trace_id = self.trace_id_of(cmd)
            side = _SIDE.get(cmd.side, "?")
            record(
                OrderTrace(
                    trace_id,
                    cmd.trace_parent,
                    order_id,
                    cmd.client_order_id,
                    cmd.account,
                    cmd.symbol,
                    side,
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
                    risk_start,
                    risk_start + risk[1] if risk else 0,
                    status if pending.protocol == "rest" else 0,
                )
            )
            self.recorded += 1
            if outcome == "accepted":  # resting: later fills belong on this trace too
                self._remember(order_id, (trace_id, cmd.account, cmd.symbol, side))
        if self.resting:
            self._record_maker_fills(batch, split, j1, matched)
        self.shipper.flush()

    def _remember(self, order_id: int, labels: tuple[str, str, str, str]) -> None:
        resting = self.resting
        if len(resting) >= MAX_RESTING:
            del resting[next(iter(resting))]  # the oldest: bounded memory over completeness
        resting[order_id] = labels

    def _record_maker_fills(self, batch: list, split: BatchEvents, start_ns: int, end_ns: int) -> None:
        resting = self.resting
        first_seq = batch[0].seq
        for t in split.trades:
            maker = resting.get(t.maker_order_id)
            if maker is None:
                continue
            trace_id, account, symbol, side = maker
            i = t.seq - first_seq
            taker_cmd = batch[i] if 0 <= i < len(batch) else None
            # An amend that crosses trades too: its trace is not the resting taker's.
            taker_trace = self.trace_id_of(taker_cmd) if type(taker_cmd) is NewOrder else ""
            self.shipper.record_fill(
                FillTrace(
                    trace_id,
                    t.maker_order_id,
                    account,
                    symbol,
                    side,
                    t.trade_id,
                    t.price,
                    t.qty,
                    t.maker_leaves,
                    t.ts,
                    start_ns,
                    end_ns,
                    t.taker_order_id,
                    taker_trace,
                )
            )
            self.maker_fills += 1
            if not t.maker_leaves:
                del resting[t.maker_order_id]
        pop = resting.pop
        for ev in split.cancelled:
            pop(ev.order_id, None)
