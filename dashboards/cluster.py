"""The Cluster board: who leads, the lease, replication and fencing, failovers, retention
and the standbys' positions.

Only `loom run --cluster` nodes export these series (a standalone node exports
loom_cluster_role{role="standalone"} alone), so the board is tested against a real
two-node cluster, not the standalone demo (tests/test_dashboards.py,
test_every_cluster_query_returns_data_from_a_real_cluster).
"""

from __future__ import annotations

from grafanalib.core import BYTES_FORMAT, OPS_FORMAT, SECONDS_FORMAT, SHORT_FORMAT

from dashboards.catalogue_queries import m, rate
from dashboards.panels import (
    REPLICATED_SNAPSHOT_AGE,
    ROLE_NAMES,
    THRESHOLDS,
    Board,
    Row,
    board,
    eq,
    quantile_targets,
    role_code,
    series,
    stat,
    steps,
    target,
    upper,
)

REPLICATION_LAG = upper(None, THRESHOLDS["replication_lag_commands"])
STANDBY_REPORT_AGE = upper(None, THRESHOLDS["standby_report_age_s"])


def _role(role: str) -> str:
    return m("loom_cluster_role", eq("role", role))


def standby_rows() -> list:
    """One row per standby (the `node` variable), as the leader reads its reports."""
    return [
        Row("Standby $node", repeat="node"),
        [
            series(
                "Standby lag (commands)",
                [target(f"max by (node) ({m('loom_standby_lag_commands')})", "{{node}}")],
                description="Commands the standby has not applied yet, as it last reported.",
            ),
            series(
                "Standby report age",
                [target(f"max by (node) ({m('loom_standby_report_age_seconds')})", "{{node}}")],
                SECONDS_FORMAT,
                "LoomStandbyReportStale fires past the red line. A standby whose report is older than "
                "[retention] standby_stale_s (60 s by default) no longer holds purges back; if it "
                "returns past a purge it restarts from the replicated snapshot.",
                STANDBY_REPORT_AGE,
            ),
        ],
    ]


def cluster() -> Board:
    return board(
        "loom-cluster",
        "Loom / Cluster",
        [
            [
                stat(
                    "Leaders",
                    [target(f"sum({_role('leader')})")],
                    SHORT_FORMAT,
                    "Nodes that hold the leader lease and accept orders: 1 when healthy, 0 = no leader "
                    "(LoomNoLeader), 2 = two nodes believe they lead (fencing refuses the deposed one).",
                    steps((1, "green"), (2, "red"), base="red"),
                ),
                stat(
                    "Role by instance",
                    [target(role_code(), "{{instance}}")],
                    description="Each node's current role.",
                    mappings=ROLE_NAMES,
                ),
                stat("Standbys", [target(f"sum({_role('standby')})")], SHORT_FORMAT),
                stat(
                    "Lease epoch",
                    [target(f"max({m('loom_lease_epoch')})")],
                    SHORT_FORMAT,
                    "The KV revision of the write that took the lease; it rises with every change of leader.",
                ),
                stat(
                    "Failovers (24h)",
                    [target(f"sum(increase({m('loom_failovers_total')}[24h]))")],
                    SHORT_FORMAT,
                ),
            ],
            [
                series(
                    "Role by node",
                    [
                        target(
                            f"max by (instance, role) ({m('loom_cluster_role')}) > 0", "{{instance}} {{role}}"
                        )
                    ],
                    description="Each node's current role: leader, standby, candidate (catching up "
                    "to promote) or standalone.",
                ),
                series(
                    "Lease renewals/s by node and outcome",
                    [
                        target(
                            f"sum by (instance, outcome) ({rate('loom_lease_renewals_total')})",
                            "{{instance}} {{outcome}}",
                        )
                    ],
                    OPS_FORMAT,
                    "The leader renews every 0.3 s (TTL 1.2 s); failed renewals precede a lost lease.",
                ),
            ],
            [
                series(
                    "Replication lag (commands) by node",
                    [target(f"max by (instance) ({m('loom_replication_lag_commands')})", "{{instance}}")],
                    description="Commands in the replicated journal this node has not applied yet; a "
                    "standby's lag is what it must catch up on before it can promote. "
                    "LoomReplicationLagHigh fires past the red line.",
                    thresholds=REPLICATION_LAG,
                ),
                series(
                    "Replicated append: publish to PubAck (p50 / p99)",
                    quantile_targets("loom_replication_publish_seconds", "p{p} {{instance}}", ("instance",)),
                    SECONDS_FORMAT,
                    "Every acknowledged order waits for its batch to be stored by a JetStream quorum.",
                ),
            ],
            [
                series(
                    "Fencing rejections/s",
                    [target(f"sum by (instance) ({rate('loom_fencing_rejections_total')})", "{{instance}}")],
                    OPS_FORMAT,
                    "Appends refused because another leader wrote to the stream: a deposed leader "
                    "that has not noticed yet. It then demotes itself.",
                ),
                series(
                    "Failovers and leader changes (1h)",
                    [
                        target(
                            f"sum by (instance) (increase({m('loom_failovers_total')}[1h]))",
                            "promotions {{instance}}",
                        ),
                        target(
                            f"sum by (instance) (increase({m('loom_leader_changes_total')}[1h]))",
                            "leader changes seen by {{instance}}",
                        ),
                    ],
                ),
            ],
            [
                series(
                    "Replicated journal: where it begins and the snapshot covering it",
                    [
                        target(
                            f"max({m('loom_stream_first_command_seq')})", "first command seq in the stream"
                        ),
                        target(f"max({m('loom_replicated_snapshot_seq')})", "newest replicated snapshot seq"),
                    ],
                    description="Retention purges the stream behind each replicated snapshot (keeping a "
                    "margin): the first line follows the second. A new node needs a snapshot at or past "
                    "the first command seq - 1.",
                ),
                series(
                    "Replicated journal size",
                    [
                        target(f"max({m('loom_journal_size_bytes')})", "bytes"),
                    ],
                    BYTES_FORMAT,
                    "The stream's bytes (each NATS replica stores as much). Saw-toothed while "
                    "retention works; steadily rising means snapshots are not replicated.",
                ),
            ],
            [
                series(
                    "Replicated snapshot age",
                    [target(f"max({m('loom_replicated_snapshot_age_seconds')})", "age")],
                    SECONDS_FORMAT,
                    "Since the leader last stored a snapshot in the replicated store (R3 Object Store); "
                    "LoomReplicatedSnapshotTooOld fires past the red line.",
                    REPLICATED_SNAPSHOT_AGE,
                ),
                series(
                    "Snapshot uploads and purges (1h)",
                    [
                        target(
                            f"sum by (outcome) (increase({m('loom_replicated_snapshot_uploads_total')}[1h]))",
                            "uploads {{outcome}}",
                        ),
                        target(f"sum(increase({m('loom_stream_purges_total')}[1h]))", "purges"),
                        target(
                            f"sum(increase({m('loom_stream_purged_messages_total')}[1h]))", "messages purged"
                        ),
                        target(
                            f"sum(increase({m('loom_retention_purges_held_back_total')}[1h]))",
                            "purges held back by a standby",
                        ),
                    ],
                ),
            ],
            [
                series(
                    "Standby positions and the purge floor",
                    [
                        target(
                            f"max by (node) ({m('loom_standby_applied_seq')})", "standby {{node}} applied"
                        ),
                        target(f"max({m('loom_retention_purge_floor_seq')})", "purge floor"),
                        target(
                            f"max({m('loom_stream_first_command_seq')})", "first command seq in the stream"
                        ),
                    ],
                    description="As the leader reads them: retention never purges past the slowest live "
                    "standby (the floor), so the stream's first command stays at or below floor + 1.",
                ),
            ],
            *standby_rows(),
        ],
        "Leader lease, replication lag and fencing of a `loom run --cluster` deployment; "
        "retention of the replicated journal.",
    )
