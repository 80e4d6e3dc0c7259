"""Surveillance off the matching path: the order path only appends each durable batch's
split events to a bounded buffer; the analysis (the indicator scores of
engine/core/surveillance.py, wash trades, spoofing and layering, the learning anomaly model)
drains it on a timer in a worker thread and at every evaluation (scrape, admin report, the
kill-switch automation), never while an order is being matched.

The buffer holds at most `max_buffered_events` events; a batch arriving beyond that is
dropped whole and counted (`loom_surveillance_dropped_batches_total`): the analysis loses
it, the exchange does not slow down.

The detectors are pure and deterministic in event time; what the desk adds (a lock, a
buffer, the wall clock that closes a quiet interval) stays here, outside the core.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from operator import attrgetter
from typing import Any

from engine.core.batch_events import BatchEvents
from engine.core.commands import Command
from engine.core.events import Event, OrderAccepted, OrderCancelled, Trade
from engine.core.owners import Owners
from engine.core.spoofing import Spoofing, SpoofingConfig
from engine.core.surveillance import Surveillance, SurveillanceConfig
from engine.core.surveillance_findings import FINDING_KINDS, PRICE_MOVE, Finding, FindingLog
from engine.core.wash_trades import WashTrades
from engine.flow_anomaly import AnomalyConfig, FlowAnomaly

log = logging.getLogger("loom.surveillance")
_seq = attrgetter("seq")
DEFAULT_MAX_BUFFERED_EVENTS = 1_000_000
DRAIN_EVERY_S = 1.0


class SurveillanceDesk:
    def __init__(
        self,
        owners: Mapping[str, str] | None = None,
        scores: SurveillanceConfig | None = None,
        spoofing: SpoofingConfig | None = None,
        anomaly: AnomalyConfig | None = None,
        max_buffered_events: int = DEFAULT_MAX_BUFFERED_EVENTS,
        keep_findings: int = 100,
    ) -> None:
        self.owners = Owners(owners)
        self.scores = Surveillance(scores)
        self.wash = WashTrades(self.owners)
        self.spoofing = Spoofing(self.owners, spoofing)
        self.anomaly = FlowAnomaly(anomaly)
        self.findings = FindingLog(keep_findings)
        self.outliers: deque[dict[str, Any]] = deque(maxlen=keep_findings)
        self.max_buffered_events = max_buffered_events
        self._buffer: deque[BatchEvents] = deque()
        self._lock = threading.Lock()
        # Each written by one side only (no lock on the order path): the feed counts what it
        # pushed and dropped, the drain what it took.
        self.pushed_events = 0
        self.dropped_batches = 0
        self.drained_events = 0
        self.processed_batches = 0

    # -- the order path: append only -----------------------------------------------------

    def on_events(self, _commands: list[Command], _results: list[list[Event]], split: BatchEvents) -> None:
        n = len(split.accepted) + len(split.trades) + len(split.cancelled)
        if not n:
            return
        if self.pushed_events - self.drained_events + n > self.max_buffered_events:
            self.dropped_batches += 1
            return
        self.pushed_events += n
        self._buffer.append(split)

    # -- the analysis: off the order path ------------------------------------------------

    def drain(self) -> None:
        """Analyses every buffered batch, in order (thread-safe: one drain at a time)."""
        with self._lock:
            self._drain()

    def _drain(self) -> None:
        buffer = self._buffer
        while buffer:
            split = buffer.popleft()
            self._process(split)
            self.drained_events += len(split.accepted) + len(split.trades) + len(split.cancelled)
            self.processed_batches += 1

    def _process(self, split: BatchEvents) -> None:
        self.scores.on_events([], [], split)
        wash, spoofing, anomaly, add = self.wash, self.spoofing, self.anomaly, self.findings.add
        # Sequence order across the types (stable merge: within one command the acceptance
        # comes before its trades, and those before its cancels), as the patterns need it.
        ev: Any
        for ev in heapq.merge(split.accepted, split.trades, split.cancelled, key=_seq):
            kind = type(ev)
            if kind is Trade:
                found = wash.on_trade(ev)
                if found is not None:
                    add(found)
                spoofing.on_trade(ev)
                anomaly.on_trade(ev)
            elif kind is OrderAccepted:
                spoofing.on_accepted(ev)
                anomaly.on_accepted(ev)
            elif kind is OrderCancelled:
                for found in spoofing.on_cancelled(ev):
                    add(found)
                anomaly.on_cancelled(ev)
        self._take_outliers()

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

    def evaluate(self, now_ns: int | None) -> None:
        """Drains, then moves event time on to `now_ns` (a quiet venue's open interval closes)."""
        with self._lock:
            self._drain()
            if now_ns is not None:
                self.anomaly.advance(now_ns)
                self._take_outliers()

    async def run(self, every_s: float = DRAIN_EVERY_S) -> None:
        """The timer: drains in a worker thread so the event loop keeps matching meanwhile."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await asyncio.to_thread(self.evaluate, time.time_ns())
            except Exception:  # a detector bug must not stop surveillance for good
                log.exception("surveillance analysis failed")

    # -- what the metrics, the automation and the admin API read --------------------------

    def summary(self, now_ns: int | None = None) -> dict[str, Any]:
        """The indicator scores (engine/core/surveillance.py), after a drain."""
        self.evaluate(now_ns)
        with self._lock:
            return self.scores.summary(now_ns)

    def flagged(self, kind: str, now_ns: int | None = None) -> list[str]:
        self.evaluate(now_ns)
        with self._lock:
            return self.scores.flagged(kind, now_ns)

    def metrics(self) -> dict[str, Any]:
        """Counts and scores without identities (evaluate first)."""
        with self._lock:
            return {
                "findings": dict(self.findings.counts),
                "flow_z": self.anomaly.max_z(),
                "price_move_z": dict(self.anomaly.last.price_moves),
                "dropped_batches": self.dropped_batches,
            }

    def report(self, now_ns: int | None = None, top_n: int = 10) -> dict[str, Any]:
        """Everything, with the accounts and owners named: for admin and ops keys only."""
        scores = self.summary(now_ns)
        with self._lock:
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
                "scores": scores,
                "buffer": {
                    "buffered_events": self.pushed_events - self.drained_events,
                    "max_buffered_events": self.max_buffered_events,
                    "dropped_batches": self.dropped_batches,
                    "processed_batches": self.processed_batches,
                },
            }
