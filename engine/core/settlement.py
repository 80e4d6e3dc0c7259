"""Pre-trade credit and settlement: what an order reserves, and how a trade moves money.

Part of the deterministic core, applied by the one match loop (engine/core/matcher.py) in
apply and replay alike. Only for instruments that name base and quote assets, and only while
the venue's `credit_checks` is on; an instrument without assets trades without money.

Reservation (an order's `reserved`, in the account's `held`): a sell reserves its open base
quantity (`leaves * contract_size`); a buy reserves, per lot of its open quantity, the quote
amount of one lot at its limit price plus that amount's fee at the larger of the maker and
taker rates. Being linear in lots, a fill of `f` releases exactly `reserved * f / leaves`,
and the fee of any fill at that price or better never exceeds what it releases (a ceiling of
a sum is at most the sum of ceilings). An incoming order pays its fills from its total
directly and reserves what rests: it is admitted when its whole reservation (at its limit,
or a market order's protection price) fits `available`, which covers both.

Fees: `fee = ceil(quote_amount * bps / 10_000)`, in integer units of the quote asset, for
the maker at `maker_fee_bps` and the taker at `taker_fee_bps`. Rounded up: in the venue's
favour for a charge, and for a rebate (negative bps) too, which rounds toward zero. The
buyer pays quote + its fee; the seller receives quote - its fee; the venue fee account
(`Ledger.fee_account`) receives both fees. Listing requires each rate within +-10,000 bps
and maker + taker >= 0, so a trade's two fees never sum below zero: the fee account never
pays out more than the same trade brought in, and a seller's fee never exceeds its quote.
"""

from __future__ import annotations

from engine.core.balances import Balance, FeeTally, Ledger, quote_factor
from engine.core.book import RestingOrder
from engine.core.domain import Asset, Instrument

BPS = 10_000
MAX_CACHED_PRICES = 4_096
BUY = 1
Pair = tuple[None, "Balance | None", "Balance | None"]
TradePair = tuple[None, "Balance", "Balance"]
FeeTerms = tuple[int, int, int]


def fee_terms(bps: int) -> FeeTerms:
    """The fee rule, ceil(amount * bps / BPS), as the terms (mul, up, den) of
    `(amount * mul + up) // den`: the one place that says how a fee rounds. The rate is in
    lowest terms with its sign in `den` (mul >= 0), so that a rate of +-1/den, as most are
    (1, 2, 5, 10, 20... bps), needs no multiplication (`Money.simple`, engine/core/matcher.py).

    For a charge, ceil(x / d) = (x + d - 1) // d; for a rebate, ceil(-x / d) = -floor(x / d)
    = (x - d + 1) // -d; a rate of 0 is (0, 0, 1). Exact for every integer amount."""
    a, b = abs(bps), BPS
    while b:  # Euclid's greatest common divisor (the core imports no math module)
        a, b = b, a % b
    mul, den = abs(bps) // a, BPS // a
    if bps < 0:
        return mul, 1 - den, -den
    return mul, den - 1, den


def fee(amount: int, bps: int) -> int:
    """The fee on a quote amount, rounded up (the venue's favour; a rebate toward zero)."""
    return fee_by(amount, fee_terms(bps))


def fee_by(amount: int, terms: FeeTerms) -> int:
    """`fee` with the rate's terms worked out once (`fee_terms`)."""
    mul, up, den = terms
    return (amount * mul + up) // den


class Money:
    """What credit and settlement need of one instrument with assets, gathered once."""

    __slots__ = (
        "base", "quote", "contract_size", "num", "den", "exact", "unit", "lot", "maker_bps", "taker_bps",
        "maker_mul", "maker_up", "maker_den", "taker_mul", "taker_up", "taker_den", "simple",
        "reserve_terms", "assets", "buy_lots", "fee_cells", "pairs",
    )  # fmt: skip

    def __init__(self, inst: Instrument, base: Asset) -> None:
        self.base = inst.base
        self.quote = inst.quote
        self.contract_size = inst.contract_size
        self.num, self.den = quote_factor(inst.contract_size, base.scale)
        self.exact = self.den == 1  # amount = price * qty * num, no division (the usual case)
        self.unit = self.exact and self.num == 1  # amount = price * qty: no multiplication either
        self.lot = inst.lot_size
        self.maker_bps = inst.maker_fee_bps
        self.taker_bps = inst.taker_fee_bps
        # Each trade's two fees, by `fee_terms` (the match loop evaluates them inline: a call
        # per fee cost more than the fee).
        self.maker_mul, self.maker_up, self.maker_den = fee_terms(inst.maker_fee_bps)
        self.taker_mul, self.taker_up, self.taker_den = fee_terms(inst.taker_fee_bps)
        # The usual case, one test per trade: amount = price x qty and both rates +-1/den,
        # so that a trade's amount and fees need no multiplication.
        self.simple = self.unit and self.maker_mul == 1 and self.taker_mul == 1
        # The fee an order may pay at most, per unit of quote: it may trade as maker or taker.
        # (its terms worked out once, not per price cached)
        self.reserve_terms = fee_terms(max(inst.maker_fee_bps, inst.taker_fee_bps, 0))
        # The asset an order reserves, by side (BUY 1: quote, SELL 2: base): a tuple index
        # is cheaper on the order path than a call.
        self.assets = ("", inst.quote, inst.base)
        # price -> a buy's reservation per lot: derived (never exported or hashed), bounded.
        self.buy_lots: dict[int, int] = {}
        # The fee account's balance in the quote asset and the quote asset's fee tally, found
        # at the first fee (derived: a new Money is made whenever the fee account or the
        # assets change).
        self.fee_cells: tuple[Balance, FeeTally] | None = None
        # account -> (None, quote, base): its two balances, indexed by side (BUY 1: quote,
        # SELL 2: base), for accounts holding both (derived like the above; a Balance is
        # never replaced in the ledger): one probe on the order path instead of two.
        self.pairs: dict[str, TradePair] = {}

    def pair(self, balances: dict[str, dict[str, Balance]], account: str) -> Pair:
        """The account's (None, quote, base) balances, either None when it has none (then
        not cached: creating one would change the ledger)."""
        cached = self.pairs.get(account)
        if cached is not None:
            return cached
        held = balances.get(account) or {}
        quote, base = held.get(self.quote), held.get(self.base)
        if quote is not None and base is not None:
            cached = self.pairs[account] = (None, quote, base)
            return cached
        return (None, quote, base)

    def amount(self, price: int, qty: int) -> int:
        """`quote_amount(price, qty, contract_size, base_scale)`, from its reduced factor."""
        den = self.den
        if den == 1:
            return price * qty * self.num
        return -(-price * qty * self.num // den)

    def asset(self, side: int) -> str:
        """The asset an order of this side reserves."""
        return self.assets[side]

    def reservation(self, side: int, price: int, qty: int) -> int:
        """What an order of `qty` reserves: base for a sell; for a buy at `price`, per lot,
        the lot's quote amount and its largest fee (0 for a buy without a price).
        The matcher's new-order path inlines it (a call is a quarter of its cost there)."""
        if side != BUY:
            return qty * self.contract_size
        reserve = self.buy_lots.get(price)
        if reserve is None:
            reserve = self.buy_per_lot(price)
        return qty // self.lot * reserve

    def buy_per_lot(self, price: int) -> int:
        """A buy's reservation per lot at `price`: the lot's quote amount and its largest
        fee, cached in `buy_lots` (bounded)."""
        amount = self.amount(price, self.lot)
        reserve = amount + fee_by(amount, self.reserve_terms)
        if len(self.buy_lots) >= MAX_CACHED_PRICES:
            self.buy_lots.clear()
        self.buy_lots[price] = reserve
        return reserve


def balance(balances: dict[str, dict[str, Balance]], account: str, asset: str) -> Balance:
    """The account's balance in the asset, created empty when it has none."""
    held = balances.get(account)
    if held is None:
        held = balances[account] = {}
    b = held.get(asset)
    if b is None:
        b = held[asset] = Balance()
    return b


def available(balances: dict[str, dict[str, Balance]], account: str, asset: str) -> int:
    b = balances.get(account, {}).get(asset)
    return b.total - b.held if b is not None else 0


def release(balances: dict[str, dict[str, Balance]], money: Money, order: RestingOrder) -> None:
    """An order leaves the book: its whole reservation goes back to `available`."""
    balances[order.account][money.assets[order.side]].held -= order.reserved
    order.reserved = 0


def funds(balances: dict[str, dict[str, Balance]], money: Money, account: str) -> TradePair:
    """The account's (None, quote, base) balances for a trade, looked up once per match for
    the taker; either may be its first, created then (as a trade would)."""
    pair = money.pairs.get(account)
    if pair is None:
        held = balances.get(account)
        if held is None:
            held = balances[account] = {}
        quote = held.get(money.quote)
        if quote is None:
            quote = held[money.quote] = Balance()
        base = held.get(money.base)
        if base is None:
            base = held[money.base] = Balance()
        pair = money.pairs[account] = (None, quote, base)
    return pair


def fee_cells(ledger: Ledger, money: Money) -> tuple[Balance, FeeTally]:
    """The fee account's balance in the quote asset and the asset's fee tally, created and
    cached at the first fee. Fees accrue per match (engine/core/matcher.py `_match`, which
    settles each trade by the rules above, inlined: a call per trade cost as much as the
    settlement itself)."""
    found = money.fee_cells
    if found is None:
        fee_balance = balance(ledger.balances, ledger.fee_account, money.quote)
        tally = ledger.fee_tallies.get(money.quote)
        if tally is None:
            tally = ledger.fee_tallies[money.quote] = FeeTally()
        found = money.fee_cells = (fee_balance, tally)
    return found
