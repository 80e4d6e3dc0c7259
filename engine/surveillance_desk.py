"""Surveillance off the matching path: the order path only appends each durable batch to a
bounded buffer; the analysis (the indicator scores of engine/core/surveillance.py, wash
trades, spoofing and layering, the learning anomaly model) runs in a worker thread of its
own, and everything that reads it (a scrape, GET /v1/admin/surveillance and its report, the
kill-switch automation) reads the last results the worker published, never analysing inline.

The worker holds the GIL while it analyses, so it is given a budget: at most `cpu_share` of
one core, as CPU-time credit earned by wall time (capped at one tick's worth, so an idle
spell buys no burst), spent a short slice at a time so the event loop never waits long for
the GIL. Under overload it falls behind rather than compete with matching: the buffer grows
(`loom_surveillance_backlog_events`) up to `max_buffered_events`, beyond which a batch is
dropped whole and counted (`loom_surveillance_dropped_batches_total`). The published results
say how far they go (`analysed_through_seq`) and how old they are (`age_s`).

The detectors are pure and deterministic in event time; what the desk adds (a lock, a
buffer, the wall clock that closes a quiet interval) stays here, outside the core.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from engine.core.batch_events import BatchEvents
from engine.core.commands import Command
from engine.core.events import Event, OrderAccepted, OrderCancelled, Trade
from engine.core.owners import Owners
from engine.core.spoofing import Spoofing, SpoofingConfig
from engine.core.surveillance import KINDS, Surveillance, SurveillanceConfig
from engine.core.surveillance_findings import FINDING_KINDS, PRICE_MOVE, Finding, FindingLog
from engine.core.wash_trades import WashTrades
from engine.flow_anomaly import AnomalyConfig, FlowAnomaly

log = logging.getLogger("loom.surveillance")
DEFAULT_MAX_BUFFERED_EVENTS = 1_000_000
DEFAULT_CPU_SHARE = 0.1
# The worker wakes this often and works at most cpu_share of it: 0.5 ms slices at 0.1, so a
# thread waiting for the GIL (the event loop, the journal's) never waits long.
TICK_S = 0.005
PUBLISH_EVERY_S = 1.0


class SurveillanceDesk:
    def __init__(
        self,
        owners: Mapping[str, str] | None = None,
        scores: SurveillanceConfig | None = None,
        spoofing: SpoofingConfig | None = None,
        anomaly: AnomalyConfig | None = None,
        max_buffered_events: int = DEFAULT_MAX_BUFFERED_EVENTS,
        keep_findings: int = 100,
        cpu_share: float = DEFAULT_CPU_SHARE,
    ) -> None:
        self.owners = Owners(owners)
        self.scores = Surveillance(scores)
        self.wash = WashTrades(self.owners)
        self.spoofing = Spoofing(self.owners, spoofing)
        self.anomaly = FlowAnomaly(anomaly)
        self.findings = FindingLog(keep_findings)
        self.outliers: deque[dict[str, Any]] = deque(maxlen=keep_findings)
        self.max_buffered_events = max_buffered_events
        self.cpu_share = cpu_share
        self._buffer: deque[tuple[list[list[Event]], BatchEvents, int]] = deque()
        self._lock = threading.Lock()
        # Each written by one side only (no lock on the order path): the feed counts what it
        # pushed and dropped, the drain what it took.
        self.pushed_events = 0
        self.dropped_batches = 0
        self.drained_events = 0
        self.processed_batches = 0
        self.analysed_through_seq = 0
        self.analysed_through_ts = 0
        self.busy_s = 0.0  # CPU the worker spent analysing and publishing
        self.published: dict[str, Any] = self._snapshot(None)  # replaced whole, read without a lock

    # -- the order path: append only -----------------------------------------------------

    def on_events(self, _commands: list[Command], results: list[list[Event]], split: BatchEvents) -> None:
        n = len(split.accepted) + len(split.trades) + len(split.cancelled)
        if not n:
            return
        if self.pushed_events - self.drained_events + n > self.max_buffered_events:
            self.dropped_batches += 1
            return
        self.pushed_events += n
        self._buffer.append((results, split, n))

    # -- the analysis: off the order path ------------------------------------------------

    def drain(self, budget_s: float | None = None) -> bool:
        """Analyses buffered batches in order, for at most `budget_s` of CPU (None: all of
        them); true when the buffer is empty (thread-safe: one drain at a time)."""
        with self._lock:
            return self._drain(budget_s)

    def _drain(self, budget_s: float | None) -> bool:
        buffer, clock = self._buffer, time.thread_time
        stop = None if budget_s is None else clock() + budget_s
        while buffer:
            results, split, n = buffer.popleft()
            self._process(results, split)
            self.drained_events += n
            self.processed_batches += 1
            if stop is not None and clock() >= stop:
                break
        self._take_outliers()
        return not buffer

    def _process(self, results: list[list[Event]], split: BatchEvents) -> None:
        self.scores.on_events([], results, split)
        self.anomaly.on_batch(split)  # counts per account: order within the batch is moot
        wash, spoofing, add = self.wash.on_trade, self.spoofing, self.findings.add
        on_accepted, on_trade, on_cancelled = spoofing.on_accepted, spoofing.on_trade, spoofing.on_cancelled
        # `results` is in sequence order (an acceptance before its trades, those before its
        # cancels), as the patterns need; other event types pass by one `is` test each.
        ev: Any = None
        for events in results:
            for ev in events:
                kind = type(ev)
                if kind is OrderAccepted:
                    on_accepted(ev)
                elif kind is Trade:
                    found = wash(ev)
                    if found is not None:
                        add(found)
                    on_trade(ev)
                elif kind is OrderCancelled:
                    for found in on_cancelled(ev):
                        add(found)
        if ev is not None:  # the batch's last event
            self.analysed_through_seq, self.analysed_through_ts = ev.seq, ev.ts

    def _take_outliers(self) -> None:
        interval_ns = self.anomaly.interval_ns
        for interval, who, feature, z in self.anomaly.take_outliers():
            end_ts = (interval + 1) * interval_ns
            if feature == PRICE_MOVE:
                self.findings.add(
                    Finding(PRICE_MOVE, who, 0, end_ts, "", (), {"z": round(z, 2), "interval_end_ts": end_ts})
                )
            else:
                self.outliers.append(
                    {
                        "account": who,
                        "owner": self.owners(who),
                        "feature": feature,
                        "z": round(z, 2),
                        "value": round(self.anomaly.last.features.get(who, {}).get(feature, 0.0), 4),
                        "interval_end_ts": end_ts,
                    }
                )

    def analyse(self, now_ns: int | None = None) -> None:
        """Drains everything, moves event time on to `now_ns`, publishes: synchronous, for tests
        and tools (the worker does the same within its budget)."""
        self.drain()
        self.publish(now_ns)

    def publish(self, now_ns: int | None) -> None:
        """Moves event time on to `now_ns` when caught up (a quiet venue's open interval closes,
        its scores decay), then replaces the published results whole."""
        with self._lock:
            if self._buffer:
                now_ns = None  # behind: event time moves on with the events, not the clock
            if now_ns is not None:
                self.anomaly.advance(now_ns)
                self._take_outliers()
            self.published = self._snapshot(now_ns)

    async def run(self) -> None:
        """The worker thread, for as long as this task runs (the event loop only waits)."""
        stop = threading.Event()
        worker = threading.Thread(target=self._work, args=(stop,), name="loom-surveillance", daemon=True)
        worker.start()
        try:
            await asyncio.Event().wait()
        finally:
            stop.set()

    def _work(self, stop: threading.Event) -> None:
        credit, cap = 0.0, TICK_S * self.cpu_share
        published_at = time.monotonic()
        last = time.monotonic()
        while not stop.wait(TICK_S):
            now = time.monotonic()
            credit = min(cap, credit + (now - last) * self.cpu_share)
            last = now
            if credit <= 0:
                continue  # paid off the last publication first
            started = time.thread_time()
            try:
                self.drain(credit)
                if now - published_at >= PUBLISH_EVERY_S:
                    published_at = now
                    self.publish(time.time_ns())
            except Exception:  # a detector bug must not stop surveillance for good
                log.exception("surveillance analysis failed")
            spent = time.thread_time() - started
            credit -= spent
            self.busy_s += spent

    # -- what the metrics, the automation and the admin API read: the published results -----

    def _snapshot(self, now_ns: int | None) -> dict[str, Any]:
        """Everything readers want, built once per publication (under the lock)."""
        ranked = self.scores.evaluate(now_ns)
        return {
            "published_ns": time.time_ns(),
            "analysed_through_seq": self.analysed_through_seq,
            "analysed_through_ts": self.analysed_through_ts,
            "scores": self.scores.summarise(ranked),
            "flagged": {k: [a for a, score in ranked[k] if score >= 1.0] for k in KINDS},
            "findings": dict(self.findings.counts),
            "flow_z": self.anomaly.max_z(),
            "price_move_z": dict(self.anomaly.last.price_moves),
            "report": self._report(),
        }

    def backlog(self) -> dict[str, Any]:
        """The analysis buffer now (read live: plain counters, no lock)."""
        return {
            "backlog_events": self.pushed_events - self.drained_events,
            "max_buffered_events": self.max_buffered_events,
            "dropped_batches": self.dropped_batches,
            "processed_batches": self.processed_batches,
            "cpu_share": self.cpu_share,
            "busy_s": round(self.busy_s, 3),
        }

    def _age(self, published: dict[str, Any]) -> dict[str, Any]:
        age_s = max(0.0, (time.time_ns() - published["published_ns"]) / 1e9)
        return {"analysed_through_seq": published["analysed_through_seq"], "age_s": round(age_s, 3)}

    def summary(self, _now_ns: int | None = None) -> dict[str, Any]:
        """The indicator scores (engine/core/surveillance.py) as last published, and their age."""
        published = self.published
        return {**published["scores"], **self._age(published)}

    def flagged(self, kind: str) -> list[str]:
        """The accounts whose `kind` score was at or above its threshold when last published."""
        return list(self.published["flagged"].get(kind, ()))

    def metrics(self) -> dict[str, Any]:
        """Counts and scores without identities, as last published, and the backlog now."""
        published = self.published
        return {
            "findings": published["findings"],
            "flow_z": published["flow_z"],
            "price_move_z": published["price_move_z"],
            **self._age(published),
            **self.backlog(),
        }

    def report(self, _now_ns: int | None = None) -> dict[str, Any]:
        """Everything as last published, with the accounts and owners named (admin and ops keys
        only), how far the analysis got and how old it is."""
        published = self.published
        return {
            **published["report"],
            "scores": published["scores"],
            **self._age(published),
            "analysed_through_ts": published["analysed_through_ts"],
            "published_ns": published["published_ns"],
            "buffer": self.backlog(),
        }

    def _report(self, top_n: int = 10) -> dict[str, Any]:
        """The findings and the anomaly model, naming accounts and owners (published)."""
        last = self.anomaly.last
        ranked = sorted(
            ((max(zs.values(), default=0.0), account) for account, zs in last.accounts.items()),
            key=lambda item: (-item[0], item[1]),
        )
        interval_ns = self.anomaly.interval_ns
        counts = self.findings.counts
        return {
            "findings": {
                kind: {
                    "total": self.findings.total(kind),
                    "by_symbol": {s: n for (k, s), n in sorted(counts.items()) if k == kind},
                    "latest": [f.as_dict() for f in reversed(self.findings.latest[kind])],
                }
                for kind in FINDING_KINDS
            },
            "anomaly": {
                "interval_end_ts": (last.interval + 1) * interval_ns if last.interval >= 0 else None,
                "max_z": self.anomaly.max_z(),
                "top_accounts": [
                    {
                        "account": account,
                        "owner": self.owners(account),
                        "max_z": round(z, 2),
                        "z": {f: round(v, 2) for f, v in last.accounts[account].items()},
                        "features": {f: round(v, 4) for f, v in last.features[account].items()},
                    }
                    for z, account in ranked[:top_n]
                ],
                "price_move_z": {s: round(z, 2) for s, z in sorted(last.price_moves.items())},
                "outliers": list(reversed(self.outliers)),
            },
        }
