"""The codes and human messages of reject and cancel reasons, one table for every gateway,
the client, the risk admin and the order traces (not under gateways/: telemetry reads it
too, and telemetry imports no gateway)."""

from __future__ import annotations

from engine.core.domain import CancelReason, RejectReason

R = RejectReason

REJECT_TEXT: dict[int, str] = {
    R.UNKNOWN_SYMBOL: "unknown symbol",
    R.INVALID_QUANTITY: "quantity must be a positive whole number",
    R.QUANTITY_OFF_LOT: "quantity must be a multiple of the instrument's lot size",
    R.QUANTITY_BELOW_MIN: "quantity is below the instrument's minimum",
    R.QUANTITY_ABOVE_MAX: "quantity is above the instrument's maximum",
    R.INVALID_PRICE: "a limit order needs a positive price",
    R.PRICE_OFF_TICK: "price must be a multiple of the instrument's tick size",
    R.MARKET_ORDER_WITH_PRICE: "a market order must not carry a price",
    R.INVALID_SIDE: "side must be buy or sell",
    R.INVALID_ORDER_TYPE: "type must be limit or market",
    R.INVALID_TIME_IN_FORCE: "time in force must be gtc, ioc or fok",
    R.INVALID_STP_MODE: "unknown self-trade prevention mode",
    R.POST_ONLY_NOT_LIMIT_GTC: "post-only needs a GTC limit order",
    R.DUPLICATE_CLIENT_ORDER_ID: "this client order id was already used by the account",
    R.INVALID_ACCOUNT: "invalid account",
    R.INVALID_CLIENT_ORDER_ID: "client order id is too long (64 characters at most)",
    R.INSTRUMENT_CONFLICT: "the symbol is already listed with a different specification",
    R.UNKNOWN_ORDER: "no open order with that id for this account",
    R.ORDER_NOT_OPEN: "the order is no longer open (filled, cancelled or renamed)",
    R.AMEND_NO_CHANGE: "the amendment changes nothing",
    R.AMEND_QUANTITY_NOT_ABOVE_FILLED: "the new quantity must exceed what has already filled",
    R.POST_ONLY_WOULD_CROSS: "post-only order would trade on arrival",
    R.KILL_SWITCH_VENUE: "the venue-wide kill switch is engaged: no new orders or amends",
    R.KILL_SWITCH_SYMBOL: "the kill switch for this symbol is engaged: no new orders or amends",
    R.KILL_SWITCH_ACCOUNT: "the kill switch for this account is engaged: no new orders or amends",
    R.INSTRUMENT_HALTED: "trading in this symbol is halted",
    R.ORDER_QUANTITY_LIMIT: "quantity exceeds the risk limit for one order",
    R.ORDER_NOTIONAL_LIMIT: "notional (price x quantity) exceeds the risk limit for one order",
    R.PRICE_OUTSIDE_BAND: "price is outside the allowed band around the reference price",
    R.OPEN_ORDERS_LIMIT: "the account has as many open orders as its risk limit allows",
    R.OPEN_NOTIONAL_LIMIT: "the account's open notional in this symbol would exceed its risk limit",
    R.ORDER_RATE_LIMIT: "the account placed new orders faster than its risk limit (orders per second)",
    R.CANCEL_RATIO_LIMIT: "the account cancelled more per order this minute than its risk limit allows",
    R.INVALID_RISK_SCOPE: "risk scope must be venue, symbol or account",
    R.INVALID_RISK_TARGET: "risk target: empty for the venue, a listed symbol, or an account name",
    R.INVALID_RISK_LIMIT: "risk limits must be zero (no limit) or positive",
    R.INSUFFICIENT_BALANCE: (
        "the amount, or what the order must reserve (a buy: quote plus its largest fee; a sell: "
        "base), exceeds the account's available balance (total less held)"
    ),
    R.POSITION_LIMIT: "the net position in this symbol (base balance plus open buys) would exceed its limit",
    R.UNKNOWN_ASSET: "unknown asset (not listed in [[assets]])",
    R.INVALID_AMOUNT: "amount must be a positive whole number (an adjustment: non-zero) within 2**63-1",
    R.INVALID_TRANSFER_KIND: "kind must be deposit, withdrawal or adjustment",
    R.INVALID_TRANSFER_ID: "transfer_id must be 1-64 characters",
    R.TRANSFER_ID_CONFLICT: "this transfer_id was already used for a different transfer",
    R.ASSET_CONFLICT: "the asset is already listed with a different scale",
    R.INVALID_ASSET: "invalid asset",
    R.INEXACT_QUOTE_UNITS: "the instrument's smallest trade is not a whole unit of its quote asset",
    R.INVALID_FEES: "fees must be within +-10,000 bps, and a maker rebate no larger than the taker fee",
    R.UNKNOWN_COMMAND: "unknown command",
    R.JOURNAL_WRITE_FAILED: "the order could not be made durable; nothing was done, retry later",
    R.OUTCOME_UNKNOWN: (
        "the outcome is unknown: the journal did not answer, so this may have been done; look the "
        "order up with GET /v1/orders/by-client-id/{client_order_id}, or resend it with the same "
        "client order id (a duplicate is never placed twice)"
    ),
}


def reject_code(reason: int) -> str:
    try:
        return RejectReason(reason).name
    except ValueError:
        return f"REASON_{reason}"


# The REST status of an order rejection (422 unless listed): the answer and the span's
# http.response.status_code both come from here.
_REJECT_STATUS = {
    RejectReason.DUPLICATE_CLIENT_ORDER_ID: 409,
    RejectReason.ORDER_NOT_OPEN: 409,
    RejectReason.UNKNOWN_ORDER: 404,
    RejectReason.TRANSFER_ID_CONFLICT: 409,
    RejectReason.JOURNAL_WRITE_FAILED: 503,
    RejectReason.OUTCOME_UNKNOWN: 504,  # not a refusal: the command may be durable
}


def reject_status(reason: int) -> int:
    return _REJECT_STATUS.get(reason, 422)


def reject_text(reason: int) -> str:
    return REJECT_TEXT.get(reason, reject_code(reason).lower().replace("_", " "))


def cancel_code(reason: int) -> str:
    try:
        return CancelReason(reason).name
    except ValueError:
        return f"REASON_{reason}"
