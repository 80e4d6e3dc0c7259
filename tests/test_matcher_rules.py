"""Unit tests, one rule at a time, for the matching core (engine/core/matcher.py).

BTC-USD: tick 5, lot 10, min 10, max 100_000. ETH-USD: tick 1, lot 1. SOL-USD: tick 1,
lot 5, min 50, max 1_000. Accounts are short names; client order ids are generated ("c1",
"c2", ...) unless a test names them.
"""

from __future__ import annotations

import pytest
from conftest import (
    BTC,
    BUY,
    ETH,
    FOK,
    GTC,
    IOC,
    LIMIT,
    MARKET,
    SELL,
    SOL,
    STP,
    Exchange,
    OrderAccepted,
    OrderCancelled,
    OrderDone,
    OrderRejected,
    Trade,
    assert_consistent,
    fingerprint,
    kinds,
    of_type,
    open_ids,
    resting,
)

from engine.core.commands import Amend, Cancel, CancelAll, NewOrder
from engine.core.domain import CancelReason, RejectReason, RequestKind
from engine.core.events import OrderAmended
from engine.core.matcher import SequenceError
from engine.core.state import decode_state, encode_state, export_state, restore_state, state_hash


def trades_of(events: list) -> list[tuple[int, int, int]]:
    """(maker_order_id, price, qty) of each trade, in order."""
    return [(t.maker_order_id, t.price, t.qty) for t in of_type(events, Trade)]


def assert_rejected(events: list, reason: RejectReason, request: RequestKind) -> OrderRejected:
    assert kinds(events) == ["OrderRejected"], events
    rej = events[0]
    assert rej.reason == reason, f"reason {RejectReason(rej.reason).name} != {reason.name}"
    assert rej.request == request
    return rej


# ---------------------------------------------------------------------------------------
# Acceptance and resting
# ---------------------------------------------------------------------------------------


def test_accepted_order_event_fields_and_resting_state(ex):
    events = ex.buy("alice", 100, 30, clid="a1")
    assert events == [
        OrderAccepted(ex.seq, ex.ts, 1, "alice", "a1", BTC, BUY, LIMIT, GTC, 100, 30),
    ]
    assert ex.book() == {"bids": [(100, [(1, 30)])], "asks": []}
    o = ex.order_state(1)
    assert (o.qty, o.leaves, o.filled, o.seq, o.account, o.client_order_id) == (30, 30, 0, 1, "alice", "a1")
    assert open_ids(ex.engine, "alice") == {1}


def test_order_ids_and_trade_ids_are_sequential(ex):
    assert ex.place("m", SELL, 100, 10) == 1
    assert ex.place("m", SELL, 105, 10) == 2
    events = ex.buy("t", 105, 20)
    assert events[0].order_id == 3
    assert [t.trade_id for t in of_type(events, Trade)] == [1, 2]
    events = ex.sell("m", 110, 10)
    assert events[0].order_id == 4


def test_events_carry_command_seq_and_ts():
    ex = Exchange()
    cmd = NewOrder("a", "x", BTC, BUY, LIMIT, 100, 10, seq=41, ts=123_456)
    events = ex.engine.apply(cmd)
    assert [(e.seq, e.ts) for e in events] == [(41, 123_456)]
    cmd = NewOrder("b", "y", BTC, SELL, LIMIT, 100, 10, seq=42, ts=7)
    events = ex.engine.apply(cmd)
    assert kinds(events) == ["OrderAccepted", "Trade", "OrderDone", "OrderDone"]
    assert {(e.seq, e.ts) for e in events} == {(42, 7)}
    assert_consistent(ex.engine)


# ---------------------------------------------------------------------------------------
# Price-time priority
# ---------------------------------------------------------------------------------------


def test_same_price_makers_fill_in_arrival_order(ex):
    first = ex.place("m1", SELL, 100, 30)
    second = ex.place("m2", SELL, 100, 30)
    events = ex.buy("t", 100, 40)
    taker = events[0].order_id
    trades = of_type(events, Trade)
    assert [(t.maker_order_id, t.maker_account, t.price, t.qty) for t in trades] == [
        (first, "m1", 100, 30),
        (second, "m2", 100, 10),
    ]
    assert [(t.maker_leaves, t.taker_leaves) for t in trades] == [(0, 10), (20, 0)]
    assert all(t.taker_order_id == taker and t.taker_account == "t" for t in trades)
    assert all(t.aggressor_side == BUY for t in trades)
    assert kinds(events) == ["OrderAccepted", "Trade", "OrderDone", "Trade", "OrderDone"]
    done = of_type(events, OrderDone)
    assert [(d.order_id, d.account, d.filled_qty) for d in done] == [(first, "m1", 30), (taker, "t", 40)]
    assert ex.book() == {"bids": [], "asks": [(100, [(second, 20)])]}
    assert ex.order_state(second).filled == 10


def test_better_price_fills_before_earlier_worse_price(ex):
    worse = ex.place("m1", SELL, 105, 20)
    better = ex.place("m2", SELL, 100, 20)
    events = ex.buy("t", 105, 30)
    assert trades_of(events) == [(better, 100, 20), (worse, 105, 10)]
    assert ex.book()["asks"] == [(105, [(worse, 10)])]


def test_sell_taker_hits_highest_bid_first(ex):
    low = ex.place("m1", BUY, 95, 20)
    high = ex.place("m2", BUY, 100, 20)
    mid = ex.place("m3", BUY, 100, 20)
    events = ex.sell("t", 95, 50)
    trades = of_type(events, Trade)
    assert [(t.maker_order_id, t.price, t.qty) for t in trades] == [
        (high, 100, 20),
        (mid, 100, 20),
        (low, 95, 10),
    ]
    assert all(t.aggressor_side == SELL for t in trades)
    assert ex.book()["bids"] == [(95, [(low, 10)])]


def test_trade_price_is_the_makers_price_not_the_takers_limit(ex):
    ex.place("m", SELL, 100, 20)
    events = ex.buy("t", 150, 20)
    assert [t.price for t in of_type(events, Trade)] == [100]
    ex.place("m", BUY, 90, 20)
    events = ex.sell("t", 50, 20)
    assert [t.price for t in of_type(events, Trade)] == [90]


def test_limit_does_not_trade_through_its_price(ex):
    ex.place("m", SELL, 105, 20)
    events = ex.buy("t", 100, 20)
    assert kinds(events) == ["OrderAccepted"]
    assert ex.book() == {"bids": [(100, [(events[0].order_id, 20)])], "asks": [(105, [(1, 20)])]}


# ---------------------------------------------------------------------------------------
# Limit, market, IOC, FOK
# ---------------------------------------------------------------------------------------


def test_limit_partial_fill_then_rests(ex):
    maker = ex.place("m", SELL, 100, 30)
    events = ex.buy("t", 100, 50)
    taker = events[0].order_id
    assert kinds(events) == ["OrderAccepted", "Trade", "OrderDone"]
    trade = events[1]
    assert (trade.maker_order_id, trade.price, trade.qty, trade.maker_leaves, trade.taker_leaves) == (
        maker,
        100,
        30,
        0,
        20,
    )
    assert events[2].order_id == maker
    assert ex.book() == {"bids": [(100, [(taker, 20)])], "asks": []}
    o = ex.order_state(taker)
    assert (o.qty, o.leaves, o.filled) == (50, 20, 30)
    # The remainder is a normal resting order: cancelling it reports what had filled.
    events = ex.cancel("t", taker)
    assert events == [OrderCancelled(ex.seq, ex.ts, taker, "t", BTC, CancelReason.USER, 20, 30)]


def test_market_order_sweeps_levels_and_never_rests(ex):
    a = ex.place("m1", SELL, 100, 20)
    b = ex.place("m2", SELL, 105, 30)
    c = ex.place("m3", SELL, 110, 40)
    events = ex.market("t", BUY, 60)
    acc = events[0]
    assert (acc.order_type, acc.price, acc.qty) == (MARKET, 0, 60)
    assert trades_of(events) == [(a, 100, 20), (b, 105, 30), (c, 110, 10)]
    assert [t.taker_leaves for t in of_type(events, Trade)] == [40, 10, 0]
    assert events[-1] == OrderDone(ex.seq, ex.ts, acc.order_id, "t", BTC, 60)
    assert ex.book() == {"bids": [], "asks": [(110, [(c, 30)])]}


def test_market_order_remainder_cancelled_no_liquidity(ex):
    ex.place("m", SELL, 100, 20)
    ex.place("m", SELL, 200, 30)
    events = ex.market("t", BUY, 80)
    oid = events[0].order_id
    assert sum(t.qty for t in of_type(events, Trade)) == 50
    assert events[-1] == OrderCancelled(ex.seq, ex.ts, oid, "t", BTC, CancelReason.NO_LIQUIDITY, 30, 50)
    assert ex.book() == {"bids": [], "asks": []}
    assert open_ids(ex.engine, "t") == set()


@pytest.mark.parametrize("side", [BUY, SELL])
def test_market_order_on_empty_book_cancelled_no_liquidity(ex, side):
    events = ex.market("t", side, 30)
    assert kinds(events) == ["OrderAccepted", "OrderCancelled"]
    cxl = events[1]
    assert (cxl.order_id, cxl.reason, cxl.cancelled_qty, cxl.filled_qty) == (
        events[0].order_id,
        CancelReason.NO_LIQUIDITY,
        30,
        0,
    )
    assert ex.book() == {"bids": [], "asks": []}


def test_market_sell_ignores_own_side_liquidity(ex):
    ex.place("m", SELL, 100, 20)  # same side as the market sell: not liquidity for it
    events = ex.market("t", SELL, 20)
    assert of_type(events, Trade) == []
    assert events[-1].reason == CancelReason.NO_LIQUIDITY


def test_ioc_remainder_cancelled(ex):
    a = ex.place("m", SELL, 100, 30)
    b = ex.place("m", SELL, 105, 20)
    events = ex.buy("t", 100, 100, tif=IOC)
    oid = events[0].order_id
    assert trades_of(events) == [(a, 100, 30)]
    assert events[-1] == OrderCancelled(ex.seq, ex.ts, oid, "t", BTC, CancelReason.IOC_REMAINDER, 70, 30)
    assert ex.book() == {"bids": [], "asks": [(105, [(b, 20)])]}


def test_ioc_without_cross_is_cancelled_whole(ex):
    ex.place("m", SELL, 105, 30)
    events = ex.buy("t", 100, 40, tif=IOC)
    assert kinds(events) == ["OrderAccepted", "OrderCancelled"]
    assert (events[1].reason, events[1].cancelled_qty, events[1].filled_qty) == (
        CancelReason.IOC_REMAINDER,
        40,
        0,
    )
    assert ex.book()["bids"] == []


def test_ioc_fully_filled_is_done(ex):
    ex.place("m", SELL, 100, 30)
    events = ex.buy("t", 100, 30, tif=IOC)
    assert kinds(events) == ["OrderAccepted", "Trade", "OrderDone", "OrderDone"]
    assert of_type(events, OrderCancelled) == []


def test_fok_fills_fully_across_levels(ex):
    a = ex.place("m1", SELL, 100, 30)
    b = ex.place("m2", SELL, 105, 30)
    events = ex.buy("t", 105, 50, tif=FOK)
    assert trades_of(events) == [(a, 100, 30), (b, 105, 20)]
    assert events[-1] == OrderDone(ex.seq, ex.ts, events[0].order_id, "t", BTC, 50)
    assert ex.book() == {"bids": [], "asks": [(105, [(b, 10)])]}


def test_fok_exactly_fillable_at_its_limit(ex):
    ex.place("m1", SELL, 100, 30)
    ex.place("m2", SELL, 105, 20)
    ex.place("m3", SELL, 110, 50)
    events = ex.buy("t", 105, 50, tif=FOK)
    assert sum(t.qty for t in of_type(events, Trade)) == 50
    assert isinstance(events[-1], OrderDone)
    assert ex.book()["asks"] == [(110, [(3, 50)])]


def _fok_no_change(ex: Exchange, **order) -> list:
    """Apply an order that must be killed by FOK; assert nothing but the order id and the
    client id registry moved."""
    books_before = {s: ex.book(s) for s in ex.engine.books}
    resting_before = {
        oid: (o.qty, o.leaves, o.filled, o.seq, o.price) for oid, o in resting(ex.engine).items()
    }
    next_trade = ex.engine.next_trade_id
    events = ex.order(**order)
    assert kinds(events) == ["OrderAccepted", "OrderCancelled"], events
    cxl = events[1]
    assert (cxl.order_id, cxl.reason, cxl.cancelled_qty, cxl.filled_qty) == (
        events[0].order_id,
        CancelReason.FOK_NOT_FILLABLE,
        order["qty"],
        0,
    )
    assert {s: ex.book(s) for s in ex.engine.books} == books_before
    assert {
        oid: (o.qty, o.leaves, o.filled, o.seq, o.price) for oid, o in resting(ex.engine).items()
    } == resting_before
    assert ex.engine.next_trade_id == next_trade
    return events


def test_fok_not_fillable_cancelled_without_state_change(ex):
    ex.place("m1", SELL, 100, 30)
    ex.place("m2", SELL, 110, 30)
    _fok_no_change(ex, account="t", side=BUY, price=105, qty=50, tif=FOK)


def test_fok_not_fillable_leaves_same_state_as_twin_that_saw_a_non_crossing_fok():
    """Twin check: a killed FOK leaves the engine in exactly the state of one whose FOK never
    crossed at all (both consume one order id and register the client id)."""
    a, b = Exchange(), Exchange()
    for x in (a, b):
        x.place("m1", SELL, 100, 30)
        x.place("m2", SELL, 110, 30)
    a.buy("t", 105, 50, tif=FOK, clid="k")  # crosses the 100 level but cannot fill 50
    b.buy("t", 95, 50, tif=FOK, clid="k")  # does not cross at all
    assert state_hash(a.engine) == state_hash(b.engine)


def test_fok_market_not_fillable(ex):
    ex.place("m1", SELL, 100, 30)
    _fok_no_change(ex, account="t", side=BUY, price=0, qty=40, order_type=MARKET, tif=FOK)
    events = ex.market("t", BUY, 30, tif=FOK)
    assert isinstance(events[-1], OrderDone)


def test_fok_without_any_cross_is_not_fillable(ex):
    ex.place("m1", SELL, 110, 30)
    events = ex.buy("t", 100, 10, tif=FOK)
    assert events[-1].reason == CancelReason.FOK_NOT_FILLABLE
    assert ex.book()["bids"] == []


def test_fok_market_on_empty_book_is_fok_not_fillable(ex):
    """The same outcome gets the same reason whether the book is thin or empty."""
    events = ex.market("t", BUY, 30, tif=FOK)
    assert kinds(events) == ["OrderAccepted", "OrderCancelled"]
    assert (events[-1].reason, events[-1].cancelled_qty) == (CancelReason.FOK_NOT_FILLABLE, 30)


def test_fok_blocked_by_own_order_under_cancel_newest(ex):
    ex.place("t", SELL, 100, 30)
    ex.place("m", SELL, 100, 30)
    _fok_no_change(ex, account="t", side=BUY, price=100, qty=30, tif=FOK, stp=STP.CANCEL_NEWEST)


def test_fok_cancel_oldest_does_not_count_own_orders_and_kills_without_cancelling_them(ex):
    own = ex.place("t", SELL, 100, 30)
    other = ex.place("m", SELL, 100, 30)
    # 60 rest at 100 but only 30 belong to others: not fillable; own order must survive.
    _fok_no_change(ex, account="t", side=BUY, price=100, qty=40, tif=FOK, stp=STP.CANCEL_OLDEST)
    assert ex.order_state(own).leaves == 30
    # 30 is fillable: own order cancelled for self-trade, the rest trades.
    events = ex.buy("t", 100, 30, tif=FOK, stp=STP.CANCEL_OLDEST)
    assert kinds(events) == ["OrderAccepted", "OrderCancelled", "Trade", "OrderDone", "OrderDone"]
    assert (events[1].order_id, events[1].reason) == (own, CancelReason.SELF_TRADE)
    assert trades_of(events) == [(other, 100, 30)]


def test_fok_stp_none_counts_own_orders(ex):
    own = ex.place("t", SELL, 100, 20)
    other = ex.place("m", SELL, 100, 20)
    events = ex.buy("t", 100, 40, tif=FOK, stp=STP.NONE)
    assert trades_of(events) == [(own, 100, 20), (other, 100, 20)]
    assert isinstance(events[-1], OrderDone)


# ---------------------------------------------------------------------------------------
# Post-only
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("side", "price"), [(BUY, 100), (BUY, 120), (SELL, 95), (SELL, 50)])
def test_post_only_that_would_cross_is_rejected_without_state_change(ex, side, price):
    ex.place("m", SELL, 100, 30)
    ex.place("m", BUY, 95, 30)
    before = fingerprint(ex.engine)
    events = ex.order("p", side, price, 20, post_only=True, clid="po")
    rej = assert_rejected(events, RejectReason.POST_ONLY_WOULD_CROSS, RequestKind.NEW)
    assert (rej.account, rej.client_order_id, rej.symbol, rej.order_id) == ("p", "po", BTC, 0)
    assert fingerprint(ex.engine) == before
    # The refused client id was never accepted: it may be used again.
    assert kinds(ex.order("p", side, 200 if side == SELL else 50, 20, clid="po")) == ["OrderAccepted"]


@pytest.mark.parametrize(("side", "price"), [(BUY, 95), (BUY, 90), (SELL, 100), (SELL, 120)])
def test_post_only_that_does_not_cross_rests(ex, side, price):
    ex.place("m", SELL, 100, 30)
    ex.place("m", BUY, 95, 30)
    events = ex.order("p", side, price, 20, post_only=True)
    assert kinds(events) == ["OrderAccepted"]
    o = ex.order_state(events[0].order_id)
    assert (o.price, o.leaves, o.post_only) == (price, 20, True)


def test_post_only_on_empty_book_rests(ex):
    oid = ex.place("p", BUY, 100, 20, post_only=True)
    assert ex.book()["bids"] == [(100, [(oid, 20)])]


# ---------------------------------------------------------------------------------------
# Self-trade prevention
# ---------------------------------------------------------------------------------------


def test_stp_cancel_newest_cancels_taker_and_keeps_maker(ex):
    maker = ex.place("a", SELL, 100, 30)
    events = ex.buy("a", 100, 50, stp=STP.CANCEL_NEWEST)
    oid = events[0].order_id
    assert events[1:] == [OrderCancelled(ex.seq, ex.ts, oid, "a", BTC, CancelReason.SELF_TRADE, 50, 0)]
    assert ex.book() == {"bids": [], "asks": [(100, [(maker, 30)])]}


def test_stp_cancel_newest_after_partial_fill_against_others(ex):
    other = ex.place("b", SELL, 100, 20)
    own = ex.place("a", SELL, 100, 30)
    later = ex.place("c", SELL, 100, 30)
    events = ex.buy("a", 100, 50, stp=STP.CANCEL_NEWEST)
    oid = events[0].order_id
    assert trades_of(events) == [(other, 100, 20)]
    assert events[-1] == OrderCancelled(ex.seq, ex.ts, oid, "a", BTC, CancelReason.SELF_TRADE, 30, 20)
    assert ex.book()["asks"] == [(100, [(own, 30), (later, 30)])]
    assert ex.book()["bids"] == []


def test_stp_cancel_oldest_cancels_maker_and_taker_continues(ex):
    own = ex.place("a", SELL, 100, 30)
    other = ex.place("b", SELL, 100, 30)
    events = ex.buy("a", 100, 40, stp=STP.CANCEL_OLDEST)
    oid = events[0].order_id
    assert kinds(events) == ["OrderAccepted", "OrderCancelled", "Trade", "OrderDone"]
    assert events[1] == OrderCancelled(ex.seq, ex.ts, own, "a", BTC, CancelReason.SELF_TRADE, 30, 0)
    t = events[2]
    assert (t.maker_order_id, t.maker_account, t.taker_order_id, t.price, t.qty) == (other, "b", oid, 100, 30)
    assert (t.maker_leaves, t.taker_leaves) == (0, 10)
    # GTC remainder rests; the cancelled own order is gone from book and index.
    assert ex.book() == {"bids": [(100, [(oid, 10)])], "asks": []}
    assert open_ids(ex.engine, "a") == {oid}


def test_stp_cancel_oldest_moves_on_to_next_level(ex):
    own = ex.place("a", SELL, 100, 30)
    other = ex.place("b", SELL, 105, 30)
    events = ex.buy("a", 105, 30, stp=STP.CANCEL_OLDEST)
    assert (events[1].order_id, events[1].reason) == (own, CancelReason.SELF_TRADE)
    assert trades_of(events) == [(other, 105, 30)]
    assert isinstance(events[-1], OrderDone)
    assert ex.book() == {"bids": [], "asks": []}


def test_stp_cancel_oldest_reports_partially_filled_maker(ex):
    own = ex.place("a", SELL, 100, 30)
    ex.buy("z", 100, 10)
    events = ex.buy("a", 100, 10, stp=STP.CANCEL_OLDEST)
    assert events[1] == OrderCancelled(ex.seq, ex.ts, own, "a", BTC, CancelReason.SELF_TRADE, 20, 10)
    assert ex.book()["bids"] == [(100, [(events[0].order_id, 10)])]


def test_stp_cancel_both(ex):
    own = ex.place("a", SELL, 100, 30)
    other = ex.place("b", SELL, 100, 30)
    events = ex.buy("a", 100, 40, stp=STP.CANCEL_BOTH)
    oid = events[0].order_id
    assert events[1:] == [
        OrderCancelled(ex.seq, ex.ts, own, "a", BTC, CancelReason.SELF_TRADE, 30, 0),
        OrderCancelled(ex.seq, ex.ts, oid, "a", BTC, CancelReason.SELF_TRADE, 40, 0),
    ]
    assert ex.book() == {"bids": [], "asks": [(100, [(other, 30)])]}


def test_stp_none_allows_self_trade(ex):
    maker = ex.place("a", SELL, 100, 30)
    events = ex.buy("a", 100, 30, stp=STP.NONE)
    oid = events[0].order_id
    t = of_type(events, Trade)
    assert len(t) == 1
    assert (t[0].maker_order_id, t[0].maker_account, t[0].taker_order_id, t[0].taker_account) == (
        maker,
        "a",
        oid,
        "a",
    )
    assert {d.order_id for d in of_type(events, OrderDone)} == {maker, oid}
    assert ex.book() == {"bids": [], "asks": []}


def test_stp_mode_is_the_takers_not_the_makers(ex):
    maker = ex.place("a", SELL, 100, 30, stp=STP.NONE)
    events = ex.buy("a", 100, 30, stp=STP.CANCEL_NEWEST)
    assert events[-1].reason == CancelReason.SELF_TRADE
    assert ex.order_state(maker).leaves == 30


@pytest.mark.parametrize("stp", list(STP))
def test_stp_does_not_apply_between_accounts(ex, stp):
    maker = ex.place("a", SELL, 100, 30)
    events = ex.buy("b", 100, 30, stp=stp)
    assert trades_of(events) == [(maker, 100, 30)]


# ---------------------------------------------------------------------------------------
# Client order ids
# ---------------------------------------------------------------------------------------


def test_duplicate_client_order_id_same_account_rejected_other_account_fine(ex):
    ex.place("a", BUY, 100, 10, clid="x")
    before = fingerprint(ex.engine)
    events = ex.buy("a", 95, 10, clid="x")
    rej = assert_rejected(events, RejectReason.DUPLICATE_CLIENT_ORDER_ID, RequestKind.NEW)
    assert (rej.account, rej.client_order_id, rej.symbol) == ("a", "x", BTC)
    assert fingerprint(ex.engine) == before
    assert kinds(ex.buy("b", 95, 10, clid="x")) == ["OrderAccepted"]


def test_client_order_id_stays_taken_after_order_is_gone(ex):
    oid = ex.place("a", BUY, 100, 10, clid="x")
    ex.cancel("a", oid)
    assert_rejected(ex.buy("a", 100, 10, clid="x"), RejectReason.DUPLICATE_CLIENT_ORDER_ID, RequestKind.NEW)
    ex.buy("a", 100, 10, clid="ioc", tif=IOC)  # cancelled immediately, but was accepted
    assert_rejected(ex.buy("a", 100, 10, clid="ioc"), RejectReason.DUPLICATE_CLIENT_ORDER_ID, RequestKind.NEW)


def test_client_order_id_of_a_finished_order_is_free_again_past_the_window(ex, window5):
    oid = ex.place("a", BUY, 100, 10, clid="x")
    ex.cancel("a", oid)
    for _ in range(3):  # still within the newest 5 order ids: taken
        ex.place("a", BUY, 90, 10)
        assert_rejected(
            ex.buy("a", 100, 10, clid="x"), RejectReason.DUPLICATE_CLIENT_ORDER_ID, RequestKind.NEW
        )
    ex.place("a", BUY, 90, 10)
    ex.place("a", BUY, 90, 10)  # the order named "x" is now 6 orders back
    # A cancel by that client id no longer finds it, and the id may name a new order.
    assert_rejected(ex.cancel("a", client_order_id="x"), RejectReason.UNKNOWN_ORDER, RequestKind.CANCEL)
    events = ex.buy("a", 100, 10, clid="x")
    assert kinds(events) == ["OrderAccepted"] and events[0].order_id != oid
    assert_rejected(ex.buy("a", 100, 10, clid="x"), RejectReason.DUPLICATE_CLIENT_ORDER_ID, RequestKind.NEW)
    assert kinds(ex.cancel("a", client_order_id="x")) == ["OrderCancelled"]


def test_client_order_id_of_an_open_order_stays_taken_past_the_window(ex, window5):
    ex.place("a", BUY, 100, 10, clid="x")
    ex.amend("a", client_order_id="x", new_client_order_id="y")
    for _ in range(12):
        ex.place("a", BUY, 90, 10)
    for clid in ("x", "y"):  # the old client id of an amended open order too
        assert_rejected(
            ex.buy("a", 100, 10, clid=clid), RejectReason.DUPLICATE_CLIENT_ORDER_ID, RequestKind.NEW
        )
    assert_rejected(
        ex.amend("a", client_order_id="y", new_qty=20, new_client_order_id="x"),
        RejectReason.DUPLICATE_CLIENT_ORDER_ID,
        RequestKind.AMEND,
    )


def test_client_order_id_table_stays_bounded_and_pruning_never_changes_the_state_hash(ex, window5):
    """The table grew by every order ever accepted (issue 16's soak: 185 MB in 3 minutes).
    Now it holds a window and a pass's worth of finished orders' ids, and a node restored from
    a snapshot (no dead ids) hashes and decides exactly like the live one (dead ids held)."""
    keep = ex.place("a", BUY, 50, 10, clid="keep")
    for i in range(40):
        ex.buy("a", 100, 10, clid=f"i{i}", tif=IOC)  # finished at once: nothing rests
        assert len(ex.engine.accounts["a"].by_clid) <= 5 + 2 + 1  # the window, a pass's worth, "keep"
        restored = restore_state(decode_state(encode_state(export_state(ex.engine))))
        assert state_hash(restored) == state_hash(ex.engine)
    assert ex.engine.accounts["a"].live_clid("keep", ex.engine.next_order_id) == keep
    twin = Exchange(engine=restore_state(decode_state(encode_state(export_state(ex.engine)))))
    for clid in ("keep", "i39", "i30", "i0", "i1"):
        assert kinds(ex.buy("a", 100, 10, clid=clid, tif=IOC)) == kinds(
            twin.buy("a", 100, 10, clid=clid, tif=IOC)
        )
    assert state_hash(twin.engine) == state_hash(ex.engine)


def test_a_deep_book_of_old_orders_keeps_its_ids_and_never_stops_the_pruning(ex, window5):
    """Each pass looks at a bounded slice (4 passes' worth: 8 ids here); open orders' ids are
    set aside, so resting orders older than the window neither lose their ids nor pin the dead
    ones (engine/core/client_ids.py)."""
    resting = [ex.place("a", BUY, 50, 10, clid=f"r{i}") for i in range(30)]
    for i in range(200):
        ex.buy("a", 100, 10, clid=f"i{i}", tif=IOC)
        assert len(ex.engine.accounts["a"].by_clid) <= 30 + 5 + 8 + 2
    acct = ex.engine.accounts["a"]
    assert all(acct.live_clid(f"r{i}", ex.engine.next_order_id) == oid for i, oid in enumerate(resting))
    assert_rejected(ex.buy("a", 50, 10, clid="r0"), RejectReason.DUPLICATE_CLIENT_ORDER_ID, RequestKind.NEW)


def test_empty_client_order_id_may_repeat(ex):
    a = ex.place("a", BUY, 100, 10, clid="")
    b = ex.place("a", BUY, 100, 10, clid="")
    assert a != b


def test_client_order_id_length_limit(ex):
    assert kinds(ex.buy("a", 100, 10, clid="x" * 64)) == ["OrderAccepted"]
    assert_rejected(
        ex.buy("a", 100, 10, clid="y" * 65), RejectReason.INVALID_CLIENT_ORDER_ID, RequestKind.NEW
    )


# ---------------------------------------------------------------------------------------
# Cancel
# ---------------------------------------------------------------------------------------


def test_cancel_by_order_id(ex):
    oid = ex.place("a", BUY, 100, 30)
    keep = ex.place("a", BUY, 100, 20)
    events = ex.cancel("a", order_id=oid)
    assert events == [OrderCancelled(ex.seq, ex.ts, oid, "a", BTC, CancelReason.USER, 30, 0)]
    assert ex.book()["bids"] == [(100, [(keep, 20)])]
    assert open_ids(ex.engine, "a") == {keep}


def test_cancel_by_client_order_id(ex):
    oid = ex.place("a", SELL, 100, 30, clid="mine")
    ex.buy("b", 100, 10)
    events = ex.cancel("a", client_order_id="mine")
    assert events == [OrderCancelled(ex.seq, ex.ts, oid, "a", BTC, CancelReason.USER, 20, 10)]
    assert ex.book() == {"bids": [], "asks": []}


def test_cancel_last_order_of_a_level_removes_the_level(ex):
    best = ex.place("a", BUY, 105, 10)
    ex.place("a", BUY, 100, 10)
    ex.cancel("a", best)
    assert ex.engine.books[BTC].bids.best == 100
    assert [p for p, _ in ex.book()["bids"]] == [100]


@pytest.mark.parametrize(
    ("cmd", "reason"),
    [
        (Cancel("a", order_id=999), RejectReason.UNKNOWN_ORDER),
        (Cancel("a", client_order_id="nope"), RejectReason.UNKNOWN_ORDER),
        (Cancel("a"), RejectReason.UNKNOWN_ORDER),  # neither id given
        (Cancel("b", order_id=1), RejectReason.UNKNOWN_ORDER),  # another account's order
        (Cancel("b", client_order_id="a1"), RejectReason.UNKNOWN_ORDER),
        (Cancel("nobody", order_id=1), RejectReason.UNKNOWN_ORDER),  # account never seen
        (Cancel("", order_id=1), RejectReason.UNKNOWN_ORDER),
        (Cancel("a", order_id=-1), RejectReason.UNKNOWN_ORDER),
    ],
)
def test_cancel_rejections_change_nothing(ex, cmd, reason):
    ex.place("a", BUY, 100, 10, clid="a1")
    ex.place("b", SELL, 200, 10, clid="b1")
    before = fingerprint(ex.engine)
    events = ex.apply(cmd)
    rej = assert_rejected(events, reason, RequestKind.CANCEL)
    assert (rej.account, rej.order_id, rej.client_order_id) == (
        cmd.account,
        cmd.order_id,
        cmd.client_order_id,
    )
    assert fingerprint(ex.engine) == before


def test_cancel_of_filled_order(ex):
    oid = ex.place("a", SELL, 100, 10, clid="f")
    ex.buy("b", 100, 10)
    before = fingerprint(ex.engine)
    rej = assert_rejected(
        ex.cancel("a", client_order_id="f"), RejectReason.ORDER_NOT_OPEN, RequestKind.CANCEL
    )
    assert rej.client_order_id == "f"
    # By exchange id the order is simply not open (ids are not remembered per account).
    assert_rejected(ex.cancel("a", order_id=oid), RejectReason.UNKNOWN_ORDER, RequestKind.CANCEL)
    assert fingerprint(ex.engine) == before


def test_cancel_twice(ex):
    oid = ex.place("a", SELL, 100, 10, clid="c")
    assert kinds(ex.cancel("a", oid)) == ["OrderCancelled"]
    assert_rejected(ex.cancel("a", oid), RejectReason.UNKNOWN_ORDER, RequestKind.CANCEL)
    assert_rejected(ex.cancel("a", client_order_id="c"), RejectReason.ORDER_NOT_OPEN, RequestKind.CANCEL)


def test_cancel_order_id_wins_over_client_order_id(ex):
    first = ex.place("a", BUY, 100, 10, clid="one")
    second = ex.place("a", BUY, 100, 10, clid="two")
    events = ex.cancel("a", order_id=second, client_order_id="one")
    assert events[0].order_id == second
    assert open_ids(ex.engine, "a") == {first}


# ---------------------------------------------------------------------------------------
# Amend
# ---------------------------------------------------------------------------------------


def test_amend_quantity_down_keeps_priority(ex):
    a = ex.place("a", BUY, 100, 50, clid="a1")
    b = ex.place("b", BUY, 100, 50)
    events = ex.amend("a", a, new_qty=30)
    assert events == [OrderAmended(ex.seq, ex.ts, a, "a", "a1", BTC, 100, 30, 30, True)]
    assert ex.book()["bids"] == [(100, [(a, 30), (b, 50)])]
    assert ex.order_state(a).seq == 1  # queue position untouched
    events = ex.sell("t", 100, 40)
    assert trades_of(events) == [(a, 100, 30), (b, 100, 10)]


def test_amend_quantity_down_after_partial_fill(ex):
    a = ex.place("a", SELL, 100, 50)
    b = ex.place("b", SELL, 100, 50)
    ex.buy("t", 100, 20)
    events = ex.amend("a", a, new_qty=40)
    amended = events[0]
    assert (amended.qty, amended.leaves, amended.priority_kept) == (40, 20, True)
    o = ex.order_state(a)
    assert (o.qty, o.leaves, o.filled) == (40, 20, 20)
    assert trades_of(ex.buy("t", 100, 30)) == [(a, 100, 20), (b, 100, 10)]


def test_amend_quantity_up_loses_priority(ex):
    a = ex.place("a", BUY, 100, 50)
    b = ex.place("b", BUY, 100, 50)
    events = ex.amend("a", a, new_qty=60)
    assert kinds(events) == ["OrderAmended"]
    assert (events[0].qty, events[0].leaves, events[0].priority_kept) == (60, 60, False)
    assert ex.book()["bids"] == [(100, [(b, 50), (a, 60)])]
    assert ex.order_state(a).seq == ex.seq  # requeued by the amend
    assert trades_of(ex.sell("t", 100, 60)) == [(b, 100, 50), (a, 100, 10)]


def test_amend_quantity_up_after_partial_fill(ex):
    a = ex.place("a", BUY, 100, 50)
    ex.sell("t", 100, 20)
    events = ex.amend("a", a, new_qty=70)
    assert (events[0].qty, events[0].leaves, events[0].priority_kept) == (70, 50, False)
    o = ex.order_state(a)
    assert (o.qty, o.leaves, o.filled) == (70, 50, 20)


def test_amend_price_loses_priority_even_when_moved_back(ex):
    a = ex.place("a", BUY, 100, 50)
    b = ex.place("b", BUY, 100, 50)
    e1 = ex.amend("a", a, new_price=95)
    assert (e1[0].price, e1[0].priority_kept) == (95, False)
    assert ex.book()["bids"] == [(100, [(b, 50)]), (95, [(a, 50)])]
    e2 = ex.amend("a", a, new_price=100)
    assert e2[0].priority_kept is False
    assert ex.book()["bids"] == [(100, [(b, 50), (a, 50)])]


def test_amend_to_better_price_fills_first(ex):
    a = ex.place("a", SELL, 105, 20)
    b = ex.place("b", SELL, 100, 20)
    ex.amend("a", a, new_price=95)
    assert trades_of(ex.buy("t", 105, 30)) == [(a, 95, 20), (b, 100, 10)]


def test_amend_price_to_cross_trades_immediately(ex):
    maker = ex.place("m", SELL, 110, 30)
    deeper = ex.place("m", SELL, 120, 30)
    a = ex.place("a", BUY, 100, 50, clid="a1")
    events = ex.amend("a", a, new_price=110)
    assert kinds(events) == ["OrderAmended", "Trade", "OrderDone"]
    assert events[0] == OrderAmended(ex.seq, ex.ts, a, "a", "a1", BTC, 110, 50, 50, False)
    t = events[1]
    assert (t.maker_order_id, t.taker_order_id, t.price, t.qty, t.aggressor_side) == (maker, a, 110, 30, BUY)
    assert (t.maker_leaves, t.taker_leaves) == (0, 20)
    assert events[2].order_id == maker
    assert ex.book() == {"bids": [(110, [(a, 20)])], "asks": [(120, [(deeper, 30)])]}
    o = ex.order_state(a)
    assert (o.qty, o.leaves, o.filled, o.price) == (50, 20, 30, 110)
    # A second amend that crosses completely finishes the order: filled counts both trades.
    events = ex.amend("a", a, new_price=120)
    assert kinds(events) == ["OrderAmended", "Trade", "OrderDone"]
    assert (events[0].qty, events[0].leaves) == (50, 20)
    assert trades_of(events) == [(deeper, 120, 20)]
    assert events[-1] == OrderDone(ex.seq, ex.ts, a, "a", BTC, 50)
    assert open_ids(ex.engine, "a") == set()
    assert ex.book() == {"bids": [], "asks": [(120, [(deeper, 10)])]}


def test_amend_cross_into_own_order_is_stopped_by_stp(ex):
    own = ex.place("a", SELL, 110, 30)
    a = ex.place("a", BUY, 100, 50)  # default stp CANCEL_NEWEST
    events = ex.amend("a", a, new_price=110)
    assert kinds(events) == ["OrderAmended", "OrderCancelled"]
    assert events[1] == OrderCancelled(ex.seq, ex.ts, a, "a", BTC, CancelReason.SELF_TRADE, 50, 0)
    assert ex.book() == {"bids": [], "asks": [(110, [(own, 30)])]}
    assert open_ids(ex.engine, "a") == {own}


def test_amend_post_only_to_cross_is_rejected(ex):
    ex.place("m", SELL, 110, 30)
    p = ex.place("p", BUY, 100, 20, post_only=True)
    before = fingerprint(ex.engine)
    rej = assert_rejected(
        ex.amend("p", p, new_price=110), RejectReason.POST_ONLY_WOULD_CROSS, RequestKind.AMEND
    )
    assert (rej.order_id, rej.symbol) == (p, BTC)
    assert fingerprint(ex.engine) == before
    # A non-crossing reprice of a post-only order is fine.
    assert ex.amend("p", p, new_price=105)[0].priority_kept is False


@pytest.mark.parametrize("new_qty", [20, 10])
def test_amend_quantity_not_above_filled_rejected(ex, new_qty):
    a = ex.place("a", SELL, 100, 50)
    ex.buy("t", 100, 20)
    before = fingerprint(ex.engine)
    assert_rejected(
        ex.amend("a", a, new_qty=new_qty), RejectReason.AMEND_QUANTITY_NOT_ABOVE_FILLED, RequestKind.AMEND
    )
    assert fingerprint(ex.engine) == before


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"new_qty": 50},
        {"new_price": 100},
        {"new_qty": 50, "new_price": 100},
        {"new_client_order_id": "a1"},
    ],
)
def test_amend_no_change_rejected(ex, change):
    a = ex.place("a", BUY, 100, 50, clid="a1")
    before = fingerprint(ex.engine)
    assert_rejected(ex.amend("a", a, **change), RejectReason.AMEND_NO_CHANGE, RequestKind.AMEND)
    assert fingerprint(ex.engine) == before


def test_amend_new_client_order_id_then_cancel_by_it(ex):
    a = ex.place("a", BUY, 100, 50, clid="old")
    b = ex.place("b", BUY, 100, 50)
    events = ex.amend("a", client_order_id="old", new_client_order_id="new")
    assert events == [OrderAmended(ex.seq, ex.ts, a, "a", "new", BTC, 100, 50, 50, True)]
    assert ex.order_state(a).client_order_id == "new"
    assert ex.book()["bids"] == [(100, [(a, 50), (b, 50)])]  # a rename keeps priority
    events = ex.cancel("a", client_order_id="new")
    assert [(e.order_id, e.reason) for e in events] == [(a, CancelReason.USER)]
    # Both the old and the new id stay taken for new orders of this account.
    assert_rejected(ex.buy("a", 95, 10, clid="new"), RejectReason.DUPLICATE_CLIENT_ORDER_ID, RequestKind.NEW)
    assert_rejected(ex.buy("a", 95, 10, clid="old"), RejectReason.DUPLICATE_CLIENT_ORDER_ID, RequestKind.NEW)


def test_replaced_client_order_id_no_longer_names_the_order(ex):
    """As FIX's OrigClOrdID: after a rename only the new id cancels or amends the order."""
    a = ex.place("a", BUY, 100, 50, clid="old")
    ex.amend("a", client_order_id="old", new_client_order_id="new")
    before = fingerprint(ex.engine)
    rej = assert_rejected(
        ex.cancel("a", client_order_id="old"), RejectReason.ORDER_NOT_OPEN, RequestKind.CANCEL
    )
    assert rej.client_order_id == "old"
    assert_rejected(
        ex.amend("a", client_order_id="old", new_qty=40), RejectReason.ORDER_NOT_OPEN, RequestKind.AMEND
    )
    assert fingerprint(ex.engine) == before
    assert ex.cancel("a", client_order_id="new")[0].order_id == a


def test_amend_rename_with_price_change(ex):
    a = ex.place("a", BUY, 100, 50, clid="old")
    events = ex.amend("a", a, new_price=95, new_client_order_id="new")
    assert (events[0].client_order_id, events[0].price, events[0].priority_kept) == ("new", 95, False)
    assert ex.cancel("a", client_order_id="new")[0].order_id == a


def test_amend_rename_to_taken_client_order_id_rejected(ex):
    a = ex.place("a", BUY, 100, 50, clid="x")
    ex.place("a", BUY, 95, 50, clid="y")
    before = fingerprint(ex.engine)
    assert_rejected(
        ex.amend("a", a, new_client_order_id="y"), RejectReason.DUPLICATE_CLIENT_ORDER_ID, RequestKind.AMEND
    )
    assert_rejected(
        ex.amend("a", a, new_client_order_id="z" * 65),
        RejectReason.INVALID_CLIENT_ORDER_ID,
        RequestKind.AMEND,
    )
    assert fingerprint(ex.engine) == before


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"new_qty": -10}, RejectReason.INVALID_QUANTITY),
        ({"new_price": -5}, RejectReason.INVALID_PRICE),
        ({"new_qty": 25}, RejectReason.QUANTITY_OFF_LOT),
        ({"new_qty": 100_010}, RejectReason.QUANTITY_ABOVE_MAX),
        ({"new_price": 102}, RejectReason.PRICE_OFF_TICK),
    ],
)
def test_amend_invalid_values_rejected(ex, change, reason):
    a = ex.place("a", BUY, 100, 50)
    before = fingerprint(ex.engine)
    rej = assert_rejected(ex.amend("a", a, **change), reason, RequestKind.AMEND)
    assert rej.order_id == a
    assert fingerprint(ex.engine) == before


def test_amend_below_min_rejected(ex):
    a = ex.place("a", BUY, 100, 100, symbol=SOL)
    before = fingerprint(ex.engine)
    assert_rejected(ex.amend("a", a, new_qty=45), RejectReason.QUANTITY_BELOW_MIN, RequestKind.AMEND)
    assert fingerprint(ex.engine) == before


def test_amend_target_rejections(ex):
    a = ex.place("a", SELL, 100, 10, clid="f")
    ex.buy("b", 100, 10)  # fills a
    b = ex.place("b", BUY, 90, 10)
    before = fingerprint(ex.engine)
    assert_rejected(
        ex.amend("a", client_order_id="f", new_qty=20), RejectReason.ORDER_NOT_OPEN, RequestKind.AMEND
    )
    assert_rejected(ex.amend("a", a, new_qty=20), RejectReason.UNKNOWN_ORDER, RequestKind.AMEND)
    assert_rejected(ex.amend("a", b, new_qty=20), RejectReason.UNKNOWN_ORDER, RequestKind.AMEND)  # b's order
    assert_rejected(ex.amend("zed", 12345, new_qty=20), RejectReason.UNKNOWN_ORDER, RequestKind.AMEND)
    assert_rejected(ex.amend("a", new_qty=20), RejectReason.UNKNOWN_ORDER, RequestKind.AMEND)
    assert fingerprint(ex.engine) == before


# ---------------------------------------------------------------------------------------
# Cancel all
# ---------------------------------------------------------------------------------------


def _spread_orders(ex: Exchange) -> dict[str, int]:
    ids = {}
    ids["a_btc_bid"] = ex.place("a", BUY, 90, 20)
    ids["b_btc_bid"] = ex.place("b", BUY, 95, 20)
    ids["a_eth_ask"] = ex.place("a", SELL, 300, 5, symbol=ETH)
    ids["a_btc_ask"] = ex.place("a", SELL, 200, 30)
    ids["a_btc_bid2"] = ex.place("a", BUY, 100, 40)
    ids["b_eth_bid"] = ex.place("b", BUY, 250, 5, symbol=ETH)
    ids["a_eth_bid"] = ex.place("a", BUY, 260, 7, symbol=ETH)
    return ids


def test_cancel_all_for_account(ex):
    ids = _spread_orders(ex)
    ex.sell("z", 100, 10)  # partial fill of a_btc_bid2
    events = ex.cancel_all("a")
    expected = sorted(ids[k] for k in ids if k.startswith("a_"))
    assert [e.order_id for e in events] == expected
    assert all(type(e) is OrderCancelled and e.reason == CancelReason.CANCEL_ALL for e in events)
    assert all(e.account == "a" for e in events)
    by_id = {e.order_id: e for e in events}
    assert (by_id[ids["a_btc_bid2"]].cancelled_qty, by_id[ids["a_btc_bid2"]].filled_qty) == (30, 10)
    assert (by_id[ids["a_eth_bid"]].cancelled_qty, by_id[ids["a_eth_bid"]].symbol) == (7, ETH)
    assert open_ids(ex.engine, "a") == set()
    assert open_ids(ex.engine, "b") == {ids["b_btc_bid"], ids["b_eth_bid"]}


def test_cancel_all_for_account_and_symbol(ex):
    ids = _spread_orders(ex)
    events = ex.cancel_all("a", BTC)
    assert [e.order_id for e in events] == sorted([ids["a_btc_bid"], ids["a_btc_ask"], ids["a_btc_bid2"]])
    assert {e.symbol for e in events} == {BTC}
    assert open_ids(ex.engine, "a") == {ids["a_eth_ask"], ids["a_eth_bid"]}
    assert ex.cancel_all("a", BTC) == []


def test_cancel_all_with_nothing_open_emits_nothing(ex):
    before = fingerprint(ex.engine)
    assert ex.cancel_all("ghost") == []
    assert ex.cancel_all("") == []
    assert fingerprint(ex.engine) == before


def test_cancel_all_unknown_symbol_rejected(ex):
    ex.place("a", BUY, 100, 10)
    before = fingerprint(ex.engine)
    rej = assert_rejected(ex.cancel_all("a", "DOGE-USD"), RejectReason.UNKNOWN_SYMBOL, RequestKind.CANCEL_ALL)
    assert (rej.account, rej.symbol) == ("a", "DOGE-USD")
    assert fingerprint(ex.engine) == before


def test_cancel_all_orders_events_by_order_id_after_restore(ex):
    """A restored engine rebuilds the account index in book order; events stay in id order."""
    ex.place("a", BUY, 90, 10)  # id 1, worse bid
    ex.place("a", BUY, 100, 10)  # id 2, best bid
    ex.place("a", SELL, 200, 10)  # id 3
    ex.place("a", SELL, 150, 10)  # id 4, best ask
    restored = Exchange(engine=restore_state(decode_state(encode_state(export_state(ex.engine)))))
    assert list(restored.engine.accounts["a"].open) != [1, 2, 3, 4]  # the premise of this test
    assert [e.order_id for e in restored.cancel_all("a")] == [1, 2, 3, 4]
    assert [e.order_id for e in ex.cancel_all("a")] == [1, 2, 3, 4]


# ---------------------------------------------------------------------------------------
# Bad input to NewOrder
# ---------------------------------------------------------------------------------------

GOOD = {
    "account": "a",
    "client_order_id": "bad",
    "symbol": BTC,
    "side": BUY,
    "order_type": LIMIT,
    "price": 100,
    "qty": 20,
    "tif": GTC,
    "post_only": False,
    "stp": STP.CANCEL_NEWEST,
}

R = RejectReason
BAD_NEW_ORDERS = [
    ({"qty": 0}, R.INVALID_QUANTITY),
    ({"qty": -10}, R.INVALID_QUANTITY),
    ({"qty": 15}, R.QUANTITY_OFF_LOT),
    ({"qty": 1}, R.QUANTITY_OFF_LOT),
    ({"symbol": SOL, "qty": 45}, R.QUANTITY_BELOW_MIN),
    ({"symbol": SOL, "qty": 1_005}, R.QUANTITY_ABOVE_MAX),
    ({"qty": 100_010}, R.QUANTITY_ABOVE_MAX),
    ({"price": 0}, R.INVALID_PRICE),
    ({"price": -5}, R.INVALID_PRICE),
    ({"price": 102}, R.PRICE_OFF_TICK),
    ({"order_type": MARKET, "price": 100}, R.MARKET_ORDER_WITH_PRICE),
    ({"order_type": MARKET, "price": -5}, R.MARKET_ORDER_WITH_PRICE),
    ({"symbol": "DOGE-USD"}, R.UNKNOWN_SYMBOL),
    ({"symbol": ""}, R.UNKNOWN_SYMBOL),
    ({"symbol": "btc-usd"}, R.UNKNOWN_SYMBOL),
    ({"side": 0}, R.INVALID_SIDE),
    ({"side": 3}, R.INVALID_SIDE),
    ({"side": 7}, R.INVALID_SIDE),
    ({"order_type": 0}, R.INVALID_ORDER_TYPE),
    ({"order_type": 7}, R.INVALID_ORDER_TYPE),
    ({"tif": 0}, R.INVALID_TIME_IN_FORCE),
    ({"tif": 2}, R.INVALID_TIME_IN_FORCE),
    ({"tif": 7}, R.INVALID_TIME_IN_FORCE),
    ({"stp": 4}, R.INVALID_STP_MODE),
    ({"stp": 7}, R.INVALID_STP_MODE),
    ({"stp": -1}, R.INVALID_STP_MODE),
    ({"post_only": True, "tif": IOC}, R.POST_ONLY_NOT_LIMIT_GTC),
    ({"post_only": True, "tif": FOK}, R.POST_ONLY_NOT_LIMIT_GTC),
    ({"post_only": True, "order_type": MARKET, "price": 0}, R.POST_ONLY_NOT_LIMIT_GTC),
    ({"account": ""}, R.INVALID_ACCOUNT),
    ({"account": "x" * 65}, R.INVALID_ACCOUNT),
    ({"client_order_id": "c" * 65}, R.INVALID_CLIENT_ORDER_ID),
]


@pytest.mark.parametrize(
    ("fields", "reason"), BAD_NEW_ORDERS, ids=[f"{r.name}-{f}" for f, r in BAD_NEW_ORDERS]
)
def test_invalid_new_order_rejected_without_state_change(ex, fields, reason):
    ex.place("m", SELL, 100, 30)  # liquidity that a wrongly accepted order would hit
    ex.place("a", BUY, 50, 10, clid="kept")
    before = fingerprint(ex.engine)
    accounts_before = set(ex.engine.accounts)
    cmd = NewOrder(**{**GOOD, **fields})
    events = ex.apply(cmd)
    rej = assert_rejected(events, reason, RequestKind.NEW)
    assert (rej.account, rej.client_order_id, rej.symbol, rej.order_id) == (
        cmd.account,
        cmd.client_order_id,
        cmd.symbol,
        0,
    )
    assert fingerprint(ex.engine) == before
    assert set(ex.engine.accounts) == accounts_before
    # No order id was consumed.
    assert ex.place("m", SELL, 500, 10) == 3


def test_valid_boundary_values_accepted(ex):
    assert kinds(ex.buy("a", 5, 10)) == ["OrderAccepted"]  # one tick, one lot / min qty
    assert kinds(ex.buy("a", 5, 100_000)) == ["OrderAccepted"]  # max qty
    assert kinds(ex.buy("x" * 64, 5, 10)) == ["OrderAccepted"]  # longest account
    assert kinds(ex.buy("a", 1, 50, symbol=SOL)) == ["OrderAccepted"]
    assert kinds(ex.buy("a", 1, 1_000, symbol=SOL)) == ["OrderAccepted"]


def test_unknown_command_type_rejected(ex):
    class Bogus:
        account = "a"
        seq = 0
        ts = 0

    events = ex.apply(Bogus())
    assert kinds(events) == ["OrderRejected"]
    assert events[0].reason == RejectReason.UNKNOWN_COMMAND


# ---------------------------------------------------------------------------------------
# Sequencing
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_seq", [5, 4, 0, -1])
def test_non_increasing_seq_raises_and_changes_nothing(bad_seq):
    ex = Exchange()
    ex.engine.apply(NewOrder("a", "x", BTC, SELL, LIMIT, 100, 10, seq=5, ts=1))
    before = state_hash(ex.engine)
    for cmd in (
        NewOrder("b", "y", BTC, BUY, LIMIT, 100, 10, seq=bad_seq, ts=2),
        Cancel("a", 1, seq=bad_seq, ts=2),
        Amend("a", 1, new_qty=20, seq=bad_seq, ts=2),
        CancelAll("a", seq=bad_seq, ts=2),
    ):
        with pytest.raises(SequenceError):
            ex.engine.apply(cmd)
    assert state_hash(ex.engine) == before
    assert ex.engine.last_seq == 5
    assert_consistent(ex.engine)
    # The next good seq (gaps are fine) goes through normally.
    events = ex.engine.apply(NewOrder("b", "y", BTC, BUY, LIMIT, 100, 10, seq=9, ts=3))
    assert kinds(events) == ["OrderAccepted", "Trade", "OrderDone", "OrderDone"]


def test_first_command_needs_positive_seq():
    ex = Exchange()
    with pytest.raises(SequenceError):
        ex.engine.apply(NewOrder("a", "x", BTC, BUY, LIMIT, 100, 10, seq=0, ts=0))
    assert ex.engine.last_seq == 0


def test_rejected_command_still_consumes_its_seq(ex):
    ex.buy("a", 100, 15)  # off lot -> rejected, seq 1
    with pytest.raises(SequenceError):
        ex.engine.apply(NewOrder("a", "x", BTC, BUY, LIMIT, 100, 10, seq=1, ts=0))
