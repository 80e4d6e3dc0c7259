"""Prometheus metrics built from the catalogue, one CollectorRegistry per exchange (tests
build their own), and the batch-level observations that feed them.

Instrumentation enters through seams only: the service reports each batch's stage timings,
a listener counts the durable events, collectors read state at scrape time. The matching
core knows nothing of any of it.
"""

from __future__ import annotations

import collections
from operator import attrgetter

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    platform_collector,
    process_collector,
)

from engine.core.batch_events import BatchEvents
from engine.core.commands import Transfer
from engine.core.domain import (
    CancelReason,
    OrderType,
    RejectReason,
    RequestKind,
    RiskScope,
    Side,
    TransferKind,
    risk_layer,
)
from engine.core.events import OrderRejected, RiskLimitsChanged, TransferApplied
from telemetry.catalogue import CATALOGUE, COUNTER, GAUGE, HISTOGRAM, MetricSpec
from telemetry.collectors import (
    AdmissionCollector,
    CatalogueCollector,
    ClusterCollector,
    DataDiskCollector,
    ExchangeCollector,
    FixSessionsCollector,
    LedgerCollector,
    MarketDataCollector,
    RiskCollector,
    StandaloneRoleCollector,
    SurveillanceCollector,
    TraceExportCollector,
)
from telemetry.exposition import OpenMetricsRenderer, TextRenderer
from telemetry.runtime import BuildInfo, GcPauses

_SIDE = {int(s): s.name.lower() for s in Side}
_TYPE = {int(t): t.name.lower() for t in OrderType}
_REQUEST = {int(r): r.name.lower() for r in RequestKind}
_ORDER_KEY = attrgetter("symbol", "side", "order_type")
_CANCEL_KEY = attrgetter("symbol", "reason")
_REJECT_KEY = attrgetter("request", "reason")
_SYMBOL = attrgetter("symbol")
_QTY = attrgetter("qty")
_SCOPE = {int(s): s.name.lower() for s in RiskScope}
RISK_REASONS = [r for r in RejectReason if risk_layer(r)]
GATEWAY_PROTOCOLS = ("rest", "websocket", "fix", "binary")
MAIN_LOOP = "main"
_TRANSFER_KIND = {int(k): k.name.lower() for k in TransferKind}
REQ_TRANSFER = int(RequestKind.TRANSFER)
INSUFFICIENT_BALANCE = int(RejectReason.INSUFFICIENT_BALANCE)


def _reason(enum, code: int) -> str:
    try:
        return enum(code).name.lower()
    except ValueError:
        return str(code)


def _build(spec: MetricSpec, registry: CollectorRegistry):
    labels = spec.labels
    if spec.kind == COUNTER:
        return Counter(spec.name, spec.help, labelnames=labels, registry=registry)
    if spec.kind == GAUGE:
        return Gauge(spec.name, spec.help, labelnames=labels, registry=registry)
    if spec.kind == HISTOGRAM:
        return Histogram(spec.name, spec.help, labelnames=labels, registry=registry, buckets=spec.buckets)
    raise ValueError(f"unknown metric kind {spec.kind!r} for {spec.name}")


class ExchangeMetrics:
    """Every catalogue metric that the code updates directly (the rest are read by the
    scrape-time collector). Label children are cached: `.labels()` costs ~1 µs a call."""

    def __init__(self, registry: CollectorRegistry | None = None, process: bool = True) -> None:
        self.registry = registry or CollectorRegistry()
        # /metrics in the text format and in OpenMetrics, each with its series' text cached
        self.text = TextRenderer(self.registry)
        self.openmetrics = OpenMetricsRenderer(self.registry)
        self._fee_assets: dict[str, str] = {}  # symbol -> quote asset (money_labels)
        if process:
            process_collector.ProcessCollector(registry=self.registry)
            platform_collector.PlatformCollector(registry=self.registry)
            gc_collector.GCCollector(registry=self.registry)
        direct = [s for s in CATALOGUE.values() if not _read_at_scrape(s)]
        self.m = {spec.name: _build(spec, self.registry) for spec in direct}
        self._children: dict[tuple, object] = {}
        stage = self.m["loom_stage_duration_seconds"]
        # The stages in path order (risk runs inside match; it is timed on a sample).
        self.stage_decode = stage.labels("decode")
        self.stage_sequencer_wait = stage.labels("sequencer_wait")
        self.stage_risk = stage.labels("risk")
        self.stage_journal = stage.labels("journal")
        self.stage_match = stage.labels("match")
        self.stage_ack = stage.labels("ack")
        self.batch_commands = self.m["loom_batch_commands"]
        self.fsync = self.m["loom_journal_fsync_seconds"]
        self.commands = self.m["loom_commands"]
        self.written_bytes = self.m["loom_journal_written_bytes"]
        self.write_errors = self.m["loom_journal_write_errors"]
        self.snapshot_duration = self.m["loom_snapshot_duration_seconds"]
        self.snapshot_capture = self.m["loom_snapshot_capture_seconds"]
        self.snapshot_failures = self.m["loom_snapshot_failures"]
        self.md_fanout_lag = self.m["loom_md_fanout_lag_seconds"]
        self.md_slow_consumer_drops = self.m["loom_md_slow_consumer_drops"]
        self.md_encoded = self.m["loom_md_messages_encoded"]
        self.md_deliveries = self.m["loom_md_deliveries"]
        self.md_conflated = self.m["loom_md_conflated_updates"]
        self.md_gap_recoveries = self.m["loom_md_gap_recoveries"]
        for channel in ("book", "l3"):
            self.md_gap_recoveries.labels(channel)  # at 0 from the start
        self.md_feed_resyncs = self.m["loom_md_feed_resyncs"]
        for reason in ("gap", "leader"):
            self.md_feed_resyncs.labels(reason)
        self.loop_lag(MAIN_LOOP)  # exported from the start; other loops add theirs
        # Bounded label sets, so every series exists (at 0) before the first risk event.
        for reason in RISK_REASONS:
            self.child("loom_risk_rejects", risk_layer(reason), reason.name.lower())
        for scope in _SCOPE.values():
            self.child("loom_risk_limit_changes", scope)
        for protocol in GATEWAY_PROTOCOLS:  # at 0 from the start: rate() sees the first refusal
            self.child("loom_overload_refusals", protocol)
        for kind in _TRANSFER_KIND.values():
            for outcome in ("applied", "repeated"):
                self.child("loom_transfers", kind, outcome)

    def money_labels(self, symbols, assets, fee_assets: dict[str, str] | None = None) -> None:
        """The per-symbol and per-asset money series at 0 from the start (the venue's
        instruments and assets at start-up): rate() and increase() see the first event.
        `fee_assets` names each settled symbol's quote asset, the asset its fees are in."""
        self._fee_assets = dict(fee_assets or {})
        for symbol in symbols:
            self.child("loom_insufficient_balance_rejects", symbol)
        for asset in assets:
            self.child("loom_fees_collected", asset)

    def child(self, name: str, *labels: str):
        key = (name, *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = self.m[name].labels(*labels)
        return found

    def loop_lag(self, loop: str):
        """The loom_event_loop_lag_seconds child of one event loop (a LoopLagProbe feeds it)."""
        return self.child("loom_event_loop_lag_seconds", loop)

    def order_to_ack(self, protocol: str):
        return self.child("loom_order_to_ack_seconds", protocol)

    def decode_error(self, protocol: str, code: str, n: int = 1) -> None:
        self.child("loom_decode_errors", protocol, code).inc(n)

    def rate_limited(self, protocol: str, n: int = 1) -> None:
        self.child("loom_rate_limited", protocol).inc(n)

    def overload_refused(self, protocol: str, n: int = 1) -> None:
        self.child("loom_overload_refusals", protocol).inc(n)

    def on_batch(self, commands: list, results: list[list]) -> None:
        self.on_events(commands, results, BatchEvents(results))

    def on_events(self, _commands: list, _results: list[list], split: BatchEvents) -> None:
        """Count the durable events of one batch (a service event listener), from the
        service's one walk of the batch: per label set, counted in C (collections.Counter over
        attrgetter keys), then one prometheus inc each (an inc takes a lock)."""
        child = self.child
        if split.accepted:
            for (symbol, side, kind), n in collections.Counter(map(_ORDER_KEY, split.accepted)).items():
                child("loom_orders", symbol, _SIDE.get(side, "?"), _TYPE.get(kind, "?")).inc(n)
        if split.trades:
            trades = collections.Counter(map(_SYMBOL, split.trades))
            for symbol, n in trades.items():
                child("loom_trades", symbol).inc(n)
            if len(trades) == 1:
                child("loom_traded_quantity", symbol).inc(sum(map(_QTY, split.trades)))
            else:
                qty: dict[str, int] = {}
                for t in split.trades:
                    qty[t.symbol] = qty.get(t.symbol, 0) + t.qty
                for symbol, n in qty.items():
                    child("loom_traded_quantity", symbol).inc(n)
            if self._fee_assets:
                self._count_fees(split.trades)
        if split.cancelled:
            for (symbol, reason), n in collections.Counter(map(_CANCEL_KEY, split.cancelled)).items():
                child("loom_cancels", symbol, _reason(CancelReason, reason)).inc(n)
        if split.done:
            for symbol, n in collections.Counter(map(_SYMBOL, split.done)).items():
                child("loom_orders_filled", symbol).inc(n)
        if split.rejected:
            keys = collections.Counter(map(_REJECT_KEY, split.rejected))
            for (request, reason), n in keys.items():
                name = _reason(RejectReason, reason)
                child("loom_rejects", _REQUEST.get(request, str(request)), name).inc(n)
                layer = risk_layer(reason)
                if layer:
                    child("loom_risk_rejects", layer, name).inc(n)
            # The money refusals, walked only when the batch has some (from the keys above).
            if any(r == INSUFFICIENT_BALANCE and q != REQ_TRANSFER for q, r in keys):
                for ev in split.rejected:
                    if ev.reason == INSUFFICIENT_BALANCE and ev.request != REQ_TRANSFER:
                        child("loom_insufficient_balance_rejects", ev.symbol).inc()
            if any(q == REQ_TRANSFER for q, _r in keys):
                self._count_refused_transfers(_commands, _results)
        for other in split.other:  # rare: risk administration, transfers and the like
            if isinstance(other, RiskLimitsChanged):
                child("loom_risk_limit_changes", _SCOPE.get(other.scope, str(other.scope))).inc()
            elif isinstance(other, TransferApplied):
                outcome = "repeated" if other.repeated else "applied"
                child("loom_transfers", _TRANSFER_KIND.get(other.kind, str(other.kind)), outcome).inc()

    def _count_fees(self, trades: list) -> None:
        """Both fees of each trade, net (a maker rebate is negative; a trade's net is never
        below zero), summed per quote asset before one inc each."""
        fees: dict[str, int] = {}
        assets = self._fee_assets
        for t in trades:
            net = t.maker_fee + t.taker_fee
            if net:
                asset = assets.get(t.symbol, "")
                fees[asset] = fees.get(asset, 0) + net
        for asset, n in fees.items():
            if asset:
                self.child("loom_fees_collected", asset).inc(n)

    def _count_refused_transfers(self, commands: list, results: list[list]) -> None:
        """A refused transfer's event names no kind: take it from its command (a rare walk
        of the batch, only when it holds a refused transfer)."""
        for cmd, events in zip(commands, results, strict=False):
            if type(cmd) is Transfer and events and type(events[0]) is OrderRejected:
                kind = _TRANSFER_KIND.get(cmd.kind, "invalid")
                self.child("loom_transfers", kind, _reason(RejectReason, events[0].reason)).inc()


# The collectors that read state at scrape time; what they name is not built here. One list:
# each collector's METRICS (which its describe() also registers) is the source of truth.
SCRAPE_COLLECTORS: tuple[type[CatalogueCollector], ...] = (
    StandaloneRoleCollector,
    ClusterCollector,
    DataDiskCollector,
    ExchangeCollector,
    RiskCollector,
    SurveillanceCollector,
    LedgerCollector,
    MarketDataCollector,
    FixSessionsCollector,
    TraceExportCollector,
    AdmissionCollector,
    GcPauses,
    BuildInfo,
)
SCRAPE_TIME = frozenset(name for collector in SCRAPE_COLLECTORS for name in collector.METRICS)


def _read_at_scrape(spec: MetricSpec) -> bool:
    return spec.name in SCRAPE_TIME
