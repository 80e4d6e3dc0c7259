"""Domain vocabulary of the matching core: sides, order types, time in force, self-trade
prevention, instruments and the reason codes carried by rejections and cancellations.

Enum values follow FIX 4.4 where FIX has the concept, so gateways translate by value.
Money is integer: prices in price units (a multiple of the instrument's tick size) and
quantities in units (a multiple of its lot size). No floats anywhere in the core.
"""

from __future__ import annotations

from enum import IntEnum

import msgspec


class Side(IntEnum):
    BUY = 1  # FIX 54=1
    SELL = 2  # FIX 54=2


class OrderType(IntEnum):
    MARKET = 1  # FIX 40=1
    LIMIT = 2  # FIX 40=2


class TimeInForce(IntEnum):
    GTC = 1  # FIX 59=1
    IOC = 3  # FIX 59=3
    FOK = 4  # FIX 59=4


class SelfTradePrevention(IntEnum):
    """What happens when an incoming order would trade with a resting order of its own account."""

    NONE = 0  # allow the self-trade (surveillance sees it)
    CANCEL_NEWEST = 1  # cancel the incoming order's remainder; the resting order stays
    CANCEL_OLDEST = 2  # cancel the resting order; the incoming order goes on matching
    CANCEL_BOTH = 3  # cancel both


class RejectReason(IntEnum):
    """Why a command was refused. Grouped by range: 1xx order validation, 2xx cancel/amend,
    3xx matching constraints, 4xx risk (later layers), 5xx system."""

    UNKNOWN_SYMBOL = 101
    INVALID_QUANTITY = 102  # zero or negative
    QUANTITY_OFF_LOT = 103  # not a multiple of the lot size
    QUANTITY_BELOW_MIN = 104
    QUANTITY_ABOVE_MAX = 105
    INVALID_PRICE = 106  # zero or negative limit price
    PRICE_OFF_TICK = 107  # not a multiple of the tick size
    MARKET_ORDER_WITH_PRICE = 108
    INVALID_SIDE = 109
    INVALID_ORDER_TYPE = 110
    INVALID_TIME_IN_FORCE = 111
    INVALID_STP_MODE = 112
    POST_ONLY_NOT_LIMIT_GTC = 113  # post-only needs a resting (GTC limit) order
    DUPLICATE_CLIENT_ORDER_ID = 114
    INVALID_ACCOUNT = 115
    INVALID_CLIENT_ORDER_ID = 116
    INSTRUMENT_CONFLICT = 117  # a listed symbol cannot change its spec
    UNKNOWN_ORDER = 201  # no open order with that id (or client id) for this account
    ORDER_NOT_OPEN = 202  # the order existed but is filled or cancelled: too late
    AMEND_NO_CHANGE = 203
    AMEND_QUANTITY_NOT_ABOVE_FILLED = 204  # new total quantity must exceed what has filled
    POST_ONLY_WOULD_CROSS = 301
    # 4xx pre-trade risk (engine/core/risk.py), one decade per layer so a reject names its layer:
    # 40x venue/instrument, 41x order ("fat finger"), 42x account, 43x risk administration.
    KILL_SWITCH_VENUE = 401
    KILL_SWITCH_SYMBOL = 402
    KILL_SWITCH_ACCOUNT = 403
    INSTRUMENT_HALTED = 404
    ORDER_QUANTITY_LIMIT = 411
    ORDER_NOTIONAL_LIMIT = 412
    PRICE_OUTSIDE_BAND = 413
    OPEN_ORDERS_LIMIT = 421
    OPEN_NOTIONAL_LIMIT = 422
    ORDER_RATE_LIMIT = 423  # the account's new orders per second (the sequencer's clock) throttle
    CANCEL_RATIO_LIMIT = 424  # the account's cancels per accepted order, this minute, above the limit
    POSITION_LIMIT = 425  # net position (base balance + open buys) beyond max_position
    INVALID_RISK_SCOPE = 431
    INVALID_RISK_TARGET = 432  # venue scope names no target; symbol scope a listed symbol
    INVALID_RISK_LIMIT = 433  # negative limit
    # 44x credit (engine/core/balances.py): the money an account holds.
    # A withdrawal (or negative adjustment) beyond `available`, or an order (or an amend)
    # whose reservation is (engine/core/settlement.py).
    INSUFFICIENT_BALANCE = 441
    UNKNOWN_COMMAND = 501
    JOURNAL_WRITE_FAILED = 502  # known not to be in the journal: nothing was done, safe to retry
    # The journal's answer was lost (a PubAck timed out, an fdatasync and the cut after it
    # failed): the command may be durable. The node resolves it from the journal; the
    # client looks the order up by client order id, or resends it with the same one.
    OUTCOME_UNKNOWN = 503
    # 6xx assets and transfers (engine/core/balances.py).
    UNKNOWN_ASSET = 601  # a transfer or an instrument names an asset not listed
    INVALID_AMOUNT = 602  # zero, negative (but for adjustments), or beyond MAX_AMOUNT
    INVALID_TRANSFER_KIND = 603
    INVALID_TRANSFER_ID = 604  # empty or longer than MAX_TRANSFER_ID_LEN
    TRANSFER_ID_CONFLICT = 605  # the id was used by a different transfer
    ASSET_CONFLICT = 606  # a listed asset cannot change its scale
    INVALID_ASSET = 607  # bad name or scale
    INEXACT_QUOTE_UNITS = 608  # an instrument whose smallest trade is not a whole quote unit
    INVALID_FEES = 609  # a fee beyond +-10,000 bps, or a maker rebate the taker fee does not cover


class CancelReason(IntEnum):
    """Why an accepted order left the book without filling completely."""

    USER = 1
    IOC_REMAINDER = 2
    FOK_NOT_FILLABLE = 3
    SELF_TRADE = 4
    NO_LIQUIDITY = 5  # market order remainder with nothing left to trade against
    CANCEL_ALL = 6
    ADMIN = 7
    KILL_SWITCH = 8  # engaging a kill switch cancelled the resting orders in its scope
    # A market order's remainder beyond the instrument's maximum sweep from the touch.
    MARKET_PROTECTION = 9
    # Credit checks turned on: a resting order whose reservation the account cannot cover.
    INSUFFICIENT_BALANCE = 10


class RequestKind(IntEnum):
    """Which command an OrderRejected answers, so a gateway picks the right reply."""

    NEW = 1
    CANCEL = 2
    AMEND = 3
    CANCEL_ALL = 4
    LIST_INSTRUMENT = 5
    RISK = 6  # SetRiskLimits, SetKillSwitch, SetTradingHalt
    TRANSFER = 7  # Transfer
    ACCOUNTS_ADMIN = 8  # ListAsset, SetCreditChecks


class TransferKind(IntEnum):
    """What a Transfer does to an account's total: adds, removes, or corrects (signed)."""

    DEPOSIT = 1
    WITHDRAWAL = 2
    ADJUSTMENT = 3


MAX_ACCOUNT_LEN = 64


class RiskScope(IntEnum):
    """What a risk limit or kill switch applies to; the target names it ("" for the venue)."""

    VENUE = 1
    SYMBOL = 2
    ACCOUNT = 3


RISK_LAYERS = {40: "venue", 41: "order", 42: "account", 43: "admin", 44: "credit"}


def risk_layer(reason: int) -> str:
    """The risk layer of a 4xx reject reason ("" for any other reason)."""
    return RISK_LAYERS.get(reason // 10, "") if 400 <= reason < 500 else ""


class RiskLimits(msgspec.Struct, frozen=True, array_like=True):
    """Pre-trade limits; 0 means no limit. Notional is price units x quantity units."""

    max_order_qty: int = 0
    max_order_notional: int = 0
    price_band_bps: int = 0  # around the reference price (last trade, else best price)
    max_open_orders: int = 0  # per account, all symbols
    max_open_notional: int = 0  # gross, per account and symbol, the new order included
    # Throttles (engine/core/throttles.py), on the sequencer's timestamps: deterministic on replay.
    max_orders_per_sec: int = 0  # accepted new orders per account, a burst of this many at most
    max_cancel_ratio: int = 0  # cancels per accepted order, per account in one minute of ts
    # Net position per account and symbol, in quantity units: for a spot instrument the
    # account's base balance (in lots of contract_size) plus its open buy quantity.
    max_position: int = 0

    def is_empty(self) -> bool:
        return not any(msgspec.structs.astuple(self))


MAX_ASSET_SCALE = 18  # 10**18 units per whole asset still fits an int64 amount of one


class Asset(msgspec.Struct, frozen=True):
    """A currency or coin balances are held in. Amounts are integers in units of
    10**-scale of the asset: USD with scale 2 counts cents, BTC with scale 8 satoshis."""

    name: str
    scale: int = 0

    def __post_init__(self) -> None:
        if not 0 < len(self.name) <= 16:
            raise ValueError(f"asset name {self.name!r} must be 1-16 characters")
        if not 0 <= self.scale <= MAX_ASSET_SCALE:
            raise ValueError(f"asset {self.name}: scale must be 0..{MAX_ASSET_SCALE}, not {self.scale}")


class Instrument(msgspec.Struct, frozen=True):
    """A tradable symbol. `tick_size` and `lot_size` are in the integer price and quantity
    units of the wire; orders must be multiples of them and within [min_qty, max_qty].

    `base` and `quote` name the assets traded (both or neither: an instrument without them
    is traded without money, as before accounts existed). One quantity unit is
    `contract_size` units of the base asset; a price is in units of the quote asset per one
    whole base asset (engine/core/balances.py `quote_amount`, docs/accounts.md). New fields
    go at the end with defaults: instruments journaled before them still decode."""

    symbol: str
    tick_size: int = 1
    lot_size: int = 1
    min_qty: int = 1
    max_qty: int = 1_000_000_000
    base: str = ""
    quote: str = ""
    contract_size: int = 1
    # Fees in basis points of a trade's quote amount, charged in the quote asset (engine/core/
    # settlement.py): a negative maker fee is a rebate, which the taker fee must cover.
    maker_fee_bps: int = 0
    taker_fee_bps: int = 0
    # Market-order protection: how far from the touch a market order may trade, in ticks
    # and/or basis points (the tighter applies; 0 = unbounded). Its remainder beyond is
    # cancelled (CancelReason.MARKET_PROTECTION).
    max_sweep_ticks: int = 0
    max_sweep_bps: int = 0

    def __post_init__(self) -> None:
        if not self.symbol:
            raise ValueError("instrument symbol must be non-empty")
        for name in ("tick_size", "lot_size", "min_qty", "max_qty", "contract_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"instrument {self.symbol}: {name} must be positive")
        if self.min_qty > self.max_qty:
            raise ValueError(f"instrument {self.symbol}: min_qty exceeds max_qty")
        if bool(self.base) != bool(self.quote):
            raise ValueError(f"instrument {self.symbol}: name both base and quote assets, or neither")
        if self.base and self.base == self.quote:
            raise ValueError(f"instrument {self.symbol}: base and quote are both {self.base!r}")
        if self.max_sweep_ticks < 0 or self.max_sweep_bps < 0:
            raise ValueError(f"instrument {self.symbol}: max_sweep_ticks and max_sweep_bps must be >= 0")

    @property
    def has_assets(self) -> bool:
        return bool(self.base)
