"""The running open notional (engine/core/risk_watch.py) behind `max_open_notional`: each
way an order's open notional changes, and a property test that the running figure equals
a scan of the open orders after every command of random command streams."""

from __future__ import annotations

from conftest import BTC, BUY, ETH, SELL, Exchange, kinds
from hypothesis import event, given, settings
from hypothesis import strategies as st
from test_replay_silent import LISTED, SETTINGS, commands, sequenced

from engine.core.commands import SetKillSwitch, SetRiskLimits
from engine.core.domain import RejectReason, RiskLimits, RiskScope, SelfTradePrevention
from engine.core.invariants import check_open_notional
from engine.core.matcher import MatchingEngine
from engine.core.risk_watch import rebuild, scan
from engine.core.state import decode_state, encode_state, export_state, restore_state

R = RejectReason
VENUE, ACCOUNT = int(RiskScope.VENUE), int(RiskScope.ACCOUNT)


def watch(ex: Exchange, **kw) -> None:
    ex.apply(SetRiskLimits(VENUE, "", RiskLimits(**({"max_open_notional": 10**12} | kw))))


def figure(ex: Exchange, account: str, symbol: str = ETH) -> int:
    value = ex.engine.risk.notional.get((account, symbol), 0)
    assert value == scan(ex.engine.accounts, account, symbol)
    return value


def test_watching_starts_from_the_resting_orders_and_stops_with_the_limit(ex):
    ex.place("a", BUY, 100, 5, symbol=ETH)
    assert not ex.engine.risk_watch and ex.engine.risk.notional == {}
    watch(ex)
    assert ex.engine.risk_watch and figure(ex, "a") == 500
    ex.apply(SetRiskLimits(VENUE, "", RiskLimits(max_order_qty=1_000)))  # no watching limit left
    assert not ex.engine.risk_watch and ex.engine.risk.notional == {}


def test_rest_fill_cancel_and_amend_move_the_figure(ex):
    watch(ex)
    bid = ex.place("a", BUY, 100, 5, symbol=ETH)
    ask = ex.place("a", SELL, 120, 4, symbol=ETH)
    assert figure(ex, "a") == 500 + 480
    ex.sell("b", 100, 2, symbol=ETH)  # a maker's partial fill
    assert figure(ex, "a") == 300 + 480 and figure(ex, "b") == 0
    ex.amend("a", bid, new_qty=4)  # down, priority kept: leaves 2
    assert figure(ex, "a") == 200 + 480
    ex.amend("a", bid, new_qty=6, new_price=101)  # up and repriced: leaves 4 at 101
    assert figure(ex, "a") == 404 + 480
    # Repriced onto its own bid: self-trade prevention (cancel newest) cancels the amended order.
    assert kinds(ex.amend("a", ask, new_price=101)) == ["OrderAmended", "OrderCancelled"]
    assert figure(ex, "a") == 404
    ex.cancel("a", bid)
    assert figure(ex, "a") == 0
    ex.place("a", SELL, 110, 2, symbol=ETH)
    ex.buy("b", 115, 5, symbol=ETH)  # a taker: fills a's 2, rests 3 at 115
    assert figure(ex, "a") == 0 and figure(ex, "b") == 345


def test_an_amend_that_trades_and_rests_counts_its_remainder(ex):
    watch(ex)
    ex.place("m", SELL, 100, 3, symbol=ETH)
    oid = ex.place("a", BUY, 90, 5, symbol=ETH)
    events = ex.amend("a", oid, new_price=100)
    assert kinds(events) == ["OrderAmended", "Trade", "OrderDone"]
    assert figure(ex, "a") == 100 * 2 and figure(ex, "m") == 0


def test_self_trade_prevention_kill_switch_and_cancel_all_recount(ex):
    watch(ex)
    ex.place("a", SELL, 100, 3, symbol=ETH)
    ex.place("a", SELL, 101, 3, symbol=ETH)
    ex.buy("a", 101, 4, symbol=ETH, stp=int(SelfTradePrevention.CANCEL_OLDEST))  # cancels both, rests 4
    assert figure(ex, "a") == 101 * 4
    ex.place("b", BUY, 90, 2, symbol=ETH)
    ex.place("b", BUY, 95, 10, symbol=BTC)
    ex.apply(SetKillSwitch(ACCOUNT, "b", True, "drill", True))
    assert figure(ex, "b") == 0 and figure(ex, "b", BTC) == 0 and figure(ex, "a") == 404
    ex.cancel_all("a")
    assert ex.engine.risk.notional == {}


def test_the_limit_reads_the_running_figure(ex):
    ex.apply(SetRiskLimits(ACCOUNT, "a", RiskLimits(max_open_notional=1_000)))
    oid = ex.place("a", BUY, 100, 6, symbol=ETH)
    ex.sell("b", 100, 2, symbol=ETH)  # a's figure falls to 400 by the fill
    assert kinds(ex.buy("a", 100, 6, symbol=ETH)) == ["OrderAccepted"]  # 400 + 600
    assert [e.reason for e in ex.buy("a", 1, 1, symbol=ETH)] == [R.OPEN_NOTIONAL_LIMIT]
    assert [e.reason for e in ex.amend("a", oid, new_qty=7)] == [R.OPEN_NOTIONAL_LIMIT]
    assert kinds(ex.amend("a", oid, new_qty=3)) == ["OrderAmended"]  # down: always allowed


@SETTINGS
@given(cmds=st.lists(commands, min_size=1, max_size=120), watched=st.sampled_from(["notional", "throttle"]))
def test_the_running_figure_equals_the_scan_after_every_command(cmds, watched):
    """Random streams of new orders (limit, market, IOC, FOK, post-only, each self-trade
    mode), cancels by id and client id, amends, cancel-alls, listings, limits, kill switches
    and halts; watching from the start, so every command goes through the hook."""
    first = RiskLimits(max_open_notional=10**9) if watched == "notional" else RiskLimits(max_orders_per_sec=5)
    engine = MatchingEngine(LISTED)
    for cmd in sequenced([SetRiskLimits(VENUE, "", first), *cmds]):
        engine.apply(cmd)
        assert check_open_notional(engine) == [], cmd
        if engine.risk_watch:
            restored = restore_state(decode_state(encode_state(export_state(engine))))
            assert restored.risk.notional == engine.risk.notional  # rebuilt on restore


@settings(max_examples=50, deadline=None)
@given(cmds=st.lists(commands, min_size=30, max_size=120))
def test_the_checks_answer_as_a_scan_would(cmds):
    """The same stream under a tight limit against a reference whose figures are rebuilt
    from a scan of the open orders before every command: the same events."""
    stream = sequenced([SetRiskLimits(VENUE, "", RiskLimits(max_open_notional=3_000)), *cmds])
    running, reference = MatchingEngine(LISTED), MatchingEngine(LISTED)
    for cmd in stream:
        rebuild(reference.risk.notional, reference.accounts)
        expected = reference.apply(cmd)
        assert running.apply(cmd) == expected
        if any(getattr(e, "reason", 0) == R.OPEN_NOTIONAL_LIMIT for e in expected):
            event("refused by max_open_notional")  # (hypothesis statistics show it is reached)
