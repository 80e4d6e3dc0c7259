"""Events as JSON objects for REST and WebSocket clients: enum values by name."""

from __future__ import annotations

import msgspec

from engine.core.domain import OrderType, RequestKind, RiskScope, Side, TimeInForce, TransferKind
from engine.core.events import (
    AssetListed,
    CreditChecksChanged,
    InstrumentListed,
    KillSwitchChanged,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderDone,
    OrderRejected,
    RiskLimitsChanged,
    Trade,
    TradingHaltChanged,
    TransferApplied,
)
from engine.reason_texts import cancel_code, reject_code, reject_text

_SIDE = {int(s): s.name.lower() for s in Side}
_TYPE = {int(t): t.name.lower() for t in OrderType}
_TIF = {int(t): t.name.lower() for t in TimeInForce}
_REQUEST = {int(r): r.name.lower() for r in RequestKind}
SCOPE_NAMES = {int(s): s.name.lower() for s in RiskScope}
TRANSFER_KINDS = {int(k): k.name.lower() for k in TransferKind}


def event_json(ev) -> dict:
    kind = type(ev)
    if kind is OrderAccepted:
        return {
            "type": "accepted", "seq": ev.seq, "ts": ev.ts, "order_id": ev.order_id,
            "account": ev.account, "client_order_id": ev.client_order_id, "symbol": ev.symbol,
            "side": _SIDE.get(ev.side), "order_type": _TYPE.get(ev.order_type), "tif": _TIF.get(ev.tif),
            "price": ev.price, "qty": ev.qty,
        }  # fmt: skip
    if kind is Trade:
        return {
            "type": "trade", "seq": ev.seq, "ts": ev.ts, "trade_id": ev.trade_id, "symbol": ev.symbol,
            "price": ev.price, "qty": ev.qty, "aggressor_side": _SIDE.get(ev.aggressor_side),
            "maker_order_id": ev.maker_order_id, "maker_account": ev.maker_account,
            "maker_leaves": ev.maker_leaves, "taker_order_id": ev.taker_order_id,
            "taker_account": ev.taker_account, "taker_leaves": ev.taker_leaves,
            "maker_fee": ev.maker_fee, "taker_fee": ev.taker_fee,
        }  # fmt: skip
    if kind is OrderCancelled:
        return {
            "type": "cancelled", "seq": ev.seq, "ts": ev.ts, "order_id": ev.order_id,
            "account": ev.account, "symbol": ev.symbol, "reason": cancel_code(ev.reason),
            "cancelled_qty": ev.cancelled_qty, "filled_qty": ev.filled_qty,
        }  # fmt: skip
    if kind is OrderDone:
        return {
            "type": "filled", "seq": ev.seq, "ts": ev.ts, "order_id": ev.order_id,
            "account": ev.account, "symbol": ev.symbol, "filled_qty": ev.filled_qty,
        }  # fmt: skip
    if kind is OrderAmended:
        return {
            "type": "amended", "seq": ev.seq, "ts": ev.ts, "order_id": ev.order_id,
            "account": ev.account, "client_order_id": ev.client_order_id, "symbol": ev.symbol,
            "price": ev.price, "qty": ev.qty, "leaves": ev.leaves, "priority_kept": ev.priority_kept,
        }  # fmt: skip
    if kind is OrderRejected:
        return {
            "type": "rejected", "seq": ev.seq, "ts": ev.ts, "account": ev.account,
            "client_order_id": ev.client_order_id, "symbol": ev.symbol,
            "request": _REQUEST.get(ev.request, str(ev.request)), "code": reject_code(ev.reason),
            "message": reject_text(ev.reason), "order_id": ev.order_id,
        }  # fmt: skip
    if kind is InstrumentListed:
        return {"type": "instrument_listed", "seq": ev.seq, "ts": ev.ts, "symbol": ev.symbol}
    if kind is TransferApplied:
        return {
            "type": "transfer_applied", "seq": ev.seq, "ts": ev.ts, "transfer_id": ev.transfer_id,
            "account": ev.account, "asset": ev.asset, "kind": TRANSFER_KINDS.get(ev.kind, str(ev.kind)),
            "amount": ev.amount, "old_total": ev.old_total, "new_total": ev.new_total, "held": ev.held,
            "requested_by": ev.requested_by, "applied_seq": ev.applied_seq, "applied_ts": ev.applied_ts,
            "repeated": ev.repeated,
        }  # fmt: skip
    if kind is AssetListed:
        return {"type": "asset_listed", "seq": ev.seq, "ts": ev.ts, "asset": ev.asset, "scale": ev.scale}
    if kind is CreditChecksChanged:
        return {
            "type": "credit_checks_changed", "seq": ev.seq, "ts": ev.ts, "enabled": ev.enabled,
            "fee_account": ev.fee_account, "cancelled": ev.cancelled,
        }  # fmt: skip
    if kind is RiskLimitsChanged:
        return {
            "type": "risk_limits_changed", "seq": ev.seq, "ts": ev.ts,
            "scope": SCOPE_NAMES.get(ev.scope, str(ev.scope)), "target": ev.target,
            "limits": msgspec.structs.asdict(ev.limits),
        }  # fmt: skip
    if kind is KillSwitchChanged:
        return {
            "type": "kill_switch_changed", "seq": ev.seq, "ts": ev.ts,
            "scope": SCOPE_NAMES.get(ev.scope, str(ev.scope)), "target": ev.target, "engaged": ev.engaged,
            "reason": ev.reason, "cancelled": ev.cancelled,
        }  # fmt: skip
    if kind is TradingHaltChanged:
        return {
            "type": "trading_halt_changed", "seq": ev.seq, "ts": ev.ts, "symbol": ev.symbol,
            "halted": ev.halted, "reason": ev.reason,
        }  # fmt: skip
    return {"type": kind.__name__}
