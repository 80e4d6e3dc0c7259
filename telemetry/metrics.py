"""Prometheus metrics built from the catalogue, one CollectorRegistry per exchange (tests
build their own), and the batch-level observations that feed them.

Instrumentation enters through seams only: the service reports each batch's stage timings,
a listener counts the durable events, collectors read state at scrape time. The matching
core knows nothing of any of it.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    platform_collector,
    process_collector,
)

from engine.domain import CancelReason, OrderType, RejectReason, RequestKind, RiskScope, Side, risk_layer
from engine.events import OrderAccepted, OrderCancelled, OrderDone, OrderRejected, RiskLimitsChanged, Trade
from telemetry.catalogue import CATALOGUE, COUNTER, GAUGE, HISTOGRAM, MetricSpec

_SIDE = {int(s): s.name.lower() for s in Side}
_TYPE = {int(t): t.name.lower() for t in OrderType}
_REQUEST = {int(r): r.name.lower() for r in RequestKind}
_SCOPE = {int(s): s.name.lower() for s in RiskScope}
RISK_REASONS = [r for r in RejectReason if risk_layer(r)]


def _reason(enum, code: int) -> str:
    try:
        return enum(code).name.lower()
    except ValueError:
        return str(code)


def _build(spec: MetricSpec, registry: CollectorRegistry):
    kwargs = {"labelnames": spec.labels, "registry": registry}
    if spec.kind == COUNTER:
        return Counter(spec.name, spec.help, **kwargs)
    if spec.kind == GAUGE:
        return Gauge(spec.name, spec.help, **kwargs)
    if spec.kind == HISTOGRAM:
        return Histogram(spec.name, spec.help, buckets=spec.buckets, **kwargs)
    raise ValueError(f"unknown metric kind {spec.kind!r} for {spec.name}")


class ExchangeMetrics:
    """Every catalogue metric that the code updates directly (the rest are read by the
    scrape-time collector). Label children are cached: `.labels()` costs ~1 µs a call."""

    def __init__(self, registry: CollectorRegistry | None = None, process: bool = True) -> None:
        self.registry = registry or CollectorRegistry()
        if process:
            process_collector.ProcessCollector(registry=self.registry)
            platform_collector.PlatformCollector(registry=self.registry)
            gc_collector.GCCollector(registry=self.registry)
        direct = [s for s in CATALOGUE.values() if not _read_at_scrape(s)]
        self.m = {spec.name: _build(spec, self.registry) for spec in direct}
        self._children: dict[tuple, object] = {}
        stage = self.m["loom_stage_duration_seconds"]
        self.stage_decode = stage.labels("decode")
        self.stage_queue = stage.labels("queue")
        self.stage_sequence = stage.labels("sequence")
        self.stage_journal = stage.labels("journal")
        self.stage_match = stage.labels("match")
        self.stage_publish = stage.labels("publish")
        self.batch_commands = self.m["loom_batch_commands"]
        self.fsync = self.m["loom_journal_fsync_seconds"]
        self.commands = self.m["loom_commands"]
        self.written_bytes = self.m["loom_journal_written_bytes"]
        self.write_errors = self.m["loom_journal_write_errors"]
        self.snapshot_duration = self.m["loom_snapshot_duration_seconds"]
        self.snapshot_failures = self.m["loom_snapshot_failures"]
        # Bounded label sets, so every series exists (at 0) before the first risk event.
        for reason in RISK_REASONS:
            self.child("loom_risk_rejects", risk_layer(reason), reason.name.lower())
        for scope in _SCOPE.values():
            self.child("loom_risk_limit_changes", scope)

    def child(self, name: str, *labels: str):
        key = (name, *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = self.m[name].labels(*labels)
        return found

    def order_to_ack(self, protocol: str):
        return self.child("loom_order_to_ack_seconds", protocol)

    def rate_limited(self, protocol: str, n: int = 1) -> None:
        self.child("loom_rate_limited", protocol).inc(n)

    def on_batch(self, _commands: list, results: list[list]) -> None:
        """Count the durable events of one batch (a service listener). Counts are summed
        per label set first: a prometheus_client inc takes a lock, a dict add does not."""
        counts: dict[tuple, int] = {}
        get = counts.get
        for events in results:
            for ev in events:
                kind = type(ev)
                if kind is OrderAccepted:
                    key = ("o", ev.symbol, ev.side, ev.order_type)
                    counts[key] = get(key, 0) + 1
                elif kind is Trade:
                    key = ("t", ev.symbol)
                    counts[key] = get(key, 0) + 1
                    key = ("q", ev.symbol)
                    counts[key] = get(key, 0) + ev.qty
                elif kind is OrderCancelled:
                    key = ("c", ev.symbol, ev.reason)
                    counts[key] = get(key, 0) + 1
                elif kind is OrderDone:
                    key = ("d", ev.symbol)
                    counts[key] = get(key, 0) + 1
                elif kind is OrderRejected:
                    key = ("r", ev.request, ev.reason)
                    counts[key] = get(key, 0) + 1
                elif kind is RiskLimitsChanged:
                    key = ("l", ev.scope)
                    counts[key] = get(key, 0) + 1
        child = self.child
        for key, n in counts.items():
            tag = key[0]
            if tag == "o":
                child("loom_orders", key[1], _SIDE.get(key[2], "?"), _TYPE.get(key[3], "?")).inc(n)
            elif tag == "t":
                child("loom_trades", key[1]).inc(n)
            elif tag == "q":
                child("loom_traded_quantity", key[1]).inc(n)
            elif tag == "c":
                child("loom_cancels", key[1], _reason(CancelReason, key[2])).inc(n)
            elif tag == "d":
                child("loom_orders_filled", key[1]).inc(n)
            elif tag == "l":
                child("loom_risk_limit_changes", _SCOPE.get(key[1], str(key[1]))).inc(n)
            else:
                reason = _reason(RejectReason, key[2])
                child("loom_rejects", _REQUEST.get(key[1], str(key[1])), reason).inc(n)
                layer = risk_layer(key[2])
                if layer:
                    child("loom_risk_rejects", layer, reason).inc(n)


SCRAPE_TIME = {
    "loom_journal_size_bytes",
    "loom_journal_segments",
    "loom_journal_last_seq",
    "loom_journal_torn_tail_truncations",
    "loom_snapshot_age_seconds",
    "loom_snapshot_seq",
    "loom_snapshot_size_bytes",
    "loom_recovery_duration_seconds",
    "loom_recovery_replayed_commands",
    "loom_book_best_price",
    "loom_book_spread",
    "loom_book_depth_quantity",
    "loom_book_levels",
    "loom_open_orders",
    "loom_sessions",
    "loom_ready",
    "loom_kill_switch_engaged",
    "loom_trading_halts",
    "loom_surveillance_anomaly_score",
    "loom_surveillance_account_score",
    "loom_surveillance_alerts",
    "loom_surveillance_accounts",
}


def _read_at_scrape(spec: MetricSpec) -> bool:
    return spec.name in SCRAPE_TIME
