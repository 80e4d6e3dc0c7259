"""Pre-trade risk in the core (engine/core/risk.py): each check at its accept/reject edge, the
layer order, kill switches (cancel on engage), halts, live limit changes, and replay /
snapshot determinism with risk state.

Most cases trade ETH-USD (tick 1, lot 1) so prices and quantities are plain numbers.
"""

from __future__ import annotations

import msgspec
import pytest
from conftest import (
    BTC,
    BUY,
    ETH,
    GTC,
    IOC,
    SELL,
    Exchange,
    OrderRejected,
    fingerprint,
    kinds,
    of_type,
    open_ids,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.commands import SetKillSwitch, SetRiskLimits, SetTradingHalt
from engine.core.domain import CancelReason, RejectReason, RequestKind, RiskLimits, RiskScope, risk_layer
from engine.core.events import KillSwitchChanged, OrderCancelled, RiskLimitsChanged, TradingHaltChanged
from engine.core.matcher import MatchingEngine
from engine.core.state import decode_state, encode_state, export_state, restore_state, state_hash

R = RejectReason
VENUE, SYMBOL, ACCOUNT = int(RiskScope.VENUE), int(RiskScope.SYMBOL), int(RiskScope.ACCOUNT)


def limits(ex: Exchange, scope: int = VENUE, target: str = "", **kw) -> list:
    return ex.apply(SetRiskLimits(scope, target, RiskLimits(**kw)))


def kill(ex: Exchange, scope: int, target: str = "", engaged: bool = True, cancel: bool = True) -> list:
    return ex.apply(SetKillSwitch(scope, target, engaged, "test", cancel))


def reason_of(events: list) -> int:
    assert kinds(events) == ["OrderRejected"], events
    return events[0].reason


def accepted(events: list) -> bool:
    return kinds(events)[0] == "OrderAccepted"


# -- defaults -----------------------------------------------------------------------------------


def test_no_limits_means_risk_is_off_and_anything_valid_passes(ex):
    assert not ex.engine.risk_on
    assert accepted(ex.buy("a", 1, 1_000_000_000, symbol=ETH))


def test_layers_have_their_own_reason_ranges():
    assert risk_layer(R.KILL_SWITCH_VENUE) == "venue" and risk_layer(R.INSTRUMENT_HALTED) == "venue"
    assert risk_layer(R.ORDER_QUANTITY_LIMIT) == "order" and risk_layer(R.PRICE_OUTSIDE_BAND) == "order"
    assert risk_layer(R.OPEN_ORDERS_LIMIT) == "account" and risk_layer(R.OPEN_NOTIONAL_LIMIT) == "account"
    assert risk_layer(R.INVALID_RISK_LIMIT) == "admin"
    assert risk_layer(R.UNKNOWN_SYMBOL) == "" and risk_layer(R.JOURNAL_WRITE_FAILED) == ""


# -- order layer ----------------------------------------------------------------------------------


def test_max_order_qty_edge(ex):
    limits(ex, max_order_qty=100)
    assert accepted(ex.buy("a", 10, 100, symbol=ETH))
    assert reason_of(ex.buy("a", 10, 101, symbol=ETH)) == R.ORDER_QUANTITY_LIMIT


def test_max_order_notional_edge_and_market_orders_valued_at_the_reference(ex):
    limits(ex, max_order_notional=1_000)
    assert accepted(ex.buy("a", 10, 100, symbol=ETH))  # exactly 1000
    assert reason_of(ex.buy("a", 11, 100, symbol=ETH)) == R.ORDER_NOTIONAL_LIMIT
    # A market sell is valued at the best bid (10): 101 x 10 is over, 100 x 10 is not.
    assert reason_of(ex.market("b", SELL, 101, symbol=ETH)) == R.ORDER_NOTIONAL_LIMIT
    assert kinds(ex.market("b", SELL, 100, symbol=ETH))[:2] == ["OrderAccepted", "Trade"]


def test_market_order_without_any_reference_skips_the_notional_check(ex):
    limits(ex, max_order_notional=1)
    assert kinds(ex.market("a", BUY, 5, symbol=ETH)) == ["OrderAccepted", "OrderCancelled"]


def test_price_band_uses_the_last_trade_price(ex):
    ex.place("m", SELL, 1_000, 5, symbol=ETH)
    ex.buy("t", 1_000, 5, symbol=ETH)  # trades at 1000: the reference
    ex.place("m", SELL, 1_200, 5, symbol=ETH)  # best ask now 1200, but the last trade wins
    limits(ex, price_band_bps=500)  # 5%: 950..1050
    assert accepted(ex.buy("a", 950, 1, symbol=ETH))
    assert accepted(ex.buy("a", 1_050, 1, symbol=ETH))
    assert reason_of(ex.buy("a", 949, 1, symbol=ETH)) == R.PRICE_OUTSIDE_BAND
    assert reason_of(ex.sell("b", 1_051, 1, symbol=ETH)) == R.PRICE_OUTSIDE_BAND


def test_price_band_falls_back_to_best_opposite_then_same_side_then_skips(ex):
    limits(ex, price_band_bps=1_000)  # 10%
    assert accepted(ex.buy("a", 1, 1, symbol=ETH))  # empty book, no trade: no reference
    # Best bid 1 is now the reference for buys (same side) and sells (opposite).
    assert reason_of(ex.buy("a", 2, 1, symbol=ETH)) == R.PRICE_OUTSIDE_BAND
    ex2 = Exchange()
    ex2.place("m", SELL, 100, 1, symbol=ETH)
    ex2.place("m", BUY, 50, 1, symbol=ETH)
    limits(ex2, price_band_bps=1_000)
    assert accepted(ex2.buy("a", 90, 1, symbol=ETH))  # opposite (ask 100) is the reference
    assert reason_of(ex2.buy("a", 89, 1, symbol=ETH)) == R.PRICE_OUTSIDE_BAND


# -- account layer --------------------------------------------------------------------------------


def test_max_open_orders_counts_resting_orders_only(ex):
    limits(ex, ACCOUNT, "a", max_open_orders=2)
    ex.place("a", BUY, 10, 1, symbol=ETH)
    ex.place("a", BUY, 11, 1, symbol=ETH)
    assert reason_of(ex.buy("a", 12, 1, symbol=ETH)) == R.OPEN_ORDERS_LIMIT
    assert kinds(ex.buy("a", 12, 1, symbol=ETH, tif=IOC)) == ["OrderAccepted", "OrderCancelled"]
    assert accepted(ex.buy("b", 12, 1, symbol=ETH))  # another account: no limit
    ex.cancel("a", min(open_ids(ex.engine, "a")))
    assert accepted(ex.buy("a", 12, 1, symbol=ETH))


def test_max_open_notional_per_account_and_symbol(ex):
    limits(ex, max_open_notional=1_000)
    ex.place("a", BUY, 10, 50, symbol=ETH)  # 500 open
    assert accepted(ex.buy("a", 10, 50, symbol=ETH))  # 1000: at the limit
    assert reason_of(ex.buy("a", 1, 1, symbol=ETH)) == R.OPEN_NOTIONAL_LIMIT
    assert accepted(ex.buy("a", 5, 10, symbol=BTC))  # another symbol has its own budget


# -- scopes and the tightest limit ----------------------------------------------------------------


def test_the_tightest_limit_of_venue_symbol_and_account_applies(ex):
    limits(ex, max_order_qty=100)
    limits(ex, SYMBOL, ETH, max_order_qty=50)
    limits(ex, ACCOUNT, "a", max_order_qty=70)
    assert reason_of(ex.buy("a", 1, 51, symbol=ETH)) == R.ORDER_QUANTITY_LIMIT
    assert accepted(ex.buy("a", 5, 70, symbol=BTC))  # the account's 70 beats the venue's 100
    assert reason_of(ex.buy("a", 5, 80, symbol=BTC)) == R.ORDER_QUANTITY_LIMIT  # account 70
    assert accepted(ex.buy("b", 5, 100, symbol=BTC))  # venue 100


def test_limits_change_live_and_all_zero_removes_them(ex):
    events = limits(ex, max_order_qty=10)
    assert kinds(events) == ["RiskLimitsChanged"] and ex.engine.risk_on
    assert reason_of(ex.buy("a", 1, 11, symbol=ETH)) == R.ORDER_QUANTITY_LIMIT
    [changed] = limits(ex)
    assert isinstance(changed, RiskLimitsChanged) and changed.limits == RiskLimits()
    assert not ex.engine.risk_on and ex.engine.risk.limits == {}
    assert accepted(ex.buy("a", 1, 11, symbol=ETH))


@pytest.mark.parametrize(
    ("scope", "target", "values", "reason"),
    [
        (VENUE, "x", {}, R.INVALID_RISK_TARGET),
        (SYMBOL, "NOPE", {"max_order_qty": 1}, R.INVALID_RISK_TARGET),
        (ACCOUNT, "", {"max_order_qty": 1}, R.INVALID_RISK_TARGET),
        (9, "", {"max_order_qty": 1}, R.INVALID_RISK_SCOPE),
        (VENUE, "", {"max_order_qty": -1}, R.INVALID_RISK_LIMIT),
    ],
)
def test_bad_risk_commands_are_rejected_without_state_change(ex, scope, target, values, reason):
    before = fingerprint(ex.engine)
    events = limits(ex, scope, target, **values)
    assert reason_of(events) == reason and events[0].request == RequestKind.RISK
    assert fingerprint(ex.engine) == before


# -- venue layer: kill switches and halts -----------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "target", "reason"),
    [
        (VENUE, "", R.KILL_SWITCH_VENUE),
        (SYMBOL, ETH, R.KILL_SWITCH_SYMBOL),
        (ACCOUNT, "a", R.KILL_SWITCH_ACCOUNT),
    ],
)
def test_kill_switch_refuses_new_orders_and_amends_in_scope_but_not_cancels(ex, scope, target, reason):
    oid = ex.place("a", BUY, 10, 5, symbol=ETH)
    kill(ex, scope, target, cancel=False)
    assert reason_of(ex.buy("a", 10, 1, symbol=ETH)) == reason
    assert reason_of(ex.amend("a", oid, new_price=11)) == reason
    assert reason_of(ex.amend("a", oid, new_qty=6)) == reason
    assert kinds(ex.amend("a", oid, new_qty=4)) == ["OrderAmended"]  # reducing risk stays possible
    assert kinds(ex.cancel("a", oid)) == ["OrderCancelled"]
    out_of_scope = ex.buy("b", 10, 10, symbol=BTC)
    assert reason_of(out_of_scope) == reason if scope == VENUE else accepted(out_of_scope)
    kill(ex, scope, target, engaged=False)
    assert accepted(ex.buy("a", 10, 1, symbol=ETH))


def test_engaging_a_kill_switch_cancels_resting_orders_in_its_scope(ex):
    a1 = ex.place("a", BUY, 10, 5, symbol=ETH)
    a2 = ex.place("a", SELL, 50, 10, symbol=BTC)
    b1 = ex.place("b", BUY, 9, 5, symbol=ETH)
    events = kill(ex, ACCOUNT, "a")
    assert kinds(events) == ["KillSwitchChanged", "OrderCancelled", "OrderCancelled"]
    head = events[0]
    assert isinstance(head, KillSwitchChanged) and head.engaged and head.cancelled == 2
    cancels = of_type(events, OrderCancelled)
    assert [c.order_id for c in cancels] == [a1, a2]  # by order id
    assert all(c.reason == CancelReason.KILL_SWITCH for c in cancels)
    assert open_ids(ex.engine, "a") == set() and open_ids(ex.engine, "b") == {b1}
    events = kill(ex, SYMBOL, ETH)
    assert [c.order_id for c in of_type(events, OrderCancelled)] == [b1]


def test_a_venue_kill_switch_cancels_everything_and_keep_orders_cancels_nothing(ex):
    ex.place("a", BUY, 10, 5, symbol=ETH)
    ex.place("b", SELL, 50, 10, symbol=BTC)
    assert kinds(kill(ex, VENUE, cancel=False)) == ["KillSwitchChanged"]
    kill(ex, VENUE, engaged=False)
    events = kill(ex, VENUE)
    assert events[0].cancelled == 2 and not any(open_ids(ex.engine, a) for a in "ab")


def test_halted_instrument_refuses_orders_until_resumed(ex):
    oid = ex.place("a", BUY, 10, 5, symbol=ETH)
    [ev] = ex.apply(SetTradingHalt(ETH, True, "news"))
    assert isinstance(ev, TradingHaltChanged) and ev.halted
    assert reason_of(ex.buy("a", 10, 1, symbol=ETH)) == R.INSTRUMENT_HALTED
    assert reason_of(ex.amend("a", oid, new_price=11)) == R.INSTRUMENT_HALTED
    assert open_ids(ex.engine, "a") == {oid}  # a halt cancels nothing
    assert accepted(ex.buy("a", 5, 10, symbol=BTC))
    ex.apply(SetTradingHalt(ETH, False))
    assert accepted(ex.buy("a", 10, 1, symbol=ETH))
    assert reason_of(ex.apply(SetTradingHalt("NOPE", True))) == R.UNKNOWN_SYMBOL


def test_venue_layer_is_checked_before_the_order_layer(ex):
    limits(ex, max_order_qty=1)
    kill(ex, ACCOUNT, "a")
    assert reason_of(ex.buy("a", 1, 5, symbol=ETH)) == R.KILL_SWITCH_ACCOUNT


def test_a_risk_reject_does_not_use_up_the_client_order_id(ex):
    limits(ex, max_order_qty=1)
    assert reason_of(ex.buy("a", 1, 5, symbol=ETH, clid="x")) == R.ORDER_QUANTITY_LIMIT
    assert accepted(ex.buy("a", 1, 1, symbol=ETH, clid="x"))


# -- amends -------------------------------------------------------------------------------------------


def test_amends_are_checked_against_the_order_and_account_layers(ex):
    ex.place("m", SELL, 1_000, 1, symbol=ETH)
    ex.buy("t", 1_000, 1, symbol=ETH)  # reference 1000
    oid = ex.place("a", BUY, 990, 10, symbol=ETH, tif=GTC)
    limits(ex, max_order_qty=20, price_band_bps=100, max_open_notional=15_000)
    assert reason_of(ex.amend("a", oid, new_qty=21)) == R.ORDER_QUANTITY_LIMIT
    assert reason_of(ex.amend("a", oid, new_price=989)) == R.PRICE_OUTSIDE_BAND
    assert reason_of(ex.amend("a", oid, new_qty=16)) == R.OPEN_NOTIONAL_LIMIT  # 15 840
    assert kinds(ex.amend("a", oid, new_qty=15)) == ["OrderAmended"]  # 14 850
    assert kinds(ex.amend("a", oid, new_price=991)) == ["OrderAmended"]


# -- determinism ----------------------------------------------------------------------------------------


def _scenario(ex: Exchange) -> None:
    ex.place("m", SELL, 1_000, 5, symbol=ETH)
    ex.buy("t", 1_000, 2, symbol=ETH)
    limits(ex, max_order_qty=50, price_band_bps=2_000)
    limits(ex, ACCOUNT, "acct-\u00e9", max_open_orders=3)
    ex.place("acct-\u00e9", BUY, 990, 5, symbol=ETH)
    kill(ex, ACCOUNT, "z", cancel=False)
    kill(ex, SYMBOL, BTC)
    ex.apply(SetTradingHalt(ETH, True, "h"))


def test_replay_into_a_fresh_engine_reproduces_events_and_hash():
    live = Exchange()
    _scenario(live)
    replayed = MatchingEngine(live.engine.instruments.values())
    for cmd, events in live.history:
        assert replayed.apply(cmd) == events
    assert state_hash(replayed) == state_hash(live.engine)


def test_snapshot_round_trip_keeps_risk_state_and_hash():
    live = Exchange()
    _scenario(live)
    restored = restore_state(decode_state(encode_state(export_state(live.engine))))
    assert state_hash(restored) == state_hash(live.engine)
    assert restored.risk.limits == live.engine.risk.limits
    assert restored.risk.kill_switches == live.engine.risk.kill_switches
    assert restored.risk.halts == {ETH: "h"} and restored.risk_on
    assert restored.last_price == {ETH: 1_000}
    # The restored engine refuses and accepts exactly like the live one.
    twin = Exchange(engine=restored)
    live.apply(SetTradingHalt(ETH, False))
    twin.apply(SetTradingHalt(ETH, False))
    for ex in (live, twin):
        assert reason_of(ex.buy("x", 1_000, 51, symbol=ETH)) == R.ORDER_QUANTITY_LIMIT
        assert reason_of(ex.buy("x", 700, 1, symbol=ETH)) == R.PRICE_OUTSIDE_BAND
        assert reason_of(ex.buy("z", 1_000, 1, symbol=ETH)) == R.KILL_SWITCH_ACCOUNT
    assert state_hash(twin.engine) == state_hash(live.engine)


def test_risk_state_changes_the_hash():
    a, b = Exchange(), Exchange()
    limits(a, max_order_qty=5)
    b.apply(SetRiskLimits(VENUE, "", RiskLimits(max_order_qty=6)))
    assert state_hash(a.engine) != state_hash(b.engine)


def test_rejected_risk_commands_name_the_account_for_account_scope(ex):
    [rej] = ex.apply(SetRiskLimits(ACCOUNT, "a" * 65, RiskLimits(max_order_qty=1)))
    assert isinstance(rej, OrderRejected) and rej.account == "a" * 65


@pytest.mark.parametrize("snapshot", [False, True])
def test_a_restarted_node_recovers_risk_state_from_the_journal_and_snapshots(tmp_path, snapshot):
    from conftest import INSTRUMENTS

    from engine.core.commands import NewOrder
    from engine.exchange import ExchangeNode, NodeConfig

    def open_node() -> ExchangeNode:
        return ExchangeNode(NodeConfig(tmp_path, INSTRUMENTS, snapshot_every_commands=0, snapshot_every_s=0))

    node = open_node()
    node.submit(
        [NewOrder("a", "c1", ETH, int(SELL), 2, 100, 5), NewOrder("b", "c2", ETH, int(BUY), 2, 100, 2)]
    )
    node.submit(
        [
            SetRiskLimits(VENUE, "", RiskLimits(max_order_qty=10, price_band_bps=100)),
            SetKillSwitch(ACCOUNT, "a", True, "why"),
            SetTradingHalt(BTC, True, "news"),
        ]
    )
    if snapshot:
        node.take_snapshot()
    [[rejected]] = node.submit([NewOrder("b", "c3", ETH, int(BUY), 2, 100, 11)])
    assert rejected.reason == R.ORDER_QUANTITY_LIMIT
    expected = state_hash(node.engine)
    node.close()
    node = open_node()
    try:
        assert node.recovered.snapshot_seq == (8 if snapshot else 0)  # 3 listings, 2 orders, 3 risk
        assert state_hash(node.engine) == expected
        assert node.engine.risk.kill_switches == {(ACCOUNT, "a"): "why"}
        assert node.engine.last_price == {ETH: 100} and node.engine.risk_on
        [[again]] = node.submit([NewOrder("b", "c4", ETH, int(BUY), 2, 102, 1)])
        assert again.reason == R.PRICE_OUTSIDE_BAND
    finally:
        node.close()


@settings(max_examples=300, deadline=None)
@given(
    qty=st.integers(1, 300),
    price=st.integers(0, 2_000),  # 0: a market order
    max_qty=st.integers(0, 200),
    max_notional=st.integers(0, 200_000),
    band=st.integers(0, 3_000),
    traded=st.booleans(),
)
def test_the_inlined_new_order_checks_agree_with_the_shared_order_layer(
    qty, price, max_qty, max_notional, band, traded
):
    """check_new inlines layer 2 for speed; check_amend uses order_checks: same answers."""
    from engine.core.commands import NewOrder
    from engine.core.risk import check_new, order_checks

    ex = Exchange()
    ex.place("m", SELL, 1_000, 5, symbol=ETH)
    ex.place("m", BUY, 900, 5, symbol=ETH)
    if traded:
        ex.buy("t", 1_000, 1, symbol=ETH)
    lim = RiskLimits(max_qty, max_notional, band)
    if not lim.is_empty():
        limits(ex, **msgspec.structs.asdict(lim))
    cmd = NewOrder("a", "", ETH, int(BUY), 2 if price else 1, price, qty)
    expected = order_checks(ex.engine, lim, ETH, int(BUY), price, qty)[0] if ex.engine.risk_on else 0
    assert check_new(ex.engine, cmd) == expected
