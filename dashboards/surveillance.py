"""The Risk board's surveillance rows: abuse findings (wash trades, spoofing, layering, price
moves) by kind and symbol, the learned model's highest z-scores, and how far behind the
off-path analysis runs (its backlog, dropped batches, the age of its last publication).
No panel names an account: `loom risk surveillance` does (admin and ops keys)."""

from __future__ import annotations

from grafanalib.core import SECONDS_FORMAT, SHORT_FORMAT

from dashboards.catalogue_queries import m, rate
from dashboards.panels import ORANGE, RED, THRESHOLDS, series, stat, steps, target, upper

FLOW_Z = upper(None, THRESHOLDS["flow_zscore"])  # LoomFlowAnomaly fires above it (for 5m)


def findings(window: str, by: str) -> str:
    return f"sum by ({by}) (increase({m('loom_surveillance_findings_total')}[{window}]))"


def surveillance_rows() -> list[list]:
    return [
        [
            stat(
                "Abuse findings (1h)",
                [target(f"sum(increase({m('loom_surveillance_findings_total')}[1h]))")],
                description="Wash trades, spoofing, layering and price moves found in the last hour. "
                "LoomAbuseFound fires on any; `loom risk surveillance` names the owners.",
                thresholds=steps((1, ORANGE)),
            ),
            stat(
                "Surveillance backlog",
                [target(f"sum({m('loom_surveillance_backlog_events')})")],
                description="Events waiting for the surveillance worker: it analyses within "
                "surveillance_cpu_share of one core and falls behind under load rather than "
                "compete with matching.",
            ),
            stat(
                "Surveillance dropped batches (1h)",
                [target(f"sum(increase({m('loom_surveillance_dropped_batches_total')}[1h]))")],
                description="Batches never analysed: the backlog reached its bound.",
                thresholds=steps((1, RED)),
            ),
            stat(
                "Surveillance analysis age",
                [target(f"max({m('loom_surveillance_analysis_age_seconds')})")],
                SECONDS_FORMAT,
                "Since the worker last published what scrapes and the report read (about every second).",
                thresholds=steps((5, ORANGE), (30, RED)),
            ),
        ],
        [
            series(
                "Abuse findings by kind (15m)",
                [target(findings("15m", "kind"), "{{kind}}")],
                description="No account in any label: GET /v1/admin/surveillance/report names them.",
            ),
            series(
                "Abuse findings by kind and symbol (1h)",
                [target(findings("1h", "kind, symbol"), "{{kind}} {{symbol}}")],
            ),
        ],
        [
            series(
                "Order-flow z-score by feature (highest account)",
                [target(f"max by (feature) ({m('loom_surveillance_flow_zscore')})", "{{feature}}")],
                description="Against the learned EWMA model of the population, last closed interval. "
                "LoomFlowAnomaly fires at the red line (for 5m).",
                thresholds=FLOW_Z,
            ),
            series(
                "Price-move z-score by symbol",
                [target(f"max by (symbol) ({m('loom_surveillance_price_move_zscore')})", "{{symbol}}")],
                description="A symbol's move over the last closed interval against its own learned model.",
            ),
            series(
                "Surveillance backlog and drops",
                [
                    target(f"sum({m('loom_surveillance_backlog_events')})", "events waiting"),
                    target(f"sum({rate('loom_surveillance_dropped_batches_total')})", "batches dropped/s"),
                ],
                SHORT_FORMAT,
            ),
        ],
    ]
