"""The Cluster board: who leads, the lease, replication and fencing, failovers.

Only `loom run --cluster` nodes export these series (a standalone node exports
loom_cluster_role{role="standalone"} alone), so the board is tested against a real
two-node cluster (tests/test_cluster_dashboard.py), not the standalone demo.
"""

from __future__ import annotations

from grafanalib.core import OPS_FORMAT, SECONDS_FORMAT, SHORT_FORMAT, Dashboard

from dashboards.boards import board, series, stat, target
from dashboards.catalogue_queries import m, quantile, rate


def _role(role: str) -> str:
    return f'{m("loom_cluster_role")}{{role="{role}"}}'


def cluster() -> Dashboard:
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
                    "standby's lag is what it must catch up on before it can promote.",
                ),
                series(
                    "Replicated append: publish to PubAck (p50 / p99)",
                    [
                        target(
                            quantile(q, "loom_replication_publish_seconds", ("instance",)),
                            f"p{label} {{{{instance}}}}",
                        )
                        for q, label in ((0.5, "50"), (0.99, "99"))
                    ],
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
        ],
        "Leader lease, replication lag and fencing of a `loom run --cluster` deployment.",
    )
