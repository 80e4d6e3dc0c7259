"""The Loom Exchange dashboards, as grafanalib objects.

Every query is built with `dashboards.catalogue_queries` (so from catalogue names only);
`dashboards.build` writes them to `dashboards/generated/<uid>.json`.
"""

from __future__ import annotations

import attr
from grafanalib.core import (
    BYTES_FORMAT,
    BYTES_PER_SEC_FORMAT,
    OPS_FORMAT,
    PERCENT_UNIT_FORMAT,
    SECONDS_FORMAT,
    SHORT_FORMAT,
    Stat,
    Target,
)

from alerts.slo import CONFIG, human_duration, seconds  # the SLOs and every alert threshold, defined once
from dashboards.catalogue_queries import RATE, m, mean, quantile, rate
from dashboards.cluster import cluster
from dashboards.credit import credit_rows
from dashboards.panels import (
    GREEN,
    ORANGE,
    P50_P99_P999,
    PRICE_UNITS,
    RED,
    REPLICATED_SNAPSHOT_AGE,
    ROLE_NAMES,
    THRESHOLDS,
    Board,
    Row,
    board,
    eq,
    link,
    lower,
    quantile_targets,
    range_text,
    role_code,
    series,
    stat,
    steps,
    target,
    upper,
    value_text,
)
from dashboards.surveillance import surveillance_rows


def ack_quantiles(by: tuple[str, ...] = ("protocol",)) -> list[Target]:
    return quantile_targets("loom_order_to_ack_seconds", "p{p} {{protocol}}", by, P50_P99_P999, exemplar=True)


ACK_THRESHOLD = upper(None, THRESHOLDS["order_to_ack_s"])  # the latency SLO's threshold
DECODE_STAGE = 'stage="decode"'
SLO_MS = f"{CONFIG.latency_threshold_s * 1000:g} ms"
BURN = steps((THRESHOLDS["slow_burn_factor"], ORANGE), (THRESHOLDS["fast_burn_factor"], RED))


def slow_ack_ratio(window: str) -> str:
    """Fraction of orders acknowledged later than the SLO's threshold over `window`."""
    fast = f"sum(increase({m('loom_order_to_ack_seconds_bucket', eq('le', CONFIG.latency_le))}[{window}]))"
    return f"(1 - {fast} / sum(increase({m('loom_order_to_ack_seconds_count')}[{window}])))"


def bad_commands(window: str) -> str:
    """Commands refused for the exchange's fault over `window` (alerts/slo.py says which);
    each term 0, not empty, while it has no series yet."""
    reasons = "|".join(CONFIG.availability_bad_reasons)
    failed = m("loom_rejects_total", f'reason=~"{reasons}"')
    bad = [f"sum(increase({failed}[{window}]))"]
    if CONFIG.availability_counts_overload:
        bad.append(f"sum(increase({m('loom_overload_refusals_total')}[{window}]))")
    return " + ".join(f"({b} or vector(0))" for b in bad)


def failed_command_ratio(window: str) -> str:
    """Fraction of valid commands the exchange failed to serve over `window`."""
    bad = bad_commands(window)
    return f"(({bad}) / (sum(increase({m('loom_commands_total')}[{window}])) + {bad}))"


def slo_row() -> list:
    period = CONFIG.slo_period
    return [
        stat(
            f"Orders acked within {SLO_MS} ({period})",
            [target(f"1 - {slow_ack_ratio(period)}")],
            PERCENT_UNIT_FORMAT,
            f"The latency SLI; the SLO is {CONFIG.latency_target:.2%} (red below it).",
            lower(THRESHOLDS["latency_target_ratio"]),
        ),
        stat(
            f"Order-to-ack error budget left ({period})",
            [target(f"1 - {slow_ack_ratio(period)} / {CONFIG.latency_budget}")],
            PERCENT_UNIT_FORMAT,
            "100% = nothing spent, below 0 = SLO missed.",
            lower(0),
        ),
        series(
            "Error budget burn rate (1 = spent exactly in the SLO period)",
            [
                target(f"{slow_ack_ratio(RATE)} / {CONFIG.latency_budget}", "order-to-ack"),
                target(f"{failed_command_ratio(RATE)} / {CONFIG.availability_budget}", "availability"),
            ],
            SHORT_FORMAT,
            f"Multi-window alerts page at {THRESHOLDS['fast_burn_factor']:g} (red line) and ticket at "
            f"{THRESHOLDS['slow_burn_factor']:g} (orange line); alerts/slo.py.",
            BURN,
        ),
        stat(
            f"Commands served ({period})",
            [target(f"1 - {failed_command_ratio(period)}")],
            PERCENT_UNIT_FORMAT,
            f"The availability SLI; the SLO is {CONFIG.availability_target:.2%} (red below it). Bad "
            "events: "
            + ", ".join(CONFIG.availability_bad_reasons)
            + (" and overload refusals." if CONFIG.availability_counts_overload else "."),
            lower(THRESHOLDS["availability_target_ratio"]),
        ),
        stat(
            f"Availability error budget left ({period})",
            [target(f"1 - {failed_command_ratio(period)} / {CONFIG.availability_budget}")],
            PERCENT_UNIT_FORMAT,
            "100% = nothing spent, below 0 = SLO missed.",
            lower(0),
        ),
    ]


READY = [value_text({1: ("ready", GREEN), 0: ("NOT READY", RED)})]


def health_row() -> list:
    return [
        stat(
            "Ready",
            [target(m("loom_ready"), "{{instance}}")],
            description="Per instance: ready when the node accepts orders and its journal is writable.",
            thresholds=lower(1),
            mappings=READY,
        ),
        stat(
            "Role",
            [target(role_code(), "{{instance}}")],
            description="Per instance: leader, standby, candidate (catching up to promote) or standalone.",
            mappings=ROLE_NAMES,
        ),
        kill_switch_stat("Venue kill switch", "venue"),
        stat("Orders/s", [target(f"sum({rate('loom_orders_total')})")], OPS_FORMAT),
        stat("Trades/s", [target(f"sum({rate('loom_trades_total')})")], OPS_FORMAT),
    ]


def kill_switch_stat(title: str, scope: str) -> Stat:
    """Engaged kill switches of a scope: "off" at 0, red from the alert's threshold up."""
    engaged = CONFIG.trigger("LoomKillSwitchEngaged").value  # the alert fires above it
    return stat(
        title,
        [target(f"sum({m('loom_kill_switch_engaged', eq('scope', scope))})")],
        description=f"Kill switches engaged at {scope} scope: new orders and amends there are refused "
        "(cancels pass). LoomKillSwitchEngaged fires while any is.",
        thresholds=steps((engaged + 1, RED)),
        mappings=[value_text({engaged: ("off", GREEN)}), range_text(engaged + 1, 1e9, "ENGAGED", RED, 1)],
    )


def reject_ratio() -> str:
    """Share of order commands rejected (LoomRejectRateHigh's ratio)."""
    rejects = f"sum({rate('loom_rejects_total')})"
    return f"{rejects} / (sum({rate('loom_orders_total')}) + {rejects})"


def runtime_rows() -> list:
    """One row per instance: the process and the event loop of the single-threaded matcher."""
    return [
        Row("Runtime: $instance", repeat="instance"),
        [
            series(
                "CPU (1 = one core busy)",
                [target(rate("process_cpu_seconds_total"), "{{instance}}")],
                PERCENT_UNIT_FORMAT,
                "The matcher is single-threaded: near 100% it cannot go faster.",
            ),
            series(
                "Resident memory",
                [target(m("process_resident_memory_bytes"), "{{instance}}")],
                BYTES_FORMAT,
            ),
            series(
                "Open file descriptors / max",
                [target(f"{m('process_open_fds')} / {m('process_max_fds')}", "{{instance}}")],
                PERCENT_UNIT_FORMAT,
                "Sessions, journal segments and sockets; at 100% accept() and open() fail.",
            ),
            stat(
                "Build",
                [target(m("loom_build_info"), "{{version}} ({{revision}})", instant=True)],
                description="loom_build_info{version, revision} of this instance.",
                text_mode="name",
            ),
        ],
        [
            series(
                "Event-loop lag (p50 / p99)",
                quantile_targets("loom_event_loop_lag_seconds", "p{p} {{instance}}", ("instance",)),
                SECONDS_FORMAT,
                "How late the event loop runs a timer: every order, ack and heartbeat waits this long.",
            ),
            series(
                "GC pauses p99 by generation",
                [
                    target(
                        quantile(0.99, "loom_gc_pause_seconds", ("instance", "generation")),
                        "gen {{generation}} {{instance}}",
                    )
                ],
                SECONDS_FORMAT,
                "Stop-the-world collections of the Python runtime (gc.callbacks).",
            ),
            series(
                "Commit queue: oldest waiting command",
                [target(m("loom_commit_queue_oldest_age_seconds"), "{{instance}}")],
                SECONDS_FORMAT,
                "Age of the oldest command waiting to be journaled: grows when the node falls behind.",
            ),
        ],
    ]


def overview() -> Board:
    return board(
        "loom-overview",
        "Loom / Exchange overview",
        [
            health_row(),
            [
                series(
                    "Order to ack (p50 / p99 / p99.9) by protocol",
                    ack_quantiles(),
                    SECONDS_FORMAT,
                    f"From receiving an order to its durable acknowledgement; the red line is the SLO's "
                    f"{SLO_MS}.",
                    ACK_THRESHOLD,
                )
            ],
            slo_row(),
            [
                series(
                    "Orders/s by symbol",
                    [target(f"sum by (symbol) ({rate('loom_orders_total')})", "{{symbol}}")],
                    OPS_FORMAT,
                ),
                series(
                    "Trades/s by symbol",
                    [target(f"sum by (symbol) ({rate('loom_trades_total')})", "{{symbol}}")],
                    OPS_FORMAT,
                ),
            ],
            [
                series(
                    "Rejects/s by reason",
                    [
                        target(
                            f"sum by (request, reason) ({rate('loom_rejects_total')})",
                            "{{request}} {{reason}}",
                        )
                    ],
                    OPS_FORMAT,
                ),
                series(
                    "Rejected share of orders",
                    [target(reject_ratio(), "rejected")],
                    PERCENT_UNIT_FORMAT,
                    f"LoomRejectRateHigh fires above {THRESHOLDS['reject_ratio']:.0%} (red line) with more "
                    f"than {CONFIG.reject_rate_min_per_s:g} reject/s.",
                    upper(None, THRESHOLDS["reject_ratio"]),
                ),
                series(
                    "Commands sequenced/s",
                    [target(f"sum({rate('loom_commands_total')})", "commands")],
                    OPS_FORMAT,
                ),
            ],
            *runtime_rows(),
        ],
        "Order flow, order-to-ack latency and SLOs of the exchange, and each instance's runtime.",
    )


def matching() -> Board:
    stage = ("stage",)
    return board(
        "loom-matching",
        "Loom / Matching engine",
        [
            [
                series(
                    "Stage latency p99 by stage",
                    [target(quantile(0.99, "loom_stage_duration_seconds", stage), "p99 {{stage}}")],
                    SECONDS_FORMAT,
                    "sequencer_wait is per submission; journal, match and ack are per batch.",
                ),
                series(
                    "Stage latency p50 by stage",
                    [target(quantile(0.5, "loom_stage_duration_seconds", stage), "p50 {{stage}}")],
                    SECONDS_FORMAT,
                ),
            ],
            [
                series(
                    "Mean stage time by stage",
                    [target(mean("loom_stage_duration_seconds", stage), "{{stage}}")],
                    SECONDS_FORMAT,
                ),
                series(
                    "Backlog: commands waiting for a batch (max over the interval)",
                    [target(f"max_over_time({m('loom_commit_backlog_commands')}[{RATE}])", "backlog")],
                    description="Submissions queued while the previous batch is being journaled; "
                    "it grows with load (group commit) and keeps growing when the node falls behind.",
                ),
                series(
                    "Commands per batch",
                    [
                        target(quantile(0.5, "loom_batch_commands"), "p50"),
                        target(quantile(0.99, "loom_batch_commands"), "p99"),
                        target(mean("loom_batch_commands"), "mean"),
                    ],
                ),
            ],
            [
                series(
                    "Book depth (best 10 levels) by symbol and side",
                    [
                        target(
                            f"sum by (symbol, side) ({m('loom_book_depth_quantity')})", "{{symbol}} {{side}}"
                        )
                    ],
                ),
                series(
                    "Spread by symbol",
                    [target(f"max by (symbol) ({m('loom_book_spread')})", "{{symbol}}")],
                    PRICE_UNITS,
                    "Best ask minus best bid in the integer price units of the API (prices have no "
                    "decimal scale in Loom: an instrument's tick_size, in [[instruments]], is in the same "
                    "units, so one tick of BTC-USD in the demo, tick 5, shows as 5).",
                    decimals=0,
                ),
            ],
            [
                series(
                    "Open orders by symbol",
                    [target(f"sum by (symbol) ({m('loom_open_orders')})", "{{symbol}}")],
                ),
                series(
                    "Price levels by symbol and side",
                    [target(f"sum by (symbol, side) ({m('loom_book_levels')})", "{{symbol}} {{side}}")],
                ),
            ],
            [
                series(
                    "Cancels/s by reason",
                    [target(f"sum by (reason) ({rate('loom_cancels_total')})", "{{reason}}")],
                    OPS_FORMAT,
                ),
                series(
                    "Orders filled/s by symbol",
                    [target(f"sum by (symbol) ({rate('loom_orders_filled_total')})", "{{symbol}}")],
                    OPS_FORMAT,
                ),
            ],
        ],
        "Stage latencies of the order path, batching and the state of the books.",
    )


SNAPSHOT_AGE = upper(None, THRESHOLDS["snapshot_age_s"])
DISK_FREE_RATIO = lower(THRESHOLDS["disk_free_ratio_critical"], THRESHOLDS["disk_free_ratio_warning"])
DISK_TREND = CONFIG.trigger("LoomDataDiskFillingUp").window  # the alert's predict_linear range
DISK_HORIZON_S = int(seconds(CONFIG.disk_horizon))
FSYNC_P99 = upper(None, THRESHOLDS["journal_fsync_p99_s"])


def persistence() -> Board:
    return board(
        "loom-persistence",
        "Loom / Persistence",
        [
            [
                stat(
                    "Journal size",
                    [target(m("loom_journal_size_bytes"))],
                    BYTES_FORMAT,
                    "Segment files on a single node; the replicated stream on a cluster node.",
                ),
                stat(
                    "Journal segments",
                    [target(m("loom_journal_segments"))],
                    SHORT_FORMAT,
                    "Single node only: a cluster node's journal is the replicated stream (no data here).",
                ),
                stat(
                    "Snapshot age",
                    [target(m("loom_snapshot_age_seconds"), "{{instance}}")],
                    SECONDS_FORMAT,
                    "LoomSnapshotTooOld fires past the red threshold.",
                    SNAPSHOT_AGE,
                ),
                stat(
                    "Recovery duration",
                    [target(m("loom_recovery_duration_seconds"), "{{instance}}")],
                    SECONDS_FORMAT,
                    "Start-up recovery (snapshot load and journal replay); LoomRecoverySlow fires past red.",
                    upper(None, THRESHOLDS["recovery_s"]),
                ),
                stat("Commands replayed at start", [target(m("loom_recovery_replayed_commands"))]),
            ],
            [
                series(
                    "Durability latency: fdatasync or replicated PubAck (p50 / p99 / p99.9)",
                    quantile_targets("loom_journal_fsync_seconds", "fdatasync p{p}", quantiles=P50_P99_P999)
                    + quantile_targets(
                        "loom_replication_publish_seconds", "PubAck p{p}", quantiles=P50_P99_P999
                    ),
                    SECONDS_FORMAT,
                    "LoomJournalFsyncLatencyHigh fires when the fdatasync p99 stays above the red line. "
                    "What each batch waits for before any of its orders is acknowledged: the local "
                    "fdatasync on a single node, publish to PubAck (a JetStream quorum has it on disk) "
                    "on a cluster leader. Each node shows one of the two.",
                    FSYNC_P99,
                ),
                series(
                    "Group-commit batch size",
                    [
                        target(quantile(0.5, "loom_batch_commands"), "p50"),
                        target(quantile(0.99, "loom_batch_commands"), "p99"),
                    ],
                ),
            ],
            [
                series(
                    "Journal growth",
                    [target(f"sum({rate('loom_journal_written_bytes_total')})", "written")],
                    BYTES_PER_SEC_FORMAT,
                ),
                series("Journal size", [target(m("loom_journal_size_bytes"), "size")], BYTES_FORMAT),
                series(
                    "Journal retention: bytes archived / deleted",
                    [
                        target(
                            f"sum by (action) (increase({m('loom_journal_retired_bytes_total')}[1h]))",
                            "{{action}} in the last hour",
                        )
                    ],
                    BYTES_FORMAT,
                    "Single node with journal_retention = archive or delete: segments no kept snapshot "
                    "needs, retired after each snapshot (archived ones stay on the data disk, in "
                    "journal/archive/). Zero with the default, keep.",
                ),
            ],
            [
                series(
                    "Data disk free",
                    [
                        target(m("loom_data_disk_free_bytes"), "free {{instance}}"),
                        target(
                            f"predict_linear({m('loom_data_disk_free_bytes')}[{DISK_TREND}], "
                            f"{DISK_HORIZON_S})",
                            f"predicted in {human_duration(CONFIG.disk_horizon)} (last {DISK_TREND} trend) "
                            "{{instance}}",
                        ),
                    ],
                    BYTES_FORMAT,
                    "Space left on the file system of the data directory (journal and snapshots). "
                    "When it runs out every journal append fails and trading stops. "
                    "LoomDataDiskFillingUp fires when the prediction stays below 0 for "
                    f"{human_duration(CONFIG.trigger('LoomDataDiskFillingUp').for_)}.",
                ),
                series(
                    "Data disk free ratio",
                    [
                        target(
                            f"{m('loom_data_disk_free_bytes')} / {m('loom_data_disk_size_bytes')}",
                            "{{instance}}",
                        )
                    ],
                    PERCENT_UNIT_FORMAT,
                    "LoomDataDiskAlmostFull fires below "
                    f"{THRESHOLDS['disk_free_ratio_warning']:.0%} (orange), "
                    f"LoomDataDiskFull below {THRESHOLDS['disk_free_ratio_critical']:.0%} (red).",
                    DISK_FREE_RATIO,
                ),
            ],
            [
                series(
                    "Journal write errors and snapshot failures /s",
                    [
                        target(f"sum({rate('loom_journal_write_errors_total')})", "journal write errors"),
                        target(f"sum({rate('loom_snapshot_failures_total')})", "snapshot failures"),
                    ],
                    OPS_FORMAT,
                ),
                series(
                    "Durable commands/s (last seq)",
                    [target(f"deriv({m('loom_journal_last_seq')}[$__rate_interval])", "seq/s")],
                    OPS_FORMAT,
                ),
            ],
            [
                series(
                    "Snapshot age",
                    [target(m("loom_snapshot_age_seconds"), "age {{instance}}")],
                    SECONDS_FORMAT,
                    thresholds=SNAPSHOT_AGE,
                ),
                series(
                    "Snapshot: background write and order-path pause",
                    [
                        target(
                            f"max({m('loom_snapshot_duration_seconds_sum')} / "
                            f"{m('loom_snapshot_duration_seconds_count')})",
                            "write, mean since start",
                        ),
                        target(quantile(0.99, "loom_snapshot_duration_seconds"), "write p99"),
                        target(quantile(0.99, "loom_snapshot_capture_seconds"), "capture pause p99"),
                    ],
                    SECONDS_FORMAT,
                ),
                series("Snapshot size", [target(m("loom_snapshot_size_bytes"), "size")], BYTES_FORMAT),
            ],
            [
                series(
                    "Cluster: replicated snapshot age",
                    [target(f"min({m('loom_replicated_snapshot_age_seconds')})", "age")],
                    SECONDS_FORMAT,
                    "Cluster nodes only. Each node's own snapshots are above; this is the newest one "
                    "the leader stored in the replicated store, behind which the stream is purged "
                    "(LoomReplicatedSnapshotTooOld, red line).",
                    REPLICATED_SNAPSHOT_AGE,
                ),
                series(
                    "Cluster: stream messages and purges",
                    [
                        target(f"max({m('loom_stream_messages')})", "messages in the stream"),
                        target(
                            f"sum(increase({m('loom_stream_purged_messages_total')}[$__rate_interval]))",
                            "purged",
                        ),
                    ],
                ),
            ],
        ],
        "Journal (fdatasync or replicated PubAck, growth, segments), snapshots (local and "
        "replicated) and start-up recovery.",
    )


def gateways() -> Board:
    return board(
        "loom-gateways",
        "Loom / Gateways",
        [
            [
                series(
                    "Sessions by protocol",
                    [target(f"sum by (protocol) ({m('loom_sessions')})", "{{protocol}}")],
                ),
                series(
                    "Rate-limit hits/s by protocol",
                    [target(f"sum by (protocol) ({rate('loom_rate_limited_total')})", "{{protocol}}")],
                    OPS_FORMAT,
                ),
                series(
                    "Overload refusals/s by protocol",
                    [target(f"sum by (protocol) ({rate('loom_overload_refusals_total')})", "{{protocol}}")],
                    OPS_FORMAT,
                    "Commands refused at once because the commit queue was at max_queued_commands "
                    "(REST/WS OVERLOADED, binary 603, FIX reject): retryable, never journaled. Zero while "
                    "the node keeps up; LoomShedding fires when it lasts 5 minutes. The queue itself is "
                    "the backlog panel of the Matching engine board.",
                ),
            ],
            [
                series(
                    "Connections held against the cap by listener",
                    [
                        target(f"sum by (protocol) ({m('loom_connections')})", "{{protocol}} open"),
                        target(f"sum by (protocol) ({m('loom_connection_limit')})", "{{protocol}} cap"),
                    ],
                    description="Open connections per listener (logged on or not) and the listener's cap "
                    "([admission] max_connections, else its share of the descriptor budget). "
                    "LoomConnectionsSaturated fires after 5 minutes above 90% of a cap.",
                ),
                series(
                    "Connections refused, closed by deadlines, accept pauses/s",
                    [
                        target(
                            f"sum by (protocol, reason) ({rate('loom_connections_refused_total')})",
                            "refused {{protocol}} {{reason}}",
                        ),
                        target(
                            f"sum by (protocol, reason) ({rate('loom_connection_timeouts_total')})",
                            "closed {{protocol}} {{reason}}",
                        ),
                        target(
                            f"sum by (protocol) ({rate('loom_listener_pauses_total')})", "paused {{protocol}}"
                        ),
                    ],
                    OPS_FORMAT,
                    "Refused: at the listener's cap (listener_full) or the address's (per_ip). Closed: a "
                    "missed login, idle or body deadline. Paused: a full listener refusing over "
                    "refusal_rate stops accepting for refusal_backoff_s (a reconnect storm).",
                ),
            ],
            [
                series(
                    "Unreadable messages refused/s by protocol and code",
                    [
                        target(
                            f"sum by (protocol, code) ({rate('loom_decode_errors_total')})",
                            "{{protocol}} {{code}}",
                        )
                    ],
                    OPS_FORMAT,
                    "Input refused before sequencing (malformed JSON, bad FIX checksum, unknown binary "
                    "frame...): it never reaches the journal. LoomDecodeErrorSpike fires above the red line.",
                    upper(None, THRESHOLDS["decode_errors_per_s"]),
                ),
                series(
                    "Decode time per request, message or read (p50 / p99)",
                    [
                        target(
                            f"histogram_quantile({q}, sum by (le) "
                            f"({rate('loom_stage_duration_seconds_bucket', DECODE_STAGE)}))",
                            f"p{label}",
                        )
                        for q, label in ((0.5, "50"), (0.99, "99"))
                    ],
                    SECONDS_FORMAT,
                ),
            ],
            [
                series(
                    "Order to ack by protocol (p50 / p99 / p99.9)",
                    ack_quantiles(),
                    SECONDS_FORMAT,
                    thresholds=ACK_THRESHOLD,
                ),
                series(
                    "Acknowledged orders/s by protocol",
                    [
                        target(
                            f"sum by (protocol) ({rate('loom_order_to_ack_seconds_count')})", "{{protocol}}"
                        )
                    ],
                    OPS_FORMAT,
                ),
            ],
            [
                series(
                    "Market data subscribers by channel",
                    [target(f"sum by (channel) ({m('loom_md_subscribers')})", "{{channel}}")],
                ),
                series(
                    "Market data fan-out lag (p50 / p99)",
                    [
                        target(
                            f"histogram_quantile({q}, sum by (le) "
                            f"({rate('loom_md_fanout_lag_seconds_bucket')}))",
                            f"p{label}",
                        )
                        for q, label in ((0.5, "50"), (0.99, "99"))
                    ],
                    SECONDS_FORMAT,
                    "From a batch becoming durable to its market data written to a subscriber's socket "
                    "(a rate-limited book subscriber's includes its conflation interval).",
                ),
            ],
            [
                series(
                    "Market data messages encoded and frames delivered/s",
                    [
                        target(f"sum({rate('loom_md_messages_encoded_total')})", "encoded"),
                        target(f"sum({rate('loom_md_deliveries_total')})", "delivered"),
                    ],
                    OPS_FORMAT,
                    "Each message is encoded once and its bytes shared by every subscriber: delivered / "
                    "encoded is the fan-out.",
                ),
                series(
                    "Conflated updates, gap recoveries and slow-consumer disconnects/s",
                    [
                        target(f"sum({rate('loom_md_conflated_updates_total')})", "conflated"),
                        target(
                            f"sum by (channel) ({rate('loom_md_gap_recoveries_total')})", "resync {{channel}}"
                        ),
                        target(
                            f"sum({rate('loom_md_slow_consumer_drops_total')})", "slow-consumer disconnects"
                        ),
                        target(
                            f"sum by (reason) ({rate('loom_md_feed_resyncs_total')})",
                            "marketdata process resync ({{reason}})",
                        ),
                    ],
                    OPS_FORMAT,
                    "Conflated: book updates folded into a later one for rate-limited subscribers. A "
                    "slow consumer (its queue at [market_data] max_queued) is told SLOW_CONSUMER and "
                    "disconnected. A `loom marketdata` process resyncs from the leader after a gap in "
                    "NATS or on a new leader.",
                ),
            ],
        ],
        "Sessions, rate limits and order-to-ack latency per gateway protocol; market data fan-out.",
    )


def risk() -> Board:
    return board(
        "loom-risk",
        "Loom / Risk",
        [
            [
                kill_switch_stat("Venue kill switch", "venue"),
                kill_switch_stat("Symbol kill switches", "symbol"),
                kill_switch_stat("Account kill switches", "account"),
                stat("Halted symbols", [target(f"sum({m('loom_trading_halts')})")]),
                stat("Risk rejects/s", [target(f"sum({rate('loom_risk_rejects_total')})")], OPS_FORMAT),
            ],
            [
                series(
                    "Risk rejects/s by layer",
                    [target(f"sum by (layer) ({rate('loom_risk_rejects_total')})", "{{layer}}")],
                    OPS_FORMAT,
                    "venue: kill switches and halts; order: quantity, notional, price band; "
                    "account: open orders and open notional.",
                ),
                series(
                    "Risk rejects/s by reason",
                    [
                        target(
                            f"sum by (layer, reason) ({rate('loom_risk_rejects_total')})",
                            "{{layer}} {{reason}}",
                        )
                    ],
                    OPS_FORMAT,
                ),
            ],
            [
                series(
                    "Kill switches engaged by scope",
                    [target(f"sum by (scope) ({m('loom_kill_switch_engaged')})", "{{scope}}")],
                ),
                series(
                    "Risk limit changes by scope (1h)",
                    [
                        target(
                            f"sum by (scope) (increase({m('loom_risk_limit_changes_total')}[1h]))",
                            "{{scope}}",
                        )
                    ],
                    description="Limits are set by journaled commands: every change is in the journal.",
                ),
            ],
            [
                series(
                    "Anomaly score by kind (highest account)",
                    [target(f"max by (kind) ({m('loom_surveillance_anomaly_score')})", "{{kind}}")],
                    description="LoomAnomalyDetected fires at the red line.",
                    thresholds=upper(None, THRESHOLDS["anomaly_score"]),
                ),
                series(
                    "Surveillance alerts/s by kind",
                    [target(f"sum by (kind) ({rate('loom_surveillance_alerts_total')})", "{{kind}}")],
                    OPS_FORMAT,
                ),
            ],
            [
                series(
                    "Top anomaly scores by rank",
                    [
                        target(
                            f"max by (kind, rank) ({m('loom_surveillance_top_score')})",
                            "{{kind}} #{{rank}}",
                        )
                    ],
                    description="The top 5 scores per kind (at least 0.5), without identities: "
                    "`loom risk surveillance` names the accounts.",
                ),
                series(
                    "Accounts under surveillance",
                    [target(f"sum({m('loom_surveillance_accounts')})", "accounts")],
                ),
            ],
            *surveillance_rows(),
            *credit_rows(),
        ],
        "Pre-trade risk rejects by layer, kill switches and halts, limit changes, the "
        "surveillance anomaly scores, abuse findings and the analysis backlog, and credit: "
        "balances by asset, transfers, insufficient-balance "
        "rejects, fees and the ledger's conservation check.",
    )


# Grafana Explore on a data source named "tempo", the trace id as its TraceQL query.
TEMPO_EXPLORE = (
    "/explore?left=%7B%22datasource%22:%22tempo%22,%22queries%22:%5B%7B%22query%22:"
    "%22${trace_id}%22,%22queryType%22:%22traceql%22%7D%5D%7D"
)
INFINITY = "yesoreyeram-infinity-datasource"  # Grafana's JSON/REST data source plugin
LOOKUP_DS = {"type": INFINITY, "uid": "${lookup}"}
TRACE_PATH = "/v1/orders/${order_id}/trace"
ORDER_FIELDS = (
    "order_id",
    "account",
    "symbol",
    "side",
    "type",
    "price",
    "qty",
    "filled",
    "status",
    "trace_id",
)

LOOKUP_TEXT = f"""\
Enter an order id above: the tables below are `GET {TRACE_PATH}` (the same JSON as
`loom trace <id>`), the order and its fills, for **any** account.

**How Grafana reads it without a trader's key.** The request goes from Grafana's server, not
from your browser, through the *Loom order lookup* data source (the [Infinity](https://grafana.com/grafana/plugins/{INFINITY}/)
plugin, picked in *Order lookup source* above). That data source holds the exchange's
read-only **ops key** as an encrypted custom header, so neither the key nor a trader's key is
ever in a URL, a panel or the browser:

```yaml
# grafana/provisioning/datasources/loom-lookup.yml
datasources:
  - name: Loom order lookup
    type: {INFINITY}
    jsonData:
      allowedHosts: ["http://exchange:8080"]   # the `Exchange URL` above; Infinity sends the key only there
      httpHeaderName1: X-API-Key
    secureJsonData:
      httpHeaderValue1: $LOOM_OPS_KEY           # the ops role's key: reads any order, cannot trade
```

With the `trace_id` from the order table (click it) or typed in the box above:
[open in Jaeger](${{trace_ui}}/trace/${{trace_id}}) ·
[open in Grafana Explore (Tempo)]({TEMPO_EXPLORE})

Order ids are never metric labels (cardinality); the latency panel below carries trace ids as
exemplars, which lead to the same traces.
"""


def lookup_table(title: str, root: str, columns: tuple[str, ...], links: list[dict]) -> dict:
    """A table of the order lookup's JSON (Infinity's backend parser: the header reaches the
    exchange from Grafana's server)."""
    query = {
        "refId": "A",
        "datasource": LOOKUP_DS,
        "type": "json",
        "source": "url",
        "parser": "backend",
        "format": "table",
        "url": "${loom_url}" + TRACE_PATH,
        "url_options": {"method": "GET", "data": ""},
        "root_selector": root,
        "columns": [{"selector": c, "text": c, "type": "string"} for c in columns],
    }
    trace_link = {"title": "Trace in Jaeger", "url": "${trace_ui}/trace/${__value.raw}", "targetBlank": True}
    return {
        "type": "table",
        "title": title,
        "datasource": LOOKUP_DS,
        "targets": [query],
        "fieldConfig": {
            "defaults": {"unit": SHORT_FORMAT, "thresholds": {"mode": "absolute", "steps": steps()}},
            "overrides": [
                {
                    "matcher": {"id": "byName", "options": "trace_id"},
                    "properties": [{"id": "links", "value": [trace_link]}],
                }
            ],
        },
        "options": {"showHeader": True},
        "links": links,
    }


def order_lookup() -> Board:
    def textbox(name: str, label: str, default: str) -> dict:
        return {
            "name": name,
            "label": label,
            "type": "textbox",
            "query": default,
            "current": {"text": default, "value": default},
        }

    links = [
        link("Trace in Jaeger", "${trace_ui}/trace/${trace_id}"),
        link("Trace in Grafana Explore (Tempo)", TEMPO_EXPLORE),
    ]
    text = {
        "type": "text",
        "title": "Order lookup",
        "options": {"mode": "markdown", "content": LOOKUP_TEXT},
        "fieldConfig": {"defaults": {}, "overrides": []},
        "links": links,
    }
    latency = attr.evolve(
        series(
            "Order to ack p99 by protocol (exemplars link to traces)",
            [ack_quantiles()[1]],
            SECONDS_FORMAT,
            thresholds=ACK_THRESHOLD,
        ),
        links=links,
    )
    order = lookup_table("Order (any account, through the ops key)", "", ORDER_FIELDS, links)
    fills = lookup_table("Fills", "fills", ("trade_id", "price", "qty", "liquidity", "seq", "ts"), [])
    lookup_source = {
        "name": "lookup",
        "label": "Order lookup source",
        "type": "datasource",
        "query": INFINITY,
        "description": "An Infinity data source holding the exchange's ops key (see the text panel).",
    }
    return board(
        "loom-order-lookup",
        "Loom / Order lookup",
        [[text], [order], [fills], [latency]],
        "Follow one order of any account: its journaled history and trace id (read with the "
        "exchange's read-only ops key, held by a Grafana data source), then the trace itself.",
        extra_vars=(
            textbox("order_id", "Order id", ""),
            textbox("trace_id", "Trace id", ""),
            textbox("loom_url", "Exchange URL", "http://127.0.0.1:8080"),
            textbox("trace_ui", "Trace UI (Jaeger)", "http://127.0.0.1:16686"),
            lookup_source,
        ),
    )


def dashboards() -> list[Board]:
    """Every board, in a stable order."""
    return [overview(), matching(), persistence(), gateways(), cluster(), risk(), order_lookup()]
