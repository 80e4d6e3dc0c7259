"""Scrape-time collectors: state read when Prometheus asks, costing the order path
nothing (book depth and prices, open orders, journal size, snapshot age, sessions)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from operator import attrgetter
from pathlib import Path

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from telemetry.catalogue import CATALOGUE, CLUSTER_ONLY, COUNTER, GAUGE, HISTOGRAM

DEPTH_LEVELS = 10


def _gauge(name: str) -> GaugeMetricFamily:
    spec = CATALOGUE[name]
    return GaugeMetricFamily(name, spec.help, labels=list(spec.labels))


def _counter(name: str) -> CounterMetricFamily:
    spec = CATALOGUE[name]
    return CounterMetricFamily(name, spec.help, labels=list(spec.labels))


_FAMILIES = {COUNTER: CounterMetricFamily, GAUGE: GaugeMetricFamily, HISTOGRAM: HistogramMetricFamily}


class CatalogueCollector(Collector):
    """A scrape-time collector that names its catalogue metrics up front (`METRICS`).

    `describe()` gives the registry those names when the collector is registered, as
    prometheus_client's own metrics do: a second owner of a name then fails at registration
    ("Duplicated timeseries"), where without it the scrape would carry the name twice and
    Prometheus would drop the whole target. `collect()` yields only names from `METRICS`
    (tests/test_metric_collectors.py checks it against a live node)."""

    METRICS: tuple[str, ...] = ()

    def describe(self) -> Iterable[Metric]:
        for name in self.METRICS:
            spec = CATALOGUE[name]
            yield _FAMILIES[spec.kind](name, spec.help, labels=list(spec.labels))


ROLES = ("leader", "standby", "candidate", "standalone")


class StandaloneRoleCollector(CatalogueCollector):
    """A node without a cluster: loom_cluster_role{role="standalone"} 1, nothing else."""

    METRICS = ("loom_cluster_role",)

    def collect(self):
        role = _gauge("loom_cluster_role")
        role.add_metric(["standalone"], 1)
        yield role


class ClusterCollector(CatalogueCollector):
    """A cluster member's role, lease, lag and fencing, read from it at scrape time; the
    publish→PubAck histogram is observed by the journal (on the NATS thread)."""

    # The role, and every name the catalogue marks as a cluster member's alone (one list).
    METRICS = ("loom_cluster_role", *sorted(CLUSTER_ONLY))

    def __init__(self, member, wall: Callable[[], float] = time.time) -> None:
        self.member = member  # engine.cluster.member.ClusterMember
        self.wall = wall  # replicated snapshots carry the writer's wall-clock time
        spec = CATALOGUE["loom_replication_publish_seconds"]
        self.publish_seconds = Histogram(spec.name, spec.help, buckets=spec.buckets, registry=None)

    def collect(self):
        member = self.member
        lease = member.lease
        role = _gauge("loom_cluster_role")
        for name in ROLES:
            role.add_metric([name], 1 if str(member.role) == name else 0)
        held = _gauge("loom_lease_held")
        held.add_metric([], 1 if lease.held else 0)
        renewals = _counter("loom_lease_renewals")
        for outcome, count in lease.renewals.items():
            renewals.add_metric([outcome], count)
        epoch = _gauge("loom_lease_epoch")
        epoch.add_metric([], lease.epoch if lease.held else lease.view.epoch)
        lag = _gauge("loom_replication_lag_commands")
        lag.add_metric([], member.lag)
        fenced = _counter("loom_fencing_rejections")
        fenced.add_metric([], member.journal.fenced)
        failovers = _counter("loom_failovers")
        failovers.add_metric([], member.failovers)
        changes = _counter("loom_leader_changes")
        changes.add_metric([], lease.leader_changes)
        yield from (role, held, renewals, epoch, lag, fenced, failovers, changes)
        yield from self.publish_seconds.collect()
        yield from self._retention()

    def _retention(self):
        journal = self.member.journal
        messages = _gauge("loom_stream_messages")
        messages.add_metric([], journal.stream_messages)
        first = _gauge("loom_stream_first_command_seq")
        first.add_metric([], journal.stream_first_command_seq)
        yield from (messages, first)
        retention = self.member.retention
        if retention is None:
            return
        newest = retention.store.newest
        seq = _gauge("loom_replicated_snapshot_seq")
        seq.add_metric([], newest.seq if newest else 0)
        age = _gauge("loom_replicated_snapshot_age_seconds")
        if newest is not None and newest.written_at:
            age.add_metric([], max(0.0, self.wall() - newest.written_at))
        stats = retention.stats
        uploads = _counter("loom_replicated_snapshot_uploads")
        uploads.add_metric(["ok"], stats.uploads_ok)
        uploads.add_metric(["failed"], stats.uploads_failed)
        purges = _counter("loom_stream_purges")
        purges.add_metric([], stats.purges)
        purged = _counter("loom_stream_purged_messages")
        purged.add_metric([], stats.purged_messages)
        held = _counter("loom_retention_purges_held_back")
        held.add_metric([], stats.held_back)
        yield from (seq, age, uploads, purges, purged, held)
        yield from self._standbys()

    def _standbys(self):
        """The standbys' reported positions, as the leader last read them (only it purges)."""
        member = self.member
        positions = member.positions
        if positions is None or not member.leading():
            return
        last = positions.last
        since = max(0.0, self.wall() - positions.read_at) if positions.read_at else 0.0
        tail = max(member.stream_last_seq, member.journal.last_seq)
        applied = _gauge("loom_standby_applied_seq")
        lag = _gauge("loom_standby_lag_commands")
        age = _gauge("loom_standby_report_age_seconds")
        for p in last:
            applied.add_metric([p.node], p.applied_seq)
            lag.add_metric([p.node], max(0, tail - p.applied_seq))
            age.add_metric([p.node], p.age_s + since)
        floor = _gauge("loom_retention_purge_floor_seq")
        lowest = positions.floor(last)
        if lowest is not None:
            floor.add_metric([], lowest)
        yield from (applied, lag, age, floor)


class DataDiskCollector(CatalogueCollector):
    """Free and total bytes of the data directory's file system: a full disk makes every
    journal append fail (trading stops), so it is watched before it happens."""

    METRICS = (
        "loom_data_disk_free_bytes",
        "loom_data_disk_size_bytes",
    )

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)

    def collect(self):
        try:
            st = os.statvfs(self.data_dir)
        except OSError:
            return  # the directory is gone: absent series, not a misleading 0
        free = _gauge("loom_data_disk_free_bytes")
        free.add_metric([], st.f_bavail * st.f_frsize)  # f_bavail: excludes root's reserve
        size = _gauge("loom_data_disk_size_bytes")
        size.add_metric([], st.f_blocks * st.f_frsize)
        yield from (free, size)


def resting_orders(side) -> int:
    """The orders resting on one book side, counted per level (in C) rather than per order:
    each open order rests in exactly one level (engine/core/invariants.py checks it), and a
    walk of every account's open orders made a scrape cost O(open orders) on the loop."""
    return sum(map(len, map(_ORDERS, side.levels.values())))


_ORDERS = attrgetter("orders")


class ExchangeCollector(CatalogueCollector):
    METRICS = (
        "loom_journal_size_bytes",
        "loom_journal_last_seq",
        "loom_journal_torn_tail_truncations",
        "loom_journal_unknown_outcomes",
        "loom_journal_unresolved",
        "loom_journal_segments",
        "loom_journal_retired_segments",
        "loom_journal_retired_bytes",
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
        "loom_commit_backlog_commands",
        "loom_commit_queue_oldest_age_seconds",
        "loom_ready",
    )

    def __init__(
        self,
        service,
        sessions: dict[str, Callable[[], int]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.sessions = sessions if sessions is not None else {}  # filled in as listeners start
        self.clock = clock

    def collect(self):
        node = self.service.node
        engine = node.engine
        journal = node.journal

        size = _gauge("loom_journal_size_bytes")
        size.add_metric([], journal.size_bytes)
        last = _gauge("loom_journal_last_seq")
        last.add_metric([], journal.last_seq)
        torn = _gauge("loom_journal_torn_tail_truncations")
        torn.add_metric([], journal.torn_tail_truncations)
        unknown = _counter("loom_journal_unknown_outcomes")
        for labels, count in node.unknown_outcomes.items():
            unknown.add_metric(list(labels), count)
        unresolved = _gauge("loom_journal_unresolved")
        unresolved.add_metric([], 0 if node.unresolved is None else 1)
        yield from (size, last, torn, unknown, unresolved)
        if not node.remote_journal:  # a replicated journal has no segment files: absent, not 0
            segments = _gauge("loom_journal_segments")
            segments.add_metric([], len(journal.segments))
            stats = node.retention
            retired = _counter("loom_journal_retired_segments")
            retired.add_metric(["archived"], stats.archived_segments)
            retired.add_metric(["deleted"], stats.deleted_segments)
            retired_bytes = _counter("loom_journal_retired_bytes")
            retired_bytes.add_metric(["archived"], stats.archived_bytes)
            retired_bytes.add_metric(["deleted"], stats.deleted_bytes)
            yield from (segments, retired, retired_bytes)

        age = _gauge("loom_snapshot_age_seconds")
        age.add_metric([], max(0.0, self.clock() - node.last_snapshot_at))
        snap_seq = _gauge("loom_snapshot_seq")
        snap_seq.add_metric([], node.last_snapshot_seq)
        snap_size = _gauge("loom_snapshot_size_bytes")
        snap_size.add_metric([], node.last_snapshot.size if node.last_snapshot else 0)
        rec_s = _gauge("loom_recovery_duration_seconds")
        rec_s.add_metric([], node.recovered.duration_s)
        rec_n = _gauge("loom_recovery_replayed_commands")
        rec_n.add_metric([], node.recovered.replayed_commands)
        yield from (age, snap_seq, snap_size, rec_s, rec_n)

        best = _gauge("loom_book_best_price")
        spread = _gauge("loom_book_spread")
        depth = _gauge("loom_book_depth_quantity")
        levels = _gauge("loom_book_levels")
        open_orders = _gauge("loom_open_orders")
        for symbol, book in engine.books.items():
            for side_name, side in (("bid", book.bids), ("ask", book.asks)):
                if side.best is not None:
                    best.add_metric([symbol, side_name], side.best)
                depth.add_metric([symbol, side_name], sum(q for _p, q, _n in side.depth(DEPTH_LEVELS)))
                levels.add_metric([symbol, side_name], len(side.levels))
            if book.bids.best is not None and book.asks.best is not None:
                spread.add_metric([symbol], book.asks.best - book.bids.best)
            open_orders.add_metric([symbol], resting_orders(book.bids) + resting_orders(book.asks))
        yield from (best, spread, depth, levels, open_orders)

        sessions = _gauge("loom_sessions")
        for protocol, count in self.sessions.items():
            sessions.add_metric([protocol], count())
        yield sessions
        backlog = _gauge("loom_commit_backlog_commands")
        backlog.add_metric([], self.service.queued)
        oldest = _gauge("loom_commit_queue_oldest_age_seconds")
        oldest.add_metric([], self.service.oldest_queued_age())
        yield from (backlog, oldest)
        ready = _gauge("loom_ready")
        ready.add_metric([], 1 if self.service.accepting and node.journal_ok else 0)
        yield ready


class RiskCollector(CatalogueCollector):
    """Kill switches and halts from the engine's risk state, and the surveillance scores,
    read at scrape time. Never an account name as a label: the top scores go out by rank,
    and which accounts they are is for the admin and ops API."""

    METRICS = (
        "loom_kill_switch_engaged",
        "loom_trading_halts",
        "loom_surveillance_anomaly_score",
        "loom_surveillance_top_score",
        "loom_surveillance_alerts",
        "loom_surveillance_accounts",
    )

    def __init__(
        self,
        engine_of: Callable[[], object],
        surveillance=None,
        wall_ns: Callable[[], int] | None = time.time_ns,
    ) -> None:
        self.engine_of = engine_of  # the live engine (a failover may replace it)
        self.surveillance = surveillance
        self.wall_ns = wall_ns  # moves the surveillance window on while no events arrive

    def collect(self):
        from engine.core.domain import RiskScope

        risk = self.engine_of().risk
        engaged = _gauge("loom_kill_switch_engaged")
        per_scope = dict.fromkeys((int(s) for s in RiskScope), 0)
        for scope, _target in risk.kill_switches:
            per_scope[scope] = per_scope.get(scope, 0) + 1
        for scope in RiskScope:
            engaged.add_metric([scope.name.lower()], per_scope[int(scope)])
        halts = _gauge("loom_trading_halts")
        halts.add_metric([], len(risk.halts))
        yield from (engaged, halts)
        if self.surveillance is None:
            return
        summary = self.surveillance.summary(self.wall_ns() if self.wall_ns else None)
        score = _gauge("loom_surveillance_anomaly_score")
        top = _gauge("loom_surveillance_top_score")
        for kind, data in summary["kinds"].items():
            score.add_metric([kind], data["max_score"])
            for rank, item in enumerate(data["top"], 1):
                top.add_metric([kind, str(rank)], item["score"])
        spec = CATALOGUE["loom_surveillance_alerts"]
        alerts = CounterMetricFamily("loom_surveillance_alerts", spec.help, labels=list(spec.labels))
        for kind, n in summary["alerts"].items():
            alerts.add_metric([kind], n)
        accounts = _gauge("loom_surveillance_accounts")
        accounts.add_metric([], summary["accounts"])
        yield from (score, top, alerts, accounts)


class SurveillanceCollector(CatalogueCollector):
    """The abuse findings by kind and symbol, the anomaly model's highest z-scores, and how far
    behind the analysis runs: read from what the desk's worker last published, never analysed
    at scrape time (engine/surveillance_desk.py). No identities: which accounts and owners is
    for GET /v1/admin/surveillance/report."""

    METRICS = (
        "loom_surveillance_findings",
        "loom_surveillance_flow_zscore",
        "loom_surveillance_price_move_zscore",
        "loom_surveillance_dropped_batches",
        "loom_surveillance_backlog_events",
        "loom_surveillance_analysis_age_seconds",
    )

    def __init__(self, desk, symbols: Callable[[], Iterable[str]] = tuple) -> None:
        self.desk = desk  # engine.surveillance_desk.SurveillanceDesk
        self.symbols = symbols  # the listed symbols: each kind has a series for each from the start

    def collect(self):
        from engine.core.surveillance_findings import FINDING_KINDS

        now = self.desk.metrics()
        spec = CATALOGUE["loom_surveillance_findings"]
        findings = CounterMetricFamily("loom_surveillance_findings", spec.help, labels=list(spec.labels))
        # Every (kind, listed symbol) from 0, so increase() sees the first finding.
        counts = dict.fromkeys(((k, s) for s in self.symbols() for k in FINDING_KINDS), 0)
        counts.update(now["findings"])
        for (kind, symbol), n in sorted(counts.items()):
            findings.add_metric([kind, symbol], n)
        flow = _gauge("loom_surveillance_flow_zscore")
        for feature, z in now["flow_z"].items():
            flow.add_metric([feature], z)
        moves = _gauge("loom_surveillance_price_move_zscore")
        for symbol, z in sorted(now["price_move_z"].items()):
            moves.add_metric([symbol], z)
        spec = CATALOGUE["loom_surveillance_dropped_batches"]
        dropped = CounterMetricFamily("loom_surveillance_dropped_batches", spec.help, labels=[])
        dropped.add_metric([], now["dropped_batches"])
        backlog = _gauge("loom_surveillance_backlog_events")
        backlog.add_metric([], now["backlog_events"])
        age = _gauge("loom_surveillance_analysis_age_seconds")
        age.add_metric([], now["age_s"])
        yield from (findings, flow, moves, dropped, backlog, age)


class LedgerCollector(CatalogueCollector):
    """Balances by asset (never per account) and the ledger's conservation check, read from
    the live engine's ledger at scrape time: one walk of the balances, off the order path."""

    METRICS = (
        "loom_asset_balances",
        "loom_asset_held_balances",
        "loom_ledger_conservation_breaches",
    )

    def __init__(self, engine_of: Callable[[], object]) -> None:
        self.engine_of = engine_of  # the live engine (a failover may replace it)

    def collect(self):
        from engine.core.invariants import conservation

        sums, problems = conservation(self.engine_of().ledger)
        totals, held = _gauge("loom_asset_balances"), _gauge("loom_asset_held_balances")
        for asset, s in sorted(sums.items()):
            totals.add_metric([asset], s.total)
            held.add_metric([asset], s.held)
        breaches = _gauge("loom_ledger_conservation_breaches")
        breaches.add_metric([], len(problems))
        yield from (totals, held, breaches)


class MarketDataCollector(CatalogueCollector):
    """Market data subscriptions by channel, counted at scrape time."""

    METRICS = ("loom_md_subscribers",)

    def __init__(self, market_data) -> None:
        self.market_data = market_data  # engine.market_data.MarketData

    def collect(self):
        subscribers = _gauge("loom_md_subscribers")
        for channel, n in self.market_data.subscriber_counts().items():
            subscribers.add_metric([channel], n)
        yield subscribers


class FixSessionsCollector(CatalogueCollector):
    """FIX connections by session state; `states()` counts them (every state, 0 included)."""

    METRICS = ("loom_fix_sessions",)

    def __init__(self, states: Callable[[], dict[str, int]]) -> None:
        self.states = states

    def collect(self):
        sessions = _gauge("loom_fix_sessions")
        for state, n in self.states().items():
            sessions.add_metric([state], n)
        yield sessions


class TraceExportCollector(CatalogueCollector):
    """Spans exported, dropped and failed: the worker's counts (TraceShipper.export_stats)
    plus the records the exchange dropped before the worker."""

    METRICS = (
        "loom_trace_spans_exported",
        "loom_trace_spans_dropped",
        "loom_trace_export_errors",
    )

    def __init__(self, shipper) -> None:
        self.shipper = shipper  # telemetry.tracing.TraceShipper

    def collect(self):
        stats = self.shipper.export_stats()
        exported = _counter("loom_trace_spans_exported")
        exported.add_metric([], stats.exported)
        dropped = _counter("loom_trace_spans_dropped")
        dropped.add_metric(["queue_full"], stats.queue_full)
        dropped.add_metric(["export_failed"], stats.failed_spans)
        dropped.add_metric(["not_shipped"], self.shipper.dropped)
        errors = _counter("loom_trace_export_errors")
        errors.add_metric([], stats.errors)
        yield from (exported, dropped, errors)


class AdmissionCollector(CatalogueCollector):
    """Each listener's open connections, cap, refusals, deadline closures and accept pauses
    (engine.gateways.admission.Admission objects, listed as listeners start)."""

    METRICS = (
        "loom_connections",
        "loom_connection_limit",
        "loom_connections_refused",
        "loom_connection_timeouts",
        "loom_listener_pauses",
    )

    def __init__(self, admissions: list) -> None:
        self.admissions = admissions

    def collect(self):
        open_ = _gauge("loom_connections")
        limit = _gauge("loom_connection_limit")
        refused = _counter("loom_connections_refused")
        timeouts = _counter("loom_connection_timeouts")
        pauses = _counter("loom_listener_pauses")
        for adm in self.admissions:
            open_.add_metric([adm.protocol], adm.open)
            limit.add_metric([adm.protocol], adm.limit)
            for reason, n in adm.refused.items():
                refused.add_metric([adm.protocol, reason], n)
            for reason, n in adm.timeouts.items():
                timeouts.add_metric([adm.protocol, reason], n)
            pauses.add_metric([adm.protocol], adm.brake.pauses)
        yield from (open_, limit, refused, timeouts, pauses)
