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
    Dashboard,
    DashboardLink,
    DataLink,
    GridPos,
    Stat,
    Target,
    Template,
    Templating,
    Text,
    Time,
    TimeSeries,
)

from alerts.rules import (  # the SLOs and the disk horizon, defined once
    AVAILABILITY_BUDGET,
    DISK_HORIZON_S,
    ERROR_BUDGET,
    SLO_LATENCY_LE,
)
from dashboards.catalogue_queries import RATE, m, mean, quantile, rate

DS = "${datasource}"
TAGS = ["loom"]
WIDTH = 24
HEIGHT = 8


@attr.s
class ExemplarTarget(Target):
    """A Prometheus target that also asks Grafana for exemplars (trace ids on latency)."""

    def to_json_data(self):
        return {**super().to_json_data(), "exemplar": True}


def target(expr: str, legend: str = "", exemplar: bool = False) -> Target:
    cls = ExemplarTarget if exemplar else Target
    return cls(expr=expr, legendFormat=legend, datasource=DS)


def series(title: str, targets: list[Target], unit: str = SHORT_FORMAT, description: str = "") -> TimeSeries:
    return TimeSeries(
        title=title,
        dataSource=DS,
        targets=targets,
        unit=unit,
        description=description or None,
        tooltipMode="multi",
        legendDisplayMode="table",
        legendCalcs=["lastNotNull", "max"],
    )


def stat(title: str, targets: list[Target], unit: str = SHORT_FORMAT, description: str = "") -> Stat:
    return Stat(
        title=title,
        dataSource=DS,
        targets=targets,
        format=unit,
        reduceCalc="lastNotNull",
        description=description or None,
    )


def layout(rows: list[list]) -> list:
    """Places panels row by row, each row's panels sharing the 24-column width."""
    placed = []
    y = 0
    for row in rows:
        width = WIDTH // len(row)
        height = 4 if all(isinstance(p, Stat) for p in row) else HEIGHT
        for i, panel in enumerate(row):
            placed.append(attr.evolve(panel, gridPos=GridPos(h=height, w=width, x=i * width, y=y)))
        y += height
    return placed


def datasource_variable() -> Template:
    return Template(
        name="datasource", label="Data source", query="prometheus", type="datasource", default=None
    )


def board(uid: str, title: str, rows: list[list], description: str, extra_vars=()) -> Dashboard:
    return Dashboard(
        title=title,
        uid=uid,
        description=description,
        tags=TAGS,
        timezone="utc",
        refresh="10s",
        time=Time("now-30m", "now"),
        graphTooltip=1,
        templating=Templating(list=[datasource_variable(), *extra_vars]),
        links=[DashboardLink(title="Loom dashboards", type="dashboards", tags=TAGS, asDropdown=True)],
        panels=layout(rows),
    ).auto_panel_ids()


def ack_quantiles(by: tuple[str, ...] = ("protocol",)) -> list[Target]:
    return [
        target(quantile(q, "loom_order_to_ack_seconds", by), f"p{label} {{{{protocol}}}}", exemplar=True)
        for q, label in ((0.5, "50"), (0.99, "99"), (0.999, "99.9"))
    ]


DECODE_STAGE = 'stage="decode"'


def slow_ack_ratio(window: str) -> str:
    """Fraction of orders acknowledged later than the SLO's 5 ms over `window`."""
    fast = f'sum(increase({m("loom_order_to_ack_seconds_bucket")}{{le="{SLO_LATENCY_LE}"}}[{window}]))'
    return f"(1 - {fast} / sum(increase({m('loom_order_to_ack_seconds_count')}[{window}])))"


def failed_command_ratio(window: str) -> str:
    """Fraction of commands refused as not durable (journal_write_failed) over `window`;
    0, not empty, while no command has failed."""
    failed = f'sum(increase({m("loom_rejects_total")}{{reason="journal_write_failed"}}[{window}]))'
    total = f"sum(increase({m('loom_commands_total')}[{window}]))"
    return f"(({failed} or vector(0)) / ({total} + ({failed} or vector(0))))"


def slo_row() -> list:
    return [
        stat(
            "Order-to-ack error budget left (30d)",
            [target(f"1 - {slow_ack_ratio('30d')} / {ERROR_BUDGET}")],
            "percentunit",
            "SLO: 99% of orders acknowledged within 5 ms over 30 days. 100% = nothing spent, "
            "below 0 = SLO missed.",
        ),
        series(
            "Error budget burn rate (1 = spent exactly in 30 days)",
            [
                target(f"{slow_ack_ratio(RATE)} / {ERROR_BUDGET}", "order-to-ack"),
                target(f"{failed_command_ratio(RATE)} / {AVAILABILITY_BUDGET}", "availability"),
            ],
            description="Multi-window alerts page at 14.4 (1h and 5m) and ticket at 6 (6h and 30m); "
            "see alerts/rules.py.",
        ),
        stat(
            "Availability error budget left (30d)",
            [target(f"1 - {failed_command_ratio('30d')} / {AVAILABILITY_BUDGET}")],
            "percentunit",
            "SLO: 99.9% of commands made durable over 30 days (journal_write_failed spends it).",
        ),
    ]


def overview() -> Dashboard:
    return board(
        "loom-overview",
        "Loom / Exchange overview",
        [
            [
                stat("Ready", [target(m("loom_ready"))], description="1 when the node accepts orders."),
                stat("Orders/s", [target(f"sum({rate('loom_orders_total')})")], OPS_FORMAT),
                stat("Trades/s", [target(f"sum({rate('loom_trades_total')})")], OPS_FORMAT),
                stat("Rejects/s", [target(f"sum({rate('loom_rejects_total')})")], OPS_FORMAT),
            ],
            [
                series(
                    "Order to ack (p50 / p99 / p99.9) by protocol",
                    ack_quantiles(),
                    SECONDS_FORMAT,
                    "From receiving an order to its durable acknowledgement.",
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
                    "Commands sequenced/s",
                    [target(f"sum({rate('loom_commands_total')})", "commands")],
                    OPS_FORMAT,
                ),
            ],
        ],
        "Order flow and order-to-ack latency of the whole exchange.",
    )


def matching() -> Dashboard:
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
                    [target(f"sum by (symbol) ({m('loom_book_spread')})", "{{symbol}}")],
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


def persistence() -> Dashboard:
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
                stat("Snapshot age", [target(m("loom_snapshot_age_seconds"))], SECONDS_FORMAT),
                stat("Recovery duration", [target(m("loom_recovery_duration_seconds"))], SECONDS_FORMAT),
                stat("Commands replayed at start", [target(m("loom_recovery_replayed_commands"))]),
            ],
            [
                series(
                    "Durability latency: fdatasync or replicated PubAck (p50 / p99 / p99.9)",
                    [
                        target(quantile(q, "loom_journal_fsync_seconds"), f"fdatasync p{label}")
                        for q, label in ((0.5, "50"), (0.99, "99"), (0.999, "99.9"))
                    ]
                    + [
                        target(quantile(q, "loom_replication_publish_seconds"), f"PubAck p{label}")
                        for q, label in ((0.5, "50"), (0.99, "99"), (0.999, "99.9"))
                    ],
                    SECONDS_FORMAT,
                    "What each batch waits for before any of its orders is acknowledged: the local "
                    "fdatasync on a single node, publish to PubAck (a JetStream quorum has it on disk) "
                    "on a cluster leader. Each node shows one of the two.",
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
                            f"predict_linear({m('loom_data_disk_free_bytes')}[1h], {DISK_HORIZON_S})",
                            "predicted in 4 h (last hour's trend) {{instance}}",
                        ),
                    ],
                    BYTES_FORMAT,
                    "Space left on the file system of the data directory (journal and snapshots). "
                    "When it runs out every journal append fails and trading stops. "
                    "LoomDataDiskFillingUp fires when the prediction stays below 0 for 5 minutes.",
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
                    "LoomDataDiskAlmostFull fires below 10% for 5 minutes.",
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
                series("Snapshot age", [target(m("loom_snapshot_age_seconds"), "age")], SECONDS_FORMAT),
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
                    "(LoomReplicatedSnapshotTooOld).",
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


def gateways() -> Dashboard:
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
                    "Unreadable messages refused/s by protocol and code",
                    [
                        target(
                            f"sum by (protocol, code) ({rate('loom_decode_errors_total')})",
                            "{{protocol}} {{code}}",
                        )
                    ],
                    OPS_FORMAT,
                    "Input refused before sequencing (malformed JSON, bad FIX checksum, unknown binary "
                    "frame...): it never reaches the journal. LoomDecodeErrorSpike fires above 1/s.",
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
        ],
        "Sessions, rate limits and order-to-ack latency per gateway protocol.",
    )


def risk() -> Dashboard:
    return board(
        "loom-risk",
        "Loom / Risk",
        [
            [
                stat(
                    "Venue kill switch",
                    [target(f'sum({m("loom_kill_switch_engaged")}{{scope="venue"}})')],
                    description="1 while the venue-wide kill switch refuses every new order.",
                ),
                stat(
                    "Symbol kill switches",
                    [target(f'sum({m("loom_kill_switch_engaged")}{{scope="symbol"}})')],
                ),
                stat(
                    "Account kill switches",
                    [target(f'sum({m("loom_kill_switch_engaged")}{{scope="account"}})')],
                ),
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
                    description="1 = the alert threshold (LoomAnomalyDetected).",
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
        ],
        "Pre-trade risk rejects by layer, kill switches and halts, limit changes and the "
        "surveillance anomaly scores.",
    )


# Grafana Explore on a data source named "tempo", the trace id as its TraceQL query.
TEMPO_EXPLORE = (
    "/explore?left=%7B%22datasource%22:%22tempo%22,%22queries%22:%5B%7B%22query%22:"
    "%22${trace_id}%22,%22queryType%22:%22traceql%22%7D%5D%7D"
)

LOOKUP_TEXT = """\
Enter an order id above, then follow a link:

* [Order history and trace id](${loom_url}/v1/orders/${order_id}/trace) — `GET /v1/orders/${order_id}/trace`
  (same JSON as `loom trace ${order_id}`): the order's events and its `trace_id`.
* With the `trace_id` from that answer in the box above:
  [open in Jaeger](${trace_ui}/trace/${trace_id}) ·
  [open in Grafana Explore (Tempo)](TEMPO_EXPLORE)

Order ids are never metric labels (cardinality); the latency panel below carries trace ids as
exemplars, which lead to the same traces.
""".replace("TEMPO_EXPLORE", TEMPO_EXPLORE)


def order_lookup() -> Dashboard:
    def textbox(name: str, label: str, default: str) -> Template:
        return Template(name=name, label=label, query=default, default=default, type="textbox")

    links = [
        DataLink(
            title="Order trace lookup", linkUrl="${loom_url}/v1/orders/${order_id}/trace", isNewTab=True
        ),
        DataLink(title="Trace in Jaeger / Tempo", linkUrl="${trace_ui}/trace/${trace_id}", isNewTab=True),
    ]
    lookup = attr.evolve(Text(title="Order lookup", content=LOOKUP_TEXT, mode="markdown"), links=links)
    latency = attr.evolve(
        series(
            "Order to ack p99 by protocol (exemplars link to traces)",
            [ack_quantiles()[1]],
            SECONDS_FORMAT,
        ),
        links=links,
    )
    return board(
        "loom-order-lookup",
        "Loom / Order lookup",
        [[lookup], [latency]],
        "Follow one order: its journaled history and trace id, then the trace itself.",
        extra_vars=(
            textbox("order_id", "Order id", ""),
            textbox("trace_id", "Trace id", ""),
            textbox("loom_url", "Exchange URL", "http://127.0.0.1:8080"),
            textbox("trace_ui", "Trace UI (Jaeger)", "http://127.0.0.1:16686"),
        ),
    )


def dashboards() -> list[Dashboard]:
    """Every board, in a stable order."""
    from dashboards.cluster import cluster  # it builds on the helpers above

    return [overview(), matching(), persistence(), gateways(), cluster(), risk(), order_lookup()]
