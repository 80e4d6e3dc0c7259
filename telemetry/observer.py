"""The metrics side of the node's observer seam (engine/observer.py): every report of the
commit loop and the gateways becomes the catalogue metric it always was (names and labels
unchanged; telemetry/catalogue.py)."""

from __future__ import annotations

from engine.journal import OutcomeUnknownError
from engine.observer import CommittedBatch, Observer
from telemetry.metrics import ExchangeMetrics


class MetricsObserver(Observer):
    times_risk = True  # the "risk" stage, on one batch in RISK_TIMING_EVERY

    def __init__(self, metrics: ExchangeMetrics) -> None:
        self.metrics = metrics

    def batch_committed(self, batch: CommittedBatch) -> None:
        m = self.metrics
        _taken, t1, t2, t3, t4 = batch.stamps
        m.batch_commands.observe(len(batch.commands))
        m.stage_journal.observe(t2 - t1)
        m.stage_match.observe(t3 - t2)
        m.stage_ack.observe(t4 - t3)
        if batch.risk_ns:
            observe = m.stage_risk.observe
            for ns in batch.risk_ns:
                observe(ns / 1e9)
        error = batch.error
        if error is None:
            m.commands.inc(len(batch.commands))
            m.written_bytes.inc(batch.written_bytes)
            if batch.fsync_s is not None:
                m.fsync.observe(batch.fsync_s)
        elif not isinstance(error, OutcomeUnknownError):  # those: loom_journal_unknown_outcomes
            m.write_errors.inc()
        # Queue to durable answer, once per submission (a binary read of many orders counts
        # once: an observation per order would cost ~8% at 150k orders/s).
        order_to_ack = m.order_to_ack
        sequencer_wait = m.stage_sequencer_wait
        trace_id_of = batch.trace_id_of
        for pending in batch.submissions:
            # Queued -> sequenced: waiting for the next batch, then its stamping.
            sequencer_wait.observe(t1 - pending.queued_at)
            if error is not None:
                # A refusal or an unknown outcome is no answer from the core: not an
                # order-to-ack sample, and its seqs (given back, or not yet settled) name no
                # order's trace. Counted in loom_rejects_total instead.
                continue
            first = pending.commands[0]
            exemplar = {"trace_id": trace_id_of(first)} if first.seq else None
            order_to_ack(pending.protocol).observe(t4 - pending.queued_at, exemplar)

    def commands_resolved(self, n: int) -> None:
        self.metrics.commands.inc(n)

    def overload_refused(self, protocol: str, n: int) -> None:
        self.metrics.overload_refused(protocol, n)

    def snapshot_captured(self, seconds: float) -> None:
        self.metrics.snapshot_capture.observe(seconds)

    def snapshot_written(self, seconds: float) -> None:
        self.metrics.snapshot_duration.observe(seconds)

    def snapshot_failed(self, n: int) -> None:
        self.metrics.snapshot_failures.inc(n)

    def decoded(self, seconds: float) -> None:
        self.metrics.stage_decode.observe(seconds)

    def decode_error(self, protocol: str, code: str, n: int = 1) -> None:
        self.metrics.decode_error(protocol, code, n)

    def rate_limited(self, protocol: str, n: int = 1) -> None:
        self.metrics.rate_limited(protocol, n)

    def slow_consumer_dropped(self) -> None:
        self.metrics.md_slow_consumer_drops.inc()

    def fanout_lag(self, seconds: float) -> None:
        self.metrics.md_fanout_lag.observe(seconds)

    def md_published(self, deliveries: int) -> None:
        m = self.metrics
        m.md_encoded.inc()
        m.md_deliveries.inc(deliveries)

    def md_conflated(self, n: int) -> None:
        self.metrics.md_conflated.inc(n)

    def md_gap_recovery(self, channel: str) -> None:
        self.metrics.md_gap_recoveries.labels(channel).inc()

    def md_feed_resync(self, reason: str) -> None:
        self.metrics.md_feed_resyncs.labels(reason).inc()
