"""Events: what the core did. Immutable records that carry the `seq` and `ts` of the command
that caused them (the causation link). Every accepted order ends with exactly one terminal
event: OrderCancelled or OrderDone (fully filled); a refused command yields OrderRejected.
"""

from __future__ import annotations

import msgspec

from engine.core.domain import RiskLimits


class OrderAccepted(msgspec.Struct, frozen=True, tag="acc", array_like=True, gc=False):
    seq: int
    ts: int
    order_id: int
    account: str
    client_order_id: str
    symbol: str
    side: int
    order_type: int
    tif: int
    price: int
    qty: int


class OrderRejected(msgspec.Struct, frozen=True, tag="rej", array_like=True, gc=False):
    seq: int
    ts: int
    account: str
    client_order_id: str
    symbol: str
    request: int  # RequestKind
    reason: int  # RejectReason
    order_id: int = 0  # the target of a refused cancel/amend, when known


class Trade(msgspec.Struct, frozen=True, tag="trd", array_like=True, gc=False):
    seq: int
    ts: int
    trade_id: int
    symbol: str
    price: int
    qty: int
    aggressor_side: int
    maker_order_id: int
    maker_account: str
    maker_leaves: int  # maker's open quantity after this fill
    taker_order_id: int
    taker_account: str
    taker_leaves: int
    # Settlement (engine/core/settlement.py): each side's fee in units of the quote asset,
    # negative for a rebate; 0 without credit checks or for an instrument without assets.
    maker_fee: int = 0
    taker_fee: int = 0
    settled: bool = False  # balances moved (credit checks on, an instrument with assets)


class OrderCancelled(msgspec.Struct, frozen=True, tag="cxl", array_like=True, gc=False):
    seq: int
    ts: int
    order_id: int
    account: str
    symbol: str
    reason: int  # CancelReason
    cancelled_qty: int  # open quantity removed
    filled_qty: int


class OrderAmended(msgspec.Struct, frozen=True, tag="amd", array_like=True, gc=False):
    seq: int
    ts: int
    order_id: int
    account: str
    client_order_id: str
    symbol: str
    price: int
    qty: int  # new total quantity
    leaves: int
    priority_kept: bool


class OrderDone(msgspec.Struct, frozen=True, tag="done", array_like=True, gc=False):
    """The order filled completely."""

    seq: int
    ts: int
    order_id: int
    account: str
    symbol: str
    filled_qty: int


class InstrumentListed(msgspec.Struct, frozen=True, tag="lst", array_like=True, gc=False):
    seq: int
    ts: int
    symbol: str
    tick_size: int
    lot_size: int
    min_qty: int
    max_qty: int
    base: str = ""
    quote: str = ""
    contract_size: int = 1
    maker_fee_bps: int = 0
    taker_fee_bps: int = 0
    max_sweep_ticks: int = 0
    max_sweep_bps: int = 0


class RiskLimitsChanged(msgspec.Struct, frozen=True, tag="rlim", array_like=True, gc=False):
    seq: int
    ts: int
    scope: int  # RiskScope
    target: str
    limits: RiskLimits  # all zero: the entry was removed
    # The audit trail (engine/core/risk_audit.py): who asked, and the value replaced.
    old_limits: RiskLimits = RiskLimits()
    requested_by: str = ""


class KillSwitchChanged(msgspec.Struct, frozen=True, tag="kill", array_like=True, gc=False):
    """Followed by one OrderCancelled (reason KILL_SWITCH) per resting order it cancelled."""

    seq: int
    ts: int
    scope: int  # RiskScope
    target: str
    engaged: bool
    reason: str
    cancelled: int
    was_engaged: bool = False
    requested_by: str = ""


class TradingHaltChanged(msgspec.Struct, frozen=True, tag="halt", array_like=True, gc=False):
    seq: int
    ts: int
    symbol: str
    halted: bool
    reason: str
    was_halted: bool = False
    requested_by: str = ""


class AssetListed(msgspec.Struct, frozen=True, tag="ast", array_like=True, gc=False):
    seq: int
    ts: int
    asset: str
    scale: int


class TransferApplied(msgspec.Struct, frozen=True, tag="xfr", array_like=True, gc=False):
    """A transfer moved an account's total: the audit record (who, when, old and new
    balance). A repeated transfer_id answers with the original record: `seq`/`ts` are the
    repeat's, `applied_seq`/`applied_ts` the original's, and `repeated` is true."""

    seq: int
    ts: int
    transfer_id: str
    account: str
    asset: str
    kind: int  # TransferKind
    amount: int  # signed for adjustments
    old_total: int
    new_total: int
    held: int
    requested_by: str
    applied_seq: int
    applied_ts: int
    repeated: bool = False


class CreditChecksChanged(msgspec.Struct, frozen=True, tag="cred", array_like=True, gc=False):
    """Followed by one OrderCancelled (reason INSUFFICIENT_BALANCE) per resting order whose
    reservation its account could not cover when the checks were turned on."""

    seq: int
    ts: int
    enabled: bool
    fee_account: str = ""
    cancelled: int = 0


Event = (
    OrderAccepted
    | OrderRejected
    | Trade
    | OrderCancelled
    | OrderAmended
    | OrderDone
    | InstrumentListed
    | RiskLimitsChanged
    | KillSwitchChanged
    | TradingHaltChanged
    | AssetListed
    | TransferApplied
    | CreditChecksChanged
)
