"""The one catalogue of every metric the exchange emits.

The code, the dashboards and the alert rules take metric names from here; a test fails
when anything queries a name this catalogue does not declare. Names follow Prometheus
conventions (`loom_` prefix, base units, `_total` on counters, unit suffixes). Order ids
never appear as labels: their cardinality is unbounded (they go on spans and in the
journal instead).
"""

from __future__ import annotations

from dataclasses import dataclass

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"

# Latency buckets from 10 µs to 5 s: the journal's fdatasync sits near 0.2 ms, a whole
# order-to-ack under load near 1 ms, and a stall is anything past 10 ms.
LATENCY_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Event-loop lag: a timer's own jitter is ~1 ms (uvloop's clock has ms resolution), so the
# scale starts there; anything past 50 ms is a stall an order sees.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class MetricSpec:
    name: str  # the exposed name (counters without the `_total` suffix, as prometheus_client wants)
    kind: str
    help: str
    labels: tuple[str, ...] = ()
    unit: str = ""
    buckets: tuple[float, ...] = ()

    @property
    def series_names(self) -> tuple[str, ...]:
        """The names a query can use for this metric."""
        if self.kind == COUNTER:
            return (f"{self.name}_total", f"{self.name}_created")
        if self.kind == HISTOGRAM:
            return tuple(f"{self.name}{s}" for s in ("_bucket", "_sum", "_count", "_created"))
        return (self.name,)


_SPECS = [
    # -- order flow (from the durable events, per batch) ---------------------------------
    MetricSpec("loom_orders", COUNTER, "New orders accepted.", ("symbol", "side", "type")),
    MetricSpec("loom_rejects", COUNTER, "Commands refused, by reason code.", ("request", "reason")),
    MetricSpec("loom_trades", COUNTER, "Trades.", ("symbol",)),
    MetricSpec("loom_traded_quantity", COUNTER, "Quantity traded, in lots.", ("symbol",)),
    MetricSpec("loom_cancels", COUNTER, "Orders cancelled, by reason.", ("symbol", "reason")),
    MetricSpec("loom_orders_filled", COUNTER, "Orders filled completely.", ("symbol",)),
    MetricSpec("loom_commands", COUNTER, "Commands sequenced and journaled.", ()),
    # -- stages of the order path --------------------------------------------------------
    MetricSpec(
        "loom_stage_duration_seconds",
        HISTOGRAM,
        "Time in a stage of the order path: decode (per request, message or read, in the "
        "gateway), sequencer_wait (per submission, queued until its group-commit batch is "
        "sequenced), then per batch journal (write + fdatasync), match, and ack (answers to "
        "the submitters, then the order store, market data, execution reports and metrics). "
        "risk: the pre-trade checks of one new order; they run inside match, and are timed on "
        "one batch in 8 while any risk limit, kill switch or halt is set.",
        ("stage",),
        "seconds",
        LATENCY_BUCKETS,
    ),
    MetricSpec(
        "loom_order_to_ack_seconds",
        HISTOGRAM,
        "From receiving an order to sending its durable acknowledgement, by protocol.",
        ("protocol",),
        "seconds",
        LATENCY_BUCKETS,
    ),
    MetricSpec("loom_batch_commands", HISTOGRAM, "Commands per group-commit batch.", (), "", BATCH_BUCKETS),
    # -- journal ---------------------------------------------------------------------------
    MetricSpec(
        "loom_journal_fsync_seconds",
        HISTOGRAM,
        "fdatasync of one journal batch (local journal only: a cluster node's durability point "
        "is the PubAck, loom_replication_publish_seconds).",
        (),
        "seconds",
        LATENCY_BUCKETS,
    ),
    MetricSpec("loom_journal_written_bytes", COUNTER, "Bytes appended to the journal.", (), "bytes"),
    MetricSpec(
        "loom_journal_write_errors",
        COUNTER,
        "Journal batches refused: not written, and known not to be in the journal (an unknown "
        "outcome is counted by loom_journal_unknown_outcomes instead).",
        (),
    ),
    MetricSpec(
        "loom_journal_unknown_outcomes",
        COUNTER,
        "Journal appends whose outcome was unknown (a lost PubAck; a failed fdatasync that could "
        "not be cut off), by resolution (landed, absent, abandoned: left to the stream by a node "
        "no longer leading) and answered (definite: settled before the answer; unknown: answered "
        "OUTCOME_UNKNOWN first).",
        ("resolution", "answered"),
    ),
    MetricSpec(
        "loom_journal_unresolved",
        GAUGE,
        "1 while a batch answered OUTCOME_UNKNOWN is not resolved: nothing is sequenced after it "
        "and the node is not ready.",
        (),
    ),
    MetricSpec(
        "loom_journal_size_bytes",
        GAUGE,
        "Bytes in the journal: its segment files, or on a cluster node the replicated stream "
        "(as the stream reports it; each replica stores as much).",
        (),
        "bytes",
    ),
    MetricSpec(
        "loom_journal_segments",
        GAUGE,
        "Journal segment files (absent on a cluster node: its journal is the replicated stream).",
        (),
    ),
    MetricSpec(
        "loom_journal_retired_segments",
        COUNTER,
        "Journal segments retention moved to journal/archive/ or removed, by action "
        "(archived, deleted), since start (single node only; journal_retention).",
        ("action",),
    ),
    MetricSpec(
        "loom_journal_retired_bytes",
        COUNTER,
        "Bytes of the journal segments retention archived or deleted, by action, since start.",
        ("action",),
        "bytes",
    ),
    MetricSpec("loom_journal_last_seq", GAUGE, "Sequence number of the last durable command.", ()),
    MetricSpec(
        "loom_journal_torn_tail_truncations",
        GAUGE,
        "Torn tails truncated when the journal was opened (since start).",
        (),
    ),
    # -- the data directory's file system (read at scrape time) -------------------------------
    MetricSpec(
        "loom_data_disk_free_bytes",
        GAUGE,
        "Bytes available to the exchange on the file system of its data directory (statvfs "
        "f_bavail: what the journal can still append before writes fail).",
        (),
        "bytes",
    ),
    MetricSpec(
        "loom_data_disk_size_bytes",
        GAUGE,
        "Size of the file system that holds the data directory (statvfs f_blocks).",
        (),
        "bytes",
    ),
    # -- snapshots and recovery --------------------------------------------------------------
    MetricSpec("loom_snapshot_age_seconds", GAUGE, "Seconds since the last snapshot.", (), "seconds"),
    MetricSpec("loom_snapshot_seq", GAUGE, "Sequence number the newest snapshot covers.", ()),
    MetricSpec("loom_snapshot_size_bytes", GAUGE, "Size of the newest snapshot written.", (), "bytes"),
    MetricSpec(
        "loom_snapshot_duration_seconds",
        HISTOGRAM,
        "Time to write one snapshot in the background (the forked child's encode, write, "
        "fsync and rename); the order path does not wait for it.",
        (),
        "seconds",
        DURATION_BUCKETS,
    ),
    MetricSpec(
        "loom_snapshot_capture_seconds",
        HISTOGRAM,
        "Time the order path paused to capture one snapshot (the fork at a batch boundary).",
        (),
        "seconds",
        LATENCY_BUCKETS,
    ),
    MetricSpec("loom_snapshot_failures", COUNTER, "Snapshots that could not be written.", ()),
    MetricSpec("loom_recovery_duration_seconds", GAUGE, "Duration of the start-up recovery.", (), "seconds"),
    MetricSpec(
        "loom_recovery_replayed_commands", GAUGE, "Commands replayed after the snapshot at start.", ()
    ),
    # -- the book (read at scrape time) ---------------------------------------------------------
    MetricSpec(
        "loom_book_best_price", GAUGE, "Best bid or ask price (absent when empty).", ("symbol", "side")
    ),
    MetricSpec("loom_book_spread", GAUGE, "Best ask minus best bid, in price units.", ("symbol",)),
    MetricSpec(
        "loom_book_depth_quantity", GAUGE, "Quantity resting in the best 10 levels.", ("symbol", "side")
    ),
    MetricSpec("loom_book_levels", GAUGE, "Price levels on a side of the book.", ("symbol", "side")),
    MetricSpec("loom_open_orders", GAUGE, "Orders resting in the book.", ("symbol",)),
    # -- gateways ---------------------------------------------------------------------------------
    MetricSpec("loom_sessions", GAUGE, "Connected sessions, by protocol.", ("protocol",)),
    MetricSpec(
        "loom_rate_limited",
        COUNTER,
        "Requests refused by a rate limit, by protocol (unauthenticated: the per-IP limit on "
        "HTTP requests without a valid key).",
        ("protocol",),
    ),
    # -- connection admission (engine/gateways/admission.py), read at scrape time ----------------
    MetricSpec(
        "loom_connections",
        GAUGE,
        "Open connections by listener (protocol: http, binary, fix), logged on or not.",
        ("protocol",),
    ),
    MetricSpec(
        "loom_connection_limit",
        GAUGE,
        "A listener's connection cap ([admission] max_connections, else its share of the descriptor budget).",
        ("protocol",),
    ),
    MetricSpec(
        "loom_connections_refused",
        COUNTER,
        "Connections refused by admission, by listener and reason (listener_full: at its cap; "
        "per_ip: the address holds max_connections_per_ip).",
        ("protocol", "reason"),
    ),
    MetricSpec(
        "loom_connection_timeouts",
        COUNTER,
        "Connections closed for a missed deadline, by listener and reason (login_timeout, "
        "idle_timeout, body_timeout).",
        ("protocol", "reason"),
    ),
    MetricSpec(
        "loom_listener_pauses",
        COUNTER,
        "Times a full listener stopped accepting for [admission] refusal_backoff_s because it was "
        "refusing over [admission] refusal_rate connections a second (new connections wait in the "
        "kernel's accept queue meanwhile).",
        ("protocol",),
    ),
    MetricSpec(
        "loom_overload_refusals",
        COUNTER,
        "Commands refused by admission control because the commit queue was at its bound "
        "(max_queued_commands): answered at once as retryable, never sequenced or journaled.",
        ("protocol",),
    ),
    MetricSpec(
        "loom_decode_errors",
        COUNTER,
        "Inbound messages refused as unreadable or invalid before sequencing, by protocol and "
        "error code (a bounded set per protocol).",
        ("protocol", "code"),
    ),
    MetricSpec("loom_ready", GAUGE, "1 when the node accepts orders and its journal is writable.", ()),
    MetricSpec(
        "loom_commit_backlog_commands",
        GAUGE,
        "Commands submitted and waiting for the next group-commit batch (the sequencer's backlog).",
        (),
    ),
    # -- cluster: lease, replication, fencing (read at scrape time) -------------------------------
    MetricSpec(
        "loom_cluster_role",
        GAUGE,
        "1 for this node's current role (leader, standby, candidate or standalone), else 0.",
        ("role",),
    ),
    MetricSpec("loom_lease_held", GAUGE, "1 while this node holds the leader lease.", ()),
    MetricSpec(
        "loom_lease_renewals", COUNTER, "Leader lease renewals by this node, by outcome.", ("outcome",)
    ),
    MetricSpec(
        "loom_lease_epoch",
        GAUGE,
        "Epoch of the lease as last observed (the KV revision of the acquiring write).",
        (),
    ),
    MetricSpec(
        "loom_replication_lag_commands",
        GAUGE,
        "Commands in the replicated journal that this node has not applied yet.",
        (),
    ),
    MetricSpec(
        "loom_replication_publish_seconds",
        HISTOGRAM,
        "From publishing a batch to the replicated journal to its PubAck (the durability point).",
        (),
        "seconds",
        LATENCY_BUCKETS,
    ),
    MetricSpec(
        "loom_fencing_rejections",
        COUNTER,
        "Appends refused because another leader had written to the stream (fencing).",
        (),
    ),
    MetricSpec("loom_failovers", COUNTER, "Promotions of this node to leader.", ()),
    MetricSpec("loom_leader_changes", COUNTER, "Changes of lease holder this node has observed.", ()),
    # -- cluster retention: replicated snapshots and stream purges (engine/cluster/retention.py)
    MetricSpec(
        "loom_stream_messages",
        GAUGE,
        "Messages in the replicated journal stream (batches and epoch markers); its bytes are "
        "loom_journal_size_bytes.",
        (),
    ),
    MetricSpec(
        "loom_stream_first_command_seq",
        GAUGE,
        "First command seq the replicated journal still holds: the state before it is only in "
        "snapshots (a new node needs one at this seq - 1 or later).",
        (),
    ),
    MetricSpec(
        "loom_replicated_snapshot_seq",
        GAUGE,
        "Command seq of the newest snapshot in the replicated snapshot store (0: none).",
        (),
    ),
    MetricSpec(
        "loom_replicated_snapshot_age_seconds",
        GAUGE,
        "Seconds since the newest replicated snapshot was written (by the writer's clock; absent "
        "while there is none).",
        (),
        "seconds",
    ),
    MetricSpec(
        "loom_replicated_snapshot_uploads",
        COUNTER,
        "Snapshots this node (as leader) stored in the replicated snapshot store, by outcome.",
        ("outcome",),
    ),
    MetricSpec(
        "loom_stream_purges",
        COUNTER,
        "Purges of the replicated journal behind a replicated snapshot that removed messages.",
        (),
    ),
    MetricSpec(
        "loom_stream_purged_messages",
        COUNTER,
        "Messages removed from the replicated journal by retention purges.",
        (),
    ),
    # -- standbys' positions and the purge floor (engine/cluster/positions.py), on the leader ---
    MetricSpec(
        "loom_standby_applied_seq",
        GAUGE,
        "Last command seq each standby reported having applied, as the leader last read it.",
        ("node",),
    ),
    MetricSpec(
        "loom_standby_lag_commands",
        GAUGE,
        "Commands in the replicated journal beyond each standby's reported position.",
        ("node",),
    ),
    MetricSpec(
        "loom_standby_report_age_seconds",
        GAUGE,
        "Age of each standby's position report; past [retention] standby_stale_s the standby no "
        "longer holds purges back.",
        ("node",),
        "seconds",
    ),
    MetricSpec(
        "loom_retention_purge_floor_seq",
        GAUGE,
        "Last command seq a purge may remove as far as the standbys go: the slowest live "
        "standby's applied seq (absent when no live standby reports, and on standbys).",
        (),
    ),
    MetricSpec(
        "loom_retention_purges_held_back",
        COUNTER,
        "Purge decisions that kept more of the stream because a live standby still needed it.",
        (),
    ),
    # -- pre-trade risk (engine/core/risk.py) and surveillance (engine/core/surveillance.py) ---------------
    MetricSpec(
        "loom_risk_rejects",
        COUNTER,
        "New orders and amends refused by pre-trade risk, by layer (venue, order, account, "
        "admin) and reason.",
        ("layer", "reason"),
    ),
    MetricSpec(
        "loom_risk_limit_changes",
        COUNTER,
        "Risk limit changes applied, by scope (venue, symbol, account).",
        ("scope",),
    ),
    MetricSpec(
        "loom_kill_switch_engaged",
        GAUGE,
        "Kill switches engaged, by scope (venue: 0 or 1; symbol, account: how many).",
        ("scope",),
    ),
    MetricSpec("loom_trading_halts", GAUGE, "Symbols whose trading is halted.", ()),
    MetricSpec(
        "loom_surveillance_anomaly_score",
        GAUGE,
        "Highest anomaly score over all accounts, by kind (1 = at the alert threshold).",
        ("kind",),
    ),
    MetricSpec(
        "loom_surveillance_top_score",
        GAUGE,
        "Anomaly scores of the highest-scoring accounts per kind, by rank (1 = highest; top 5 "
        "scoring at least 0.5), without identities: which accounts is for the admin and ops API "
        "(GET /v1/admin/surveillance, `loom risk surveillance`), never a metric label.",
        ("kind", "rank"),
    ),
    MetricSpec(
        "loom_surveillance_alerts",
        COUNTER,
        "Times an account's anomaly score was found at the threshold (1) when scores are "
        "evaluated (every scrape), by kind; once until it falls back below 0.8.",
        ("kind",),
    ),
    MetricSpec("loom_surveillance_accounts", GAUGE, "Accounts with activity in the surveillance window.", ()),
    MetricSpec(
        "loom_surveillance_findings",
        COUNTER,
        "Abuse patterns found by surveillance, off the order path, by kind (wash_trade, "
        "spoofing, layering, price_move) and symbol; which owners and accounts is for "
        "GET /v1/admin/surveillance/report, never a label.",
        ("kind", "symbol"),
    ),
    MetricSpec(
        "loom_surveillance_flow_zscore",
        GAUGE,
        "Highest z-score over all accounts of the last closed interval, by order-flow feature "
        "(order_rate, cancel_ratio, order_size, aggressiveness), against the learned EWMA model.",
        ("feature",),
    ),
    MetricSpec(
        "loom_surveillance_price_move_zscore",
        GAUGE,
        "z-score of the symbol's price move over the last closed interval, against its learned EWMA model.",
        ("symbol",),
    ),
    MetricSpec(
        "loom_surveillance_dropped_batches",
        COUNTER,
        "Durable batches surveillance did not analyse because its bounded buffer was full.",
        (),
    ),
    MetricSpec(
        "loom_surveillance_backlog_events",
        GAUGE,
        "Events waiting for the surveillance worker (it analyses within a CPU budget and falls "
        "behind under load; beyond the buffer's bound whole batches are dropped).",
        (),
    ),
    MetricSpec(
        "loom_surveillance_analysis_age_seconds",
        GAUGE,
        "Seconds since the surveillance worker last published its results (what scrapes, the "
        "report and the automation read); it publishes about once a second.",
        (),
    ),
    # -- accounts and money (engine/core/balances.py, docs/accounts.md) ------------------------------
    MetricSpec(
        "loom_transfers",
        COUNTER,
        "Transfers (deposit, withdrawal, adjustment) by kind and outcome: applied, repeated (a "
        "transfer_id seen before: answered with the original) or the refusal reason.",
        ("kind", "outcome"),
    ),
    MetricSpec(
        "loom_insufficient_balance_rejects",
        COUNTER,
        "New orders and amends refused for lack of available balance (INSUFFICIENT_BALANCE), by "
        "symbol (credit checks, engine/core/settlement.py).",
        ("symbol",),
    ),
    MetricSpec(
        "loom_fees_collected",
        COUNTER,
        "Fees collected into the venue fee account, in integer units of the asset, by asset (net of "
        "maker rebates), from the fees on the trade events (engine/core/settlement.py).",
        ("asset",),
    ),
    MetricSpec(
        "loom_asset_balances",
        GAUGE,
        "Sum of every account's total balance, by asset, in integer units of the asset (read from "
        "the ledger at scrape time; never per account).",
        ("asset",),
    ),
    MetricSpec(
        "loom_asset_held_balances",
        GAUGE,
        "Sum of the amounts held (reserved by open orders), by asset, in integer units of the asset.",
        ("asset",),
    ),
    MetricSpec(
        "loom_ledger_conservation_breaches",
        GAUGE,
        "Problems the ledger's conservation check (engine/core/invariants.py) finds at scrape time: "
        "an asset whose balances do not sum to deposits - withdrawals + adjustments, a negative "
        "balance, held above total. Must always be 0.",
        (),
    ),
    # -- runbook automation ---------------------------------------------------------------------
    MetricSpec(
        "loom_automation_actions",
        COUNTER,
        "Runbook automation decisions on alerts, by action and outcome.",
        ("action", "outcome"),
    ),
    # -- the Python runtime (telemetry/runtime.py) ----------------------------------------------
    MetricSpec(
        "loom_build_info",
        GAUGE,
        "1, labelled with the running code: version (the package metadata) and revision (the git "
        "commit of the checkout it runs from, read at start; unknown when it is not a checkout).",
        ("version", "revision"),
    ),
    MetricSpec(
        "loom_event_loop_lag_seconds",
        HISTOGRAM,
        "How late a timer ran on an event loop (a probe every 0.1 s): time the loop spent on "
        "something else, e.g. a long callback or a GC pause. loop: main (gateways, commit loop) "
        "or nats (a cluster node's NATS connection thread).",
        ("loop",),
        "seconds",
        LAG_BUCKETS,
    ),
    MetricSpec(
        "loom_gc_pause_seconds",
        HISTOGRAM,
        "Duration of each garbage collection (gc.callbacks start to stop), by generation "
        "(python_gc_collections_total counts them too).",
        ("generation",),
        "seconds",
        LATENCY_BUCKETS,
    ),
    MetricSpec(
        "loom_commit_queue_oldest_age_seconds",
        GAUGE,
        "Age of the oldest submission waiting in the commit queue (0 when it is empty); its length "
        "is loom_commit_backlog_commands.",
        (),
        "seconds",
    ),
    # -- order trace export (telemetry/tracing.py, telemetry/trace_worker.py) ------------------
    MetricSpec(
        "loom_trace_spans_exported",
        COUNTER,
        "Spans the trace worker exported over OTLP successfully.",
        (),
    ),
    MetricSpec(
        "loom_trace_spans_dropped",
        COUNTER,
        "Trace data lost before export, by reason: queue_full (spans: the worker's export queue, "
        "OTEL_BSP_MAX_QUEUE_SIZE, was full), export_failed (spans of failed exports), not_shipped "
        "(order and fill records the exchange could not hand to the worker - pipe full, worker "
        "gone - one per record: their spans were never built).",
        ("reason",),
    ),
    MetricSpec(
        "loom_trace_export_errors",
        COUNTER,
        "OTLP exports (batches of spans) that failed: refused, unreachable or timed out.",
        (),
    ),
    # -- market data (engine/market_data.py, the WebSocket gateway) -----------------------------
    MetricSpec(
        "loom_md_subscribers",
        GAUGE,
        "Market data subscriptions (WebSocket streams: book, trades, ticker, candles, l3), by "
        "channel, over all symbols.",
        ("channel",),
    ),
    MetricSpec(
        "loom_md_fanout_lag_seconds",
        HISTOGRAM,
        "From a batch becoming durable to its market data reaching a subscriber's socket: one "
        "sample per message for the subscribers it was written to at once (when the last of "
        "them was written), and one per queued write, for the oldest market data message in it.",
        (),
        "seconds",
        LATENCY_BUCKETS,
    ),
    MetricSpec(
        "loom_md_slow_consumer_drops",
        COUNTER,
        "WebSocket sessions disconnected because they read too slowly (their outbox of market "
        "data, acks and executions reached its bound).",
        (),
    ),
    MetricSpec(
        "loom_md_messages_encoded",
        COUNTER,
        "Market data messages encoded (each once, whatever the number of its subscribers).",
        (),
    ),
    MetricSpec(
        "loom_md_deliveries",
        COUNTER,
        "Market data frames queued to subscribers: one per subscriber per message, all sharing "
        "the message's one encoding (deliveries / messages encoded = the fan-out).",
        (),
    ),
    MetricSpec(
        "loom_md_conflated_updates",
        COUNTER,
        "Book updates a rate-limited subscriber did not receive on their own: folded into a later "
        "update carrying the latest quantity of each changed level (summed over subscribers).",
        (),
    ),
    MetricSpec(
        "loom_md_gap_recoveries",
        COUNTER,
        "Fresh snapshots sent on request after a client saw a gap in a sequenced stream (the "
        "WebSocket op resync), by channel (book, l3).",
        ("channel",),
    ),
    MetricSpec(
        "loom_md_feed_resyncs",
        COUNTER,
        "Times a `loom marketdata` process went back to the cluster leader's market-data state "
        "(engine/marketdata_nats.py), by reason: gap (an update from NATS did not follow the last "
        "one) or leader (a new leader's epoch). Its subscribers holding older seqs then resync.",
        ("reason",),
    ),
    # -- FIX sessions ----------------------------------------------------------------------------
    MetricSpec(
        "loom_fix_sessions",
        GAUGE,
        "FIX connections by session state: awaiting_logon, logged_on, logging_out (our Logout "
        "sent), closing (done, connection still open).",
        ("state",),
    ),
]

# Exposed only by a cluster node (`loom run --cluster`); a standalone node exports
# loom_cluster_role{role="standalone"} 1 and none of these.
CLUSTER_ONLY = {
    "loom_lease_held",
    "loom_lease_renewals",
    "loom_lease_epoch",
    "loom_replication_lag_commands",
    "loom_replication_publish_seconds",
    "loom_fencing_rejections",
    "loom_failovers",
    "loom_leader_changes",
    "loom_stream_messages",
    "loom_stream_first_command_seq",
    "loom_replicated_snapshot_seq",
    "loom_replicated_snapshot_age_seconds",
    "loom_replicated_snapshot_uploads",
    "loom_stream_purges",
    "loom_stream_purged_messages",
    "loom_standby_applied_seq",
    "loom_standby_lag_commands",
    "loom_standby_report_age_seconds",
    "loom_retention_purge_floor_seq",
    "loom_retention_purges_held_back",
}

# Exposed only while order traces are exported (OTEL_EXPORTER_OTLP_ENDPOINT is set).
TRACING_ONLY = {"loom_trace_spans_exported", "loom_trace_spans_dropped", "loom_trace_export_errors"}

CATALOGUE: dict[str, MetricSpec] = {}
for _spec in _SPECS:
    if _spec.name in CATALOGUE:
        raise ValueError(f"metric {_spec.name} declared twice")
    CATALOGUE[_spec.name] = _spec


def declared_series() -> set[str]:
    """Every series name a dashboard or rule may query (plus the process collector's)."""
    names = {n for spec in CATALOGUE.values() for n in spec.series_names}
    names |= PROCESS_SERIES
    return names


# From prometheus_client's process and GC collectors, registered beside the catalogue.
PROCESS_SERIES = {
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "python_gc_objects_collected_total",
    "python_gc_objects_uncollectable_total",
    "python_gc_collections_total",
    "python_info",
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
}
