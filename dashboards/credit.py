"""The Risk board's credit rows: accounts' money (docs/accounts.md). Balances by asset are
read from the ledger at scrape time and never per account; fees are fed once trade
settlement lands (their series sit at 0 until then)."""

from __future__ import annotations

from grafanalib.core import OPS_FORMAT, PERCENT_UNIT_FORMAT, SHORT_FORMAT

from alerts.slo import CONFIG
from dashboards.catalogue_queries import m, rate
from dashboards.panels import (
    GREEN,
    RED,
    THRESHOLDS,
    range_text,
    series,
    stat,
    steps,
    target,
    upper,
    value_text,
)

SURGE = upper(None, THRESHOLDS["insufficient_balance_per_s"])


def credit_rows() -> list[list]:
    breach = CONFIG.trigger("LoomConservationBreach").value  # the alert fires above it
    return [
        [
            stat(
                "Ledger conservation",
                [target(f"max({m('loom_ledger_conservation_breaches')})")],
                description="Problems the conservation check finds at each scrape (balances that do "
                "not sum to deposits - withdrawals + adjustments, negative or over-held balances). "
                "LoomConservationBreach pages on any.",
                thresholds=steps((breach + 1, RED)),
                mappings=[
                    value_text({breach: ("sound", GREEN)}),
                    range_text(breach + 1, 1e9, "BREACH", RED, 1),
                ],
            ),
            series(
                "Insufficient-balance rejects/s by symbol",
                [
                    target(
                        f"sum by (symbol) ({rate('loom_insufficient_balance_rejects_total')})", "{{symbol}}"
                    )
                ],
                OPS_FORMAT,
                "Orders and amends refused with INSUFFICIENT_BALANCE. LoomInsufficientBalanceSurge "
                "fires above the red line for a while.",
                thresholds=SURGE,
            ),
            series(
                "Transfers/s by kind and outcome",
                [target(f"sum by (kind, outcome) ({rate('loom_transfers_total')})", "{{kind}} {{outcome}}")],
                OPS_FORMAT,
                "Deposits, withdrawals and adjustments: applied, repeated (a transfer_id seen before) "
                "or the refusal reason.",
            ),
        ],
        [
            series(
                "Balances by asset (integer units)",
                [target(f"sum by (asset) ({m('loom_asset_balances')})", "{{asset}}")],
                SHORT_FORMAT,
                "The sum of every account's total, in units of 10**-scale of the asset: deposits - "
                "withdrawals + adjustments. Never per account: `loom accounts show` names them.",
            ),
            series(
                "Held share of balances by asset",
                [
                    target(
                        f"sum by (asset) ({m('loom_asset_held_balances')}) / "
                        f"sum by (asset) ({m('loom_asset_balances')})",
                        "{{asset}}",
                    )
                ],
                PERCENT_UNIT_FORMAT,
                "Reserved by open orders, as a share of what accounts own.",
            ),
            series(
                "Fees collected/s by asset (integer units)",
                [target(f"sum by (asset) ({rate('loom_fees_collected_total')})", "{{asset}}")],
                SHORT_FORMAT,
                "Into the venue fee account, net of maker rebates. 0 until trade settlement lands.",
            ),
        ],
    ]
