"""Rule tests for pre-trade credit, settlement and fees (engine/core/settlement.py), one case
at a time. tests/test_match_paths.py collects them again through replay, so each also runs
with a twin engine that replays every command and must reach the same state hash.

X-USD: base X and quote USD both of scale 0, contract size 1, tick 1, lot 1, so a trade's
quote amount is price x qty. Maker fee -10 bps (a rebate), taker fee 20 bps. Market orders
sweep at most 2 ticks from the touch. Every account is funded with 1,000,000 USD and 1,000
X unless a test says otherwise; fees accrue to the account "fees". `Exchange` checks the
engine's invariants (held = the open orders' reservations, conservation) after every
command, and `apply` here checks fees paid = fees received as well.
"""

from __future__ import annotations

import pytest
from conftest import BUY, FOK, IOC, SELL, STP, Exchange, OrderCancelled, OrderRejected, Trade, kinds, of_type

from engine.core.commands import (
    ListAsset,
    ListInstrument,
    SetCreditChecks,
    SetKillSwitch,
    SetRiskLimits,
    Transfer,
)
from engine.core.domain import (
    Asset,
    CancelReason,
    Instrument,
    RejectReason,
    RiskLimits,
    RiskScope,
    TransferKind,
)
from engine.core.events import CreditChecksChanged
from engine.core.invariants import check_fees
from engine.core.settlement import fee

R = RejectReason
C = CancelReason
X = "X-USD"
FUNDS = {"USD": 1_000_000, "X": 1_000}
XUSD = Instrument(
    X, base="X", quote="USD", maker_fee_bps=-10, taker_fee_bps=20, max_sweep_ticks=2, max_qty=10**6
)


def money(accounts=("a", "b", "c"), funds=None, inst=XUSD, credit=True) -> Exchange:
    ex = Exchange(())
    ex.apply(ListAsset(Asset("USD", 0)))
    ex.apply(ListAsset(Asset("X", 0)))
    ex.apply(ListInstrument(inst))
    for account in accounts:
        for asset, amount in (funds or FUNDS).items():
            if amount:
                ex.apply(Transfer(f"{account}-{asset}", account, asset, int(TransferKind.DEPOSIT), amount))
    if credit:
        ex.apply(SetCreditChecks(True, fee_account="fees"))
    return ex


def bal(ex: Exchange, account: str, asset: str) -> tuple[int, int]:
    b = ex.engine.ledger.balance(account, asset)
    return (b.total, b.held) if b is not None else (0, 0)


def order(ex: Exchange, account: str, side: int, price: int, qty: int, **kw) -> list:
    events = ex.order(account, side, price, qty, symbol=X, **kw)
    assert check_fees(ex.engine.ledger) == []
    return events


def test_a_buy_reserves_quote_and_its_largest_fee_a_sell_its_base():
    ex = money()
    order(ex, "a", BUY, 1_000, 10)  # 10,000 USD + 20 bps = 20 USD
    assert bal(ex, "a", "USD") == (1_000_000, 10_020)
    order(ex, "b", SELL, 1_100, 7)
    assert bal(ex, "b", "X") == (1_000, 7)
    assert bal(ex, "b", "USD") == (1_000_000, 0)


def test_an_order_beyond_available_is_refused_insufficient_balance_and_changes_nothing():
    ex = money(funds={"USD": 10_019, "X": 5})
    [rej] = order(ex, "a", BUY, 1_000, 10)  # needs 10,020
    assert type(rej) is OrderRejected and rej.reason == R.INSUFFICIENT_BALANCE
    [rej] = order(ex, "a", SELL, 1_000, 6)
    assert rej.reason == R.INSUFFICIENT_BALANCE
    assert bal(ex, "a", "USD") == (10_019, 0) and bal(ex, "a", "X") == (5, 0)
    assert kinds(order(ex, "a", SELL, 1_000, 5)) == ["OrderAccepted"]  # exactly available


def test_partial_fills_settle_both_sides_with_fees_and_a_maker_rebate():
    ex = money()
    sell_id = order(ex, "a", SELL, 1_000, 10)[0].order_id
    events = order(ex, "b", BUY, 1_000, 4)
    [trade] = of_type(events, Trade)
    # 4,000 USD: the taker pays 20 bps (8), the maker gets a 10 bps rebate (4).
    assert (trade.maker_fee, trade.taker_fee) == (-4, 8)
    assert bal(ex, "b", "USD") == (1_000_000 - 4_008, 0) and bal(ex, "b", "X") == (1_004, 0)
    assert bal(ex, "a", "USD") == (1_000_000 + 4_004, 0) and bal(ex, "a", "X") == (996, 6)
    assert bal(ex, "fees", "USD") == (4, 0)
    assert ex.order_state(sell_id).reserved == 6
    order(ex, "c", BUY, 1_000, 6)  # the rest: the maker's reservation is gone with it
    assert bal(ex, "a", "X") == (990, 0) and bal(ex, "fees", "USD") == (4 + 6, 0)  # 6,000: 12 - 6


def test_fees_round_up_in_the_venues_favour():
    ex = money()
    order(ex, "a", SELL, 7, 3)  # 21 USD: taker 20 bps = 0.042 -> 1; maker -10 bps = -0.021 -> 0
    [trade] = of_type(order(ex, "b", BUY, 7, 3), Trade)
    assert (trade.maker_fee, trade.taker_fee) == (0, 1)
    assert bal(ex, "fees", "USD") == (1, 0)


FEE_RATES = [(-10, 20), (-1, 5), (2, 4), (-3, 7), (0, 7), (0, 0), (-37, 37)]


@pytest.mark.parametrize("maker_bps, taker_bps", FEE_RATES)
def test_the_match_loops_fees_are_settlement_fee(maker_bps, taker_bps):
    """`_match` evaluates each market's `settlement.fee_terms` inline for speed, without the
    multiplication when both rates are +-1/den (the first three cases) and with it otherwise:
    every trade's fees must stay what `settlement.fee` gives (rounding included, rebates
    toward zero)."""
    ex = money(inst=Instrument(X, base="X", quote="USD", maker_fee_bps=maker_bps, taker_fee_bps=taker_bps))
    for price, qty in [(7, 3), (1, 1), (999, 7), (13, 77), (1_000, 1), (3, 333), (143, 7)]:
        order(ex, "a", SELL, price, qty)
        [trade] = of_type(order(ex, "b", BUY, price, qty), Trade)
        amount = price * qty
        expected = (fee(amount, maker_bps), fee(amount, taker_bps))
        assert (trade.maker_fee, trade.taker_fee) == expected, (price, qty)


def test_fee_is_the_exact_ceiling_of_amount_times_bps_for_charges_and_rebates():
    """`fee` (whose terms, `fee_terms`, the match loop evaluates inline) computes
    ceil(amount * bps / 10,000): checked against exact fractions on both sides of every
    multiple, for charges, rebates (negative bps, rounding toward zero) and 0 bps."""
    from fractions import Fraction
    from math import ceil

    for bps in (-10_000, -5_000, -37, -10, -3, -1, 0, 1, 3, 5, 20, 9_999, 10_000):
        for base in (0, 1, 2_000, 10_000, 123_456_789, 10**15):
            for amount in (base - 1, base, base + 1):
                if amount < 0:
                    continue
                assert fee(amount, bps) == ceil(Fraction(amount * bps, 10_000)), (amount, bps)


def test_a_taker_buying_below_its_limit_is_charged_the_trade_price():
    ex = money()
    order(ex, "a", SELL, 900, 5)
    order(ex, "b", BUY, 1_000, 5)  # reserved at 1,000 + fee, pays 4,500 + 9
    assert bal(ex, "b", "USD") == (1_000_000 - 4_509, 0)


def test_amend_up_and_down_adjusts_the_reservation():
    ex = money(funds={"USD": 30_000, "X": 0})
    oid = order(ex, "a", BUY, 1_000, 10)[0].order_id
    assert bal(ex, "a", "USD") == (30_000, 10_020)
    ex.amend("a", oid, new_qty=20)  # up: 20,040
    assert bal(ex, "a", "USD") == (30_000, 20_040)
    [rej] = ex.amend("a", oid, new_qty=30)  # 30,060 > 30,000
    assert type(rej) is OrderRejected and rej.reason == R.INSUFFICIENT_BALANCE
    assert bal(ex, "a", "USD") == (30_000, 20_040)
    ex.amend("a", oid, new_qty=5)  # down, priority kept
    assert bal(ex, "a", "USD") == (30_000, 5_010)
    ex.amend("a", oid, new_price=2_000)  # a new price: 10,000 + 20
    assert bal(ex, "a", "USD") == (30_000, 10_020)


def test_an_amend_that_crosses_pays_as_a_taker_and_reserves_the_rest():
    ex = money()
    order(ex, "b", SELL, 1_010, 3)
    oid = order(ex, "a", BUY, 1_000, 10)[0].order_id
    [trade] = of_type(ex.amend("a", oid, new_price=1_010), Trade)
    assert trade.taker_fee == 7  # 3,030 x 20 bps = 6.06 -> 7
    # The rest reserves per lot: 1,010 + its fee 2.02 rounded up to 3.
    assert bal(ex, "a", "USD") == (1_000_000 - 3_037, 7 * (1_010 + 3))


def test_ioc_remainder_holds_nothing_and_pays_only_its_fills():
    ex = money()
    order(ex, "a", SELL, 1_000, 4)
    events = order(ex, "b", BUY, 1_000, 10, tif=IOC)
    assert of_type(events, OrderCancelled)[0].reason == C.IOC_REMAINDER
    assert bal(ex, "b", "USD") == (1_000_000 - 4_008, 0) and bal(ex, "b", "X") == (1_004, 0)


def test_fok_not_fillable_moves_nothing_fillable_settles():
    ex = money()
    order(ex, "a", SELL, 1_000, 4)
    [_, cxl] = order(ex, "b", BUY, 1_000, 5, tif=FOK)
    assert cxl.reason == C.FOK_NOT_FILLABLE
    assert bal(ex, "b", "USD") == (1_000_000, 0) and bal(ex, "a", "X") == (1_000, 4)
    order(ex, "b", BUY, 1_000, 4, tif=FOK)
    assert bal(ex, "b", "X") == (1_004, 0) and bal(ex, "a", "X") == (996, 0)


def test_market_order_protection_stops_the_sweep_two_ticks_from_the_touch():
    ex = money()
    for price in (100, 101, 102, 103):
        order(ex, "a", SELL, price, 1)
    events = ex.market("b", BUY, 10, symbol=X)
    assert [t.price for t in of_type(events, Trade)] == [100, 101, 102]
    [cxl] = of_type(events, OrderCancelled)
    assert (cxl.reason, cxl.cancelled_qty) == (C.MARKET_PROTECTION, 7)
    assert ex.book(X)["asks"][0][0] == 103
    assert bal(ex, "b", "X") == (1_003, 0)


def test_market_order_protection_in_basis_points_and_without_credit():
    inst = Instrument(X, base="X", quote="USD", max_sweep_bps=100, max_qty=10**6)  # 1% of 1,000 = 10 ticks
    ex = money(inst=inst, credit=False)
    for price in (1_000, 1_010, 1_011):
        order(ex, "a", SELL, price, 1)
    events = ex.market("b", BUY, 5, symbol=X)
    assert [t.price for t in of_type(events, Trade)] == [1_000, 1_010]
    assert of_type(events, OrderCancelled)[0].reason == C.MARKET_PROTECTION
    assert bal(ex, "b", "X") == (1_000, 0)  # without credit checks nothing settles


def test_a_market_buy_must_cover_its_protection_price():
    ex = money(funds={"USD": 1_000, "X": 10})
    order(ex, "a", SELL, 100, 5)
    [rej] = ex.market("b", BUY, 10, symbol=X)  # 10 x 102 + fee > 1,000
    assert rej.reason == R.INSUFFICIENT_BALANCE
    events = ex.market("b", BUY, 9, symbol=X)  # 918 + 2: trades 5, the rest has no liquidity
    assert of_type(events, OrderCancelled)[0].reason == C.NO_LIQUIDITY
    assert bal(ex, "b", "USD") == (1_000 - 501, 0)


def test_a_market_sell_reserves_its_base_and_receives_quote_less_fee():
    ex = money()
    order(ex, "a", BUY, 500, 2)
    ex.market("b", SELL, 2, symbol=X)
    assert bal(ex, "b", "USD") == (1_000_000 + 1_000 - 2, 0) and bal(ex, "b", "X") == (998, 0)
    assert bal(ex, "a", "USD") == (1_000_000 - 1_000 + 1, 0)


def test_self_trade_prevention_releases_the_cancelled_makers_reservation():
    ex = money()
    order(ex, "a", SELL, 1_000, 5)
    events = order(ex, "a", BUY, 1_000, 5, stp=STP.CANCEL_OLDEST)
    assert of_type(events, OrderCancelled)[0].reason == C.SELF_TRADE
    assert bal(ex, "a", "X") == (1_000, 0) and bal(ex, "a", "USD") == (1_000_000, 5_010)


@pytest.mark.parametrize("stp", [STP.CANCEL_NEWEST, STP.CANCEL_BOTH])
def test_a_taker_stopped_by_self_trade_prevention_pays_for_what_it_traded(stp):
    # The match settles the taker once, after its last trade: a stop halfway through counts too.
    ex = money()
    order(ex, "b", SELL, 1_000, 2)
    order(ex, "a", SELL, 1_001, 3)
    events = order(ex, "a", BUY, 1_001, 5, stp=stp)
    assert [t.qty for t in of_type(events, Trade)] == [2]
    assert of_type(events, OrderCancelled)[-1].reason == C.SELF_TRADE
    # 2 X for 2,000 USD and a 20 bps taker fee of 4; the maker b gets its 2 USD rebate.
    assert bal(ex, "a", "USD") == (1_000_000 - 2_004, 0)
    assert bal(ex, "a", "X") == (1_002, 0 if stp == STP.CANCEL_BOTH else 3)
    assert bal(ex, "b", "USD") == (1_000_000 + 2_000 + 2, 0) and bal(ex, "b", "X") == (998, 0)
    assert bal(ex, "fees", "USD") == (4 - 2, 0)


def test_cancel_and_a_kill_switch_release_reservations():
    ex = money()
    oid = order(ex, "a", BUY, 1_000, 10)[0].order_id
    order(ex, "a", SELL, 2_000, 3)
    order(ex, "b", SELL, 2_000, 3)
    ex.cancel("a", oid)
    assert bal(ex, "a", "USD") == (1_000_000, 0)
    order(ex, "a", BUY, 1_000, 1)
    events = ex.apply(SetKillSwitch(int(RiskScope.ACCOUNT), "a", True, "test"))
    assert [e.reason for e in of_type(events, OrderCancelled)] == [C.KILL_SWITCH] * 2
    assert bal(ex, "a", "USD") == (1_000_000, 0) and bal(ex, "a", "X") == (1_000, 0)
    assert bal(ex, "b", "X") == (1_000, 3)


def test_credit_checks_on_reserve_for_resting_orders_or_cancel_them_off_releases():
    ex = money(funds={"USD": 5_000, "X": 0}, credit=False)
    small = order(ex, "a", BUY, 1_000, 4)[0].order_id  # 4,008
    big = order(ex, "a", BUY, 1_000, 1)[0].order_id  # 1,002 more: beyond 5,000
    events = ex.apply(SetCreditChecks(True, fee_account="fees"))
    assert type(events[0]) is CreditChecksChanged and events[0].cancelled == 1
    assert [(e.order_id, e.reason) for e in events[1:]] == [(big, C.INSUFFICIENT_BALANCE)]
    assert bal(ex, "a", "USD") == (5_000, 4_008) and ex.order_state(small).reserved == 4_008
    ex.apply(SetCreditChecks(False, fee_account="fees"))
    assert bal(ex, "a", "USD") == (5_000, 0) and ex.order_state(small).reserved == 0


def test_a_switch_journaled_before_settlement_is_replayed_as_the_no_op_it_was():
    ex = money(credit=False)
    assert ex.apply(SetCreditChecks(True)) == []
    assert not ex.engine.ledger.credit_checks


def test_position_limit_counts_the_base_balance_and_open_buys():
    ex = money(funds={"USD": 1_000_000, "X": 3})
    ex.apply(SetRiskLimits(int(RiskScope.SYMBOL), X, RiskLimits(max_position=6)))
    order(ex, "a", BUY, 1_000, 2)
    [rej] = order(ex, "a", BUY, 1_000, 2)  # 3 + 2 open + 2 > 6
    assert rej.reason == R.POSITION_LIMIT
    assert kinds(order(ex, "a", BUY, 1_000, 1)) == ["OrderAccepted"]
    assert kinds(order(ex, "a", SELL, 2_000, 3)) == ["OrderAccepted"]  # selling is never limited


@pytest.mark.parametrize(("maker", "taker"), [(-30, 20), (10_001, 0), (0, -10_001)])
def test_fees_that_would_drain_the_fee_account_are_refused(maker, taker):
    ex = money(credit=False)
    inst = Instrument("Y-USD", base="X", quote="USD", maker_fee_bps=maker, taker_fee_bps=taker)
    [rej] = ex.apply(ListInstrument(inst))
    assert rej.reason == R.INVALID_FEES
