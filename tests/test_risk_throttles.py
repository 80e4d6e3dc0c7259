"""The core's throttles (engine/core/throttles.py): orders per second and cancels per order,
per account, on the sequencer's timestamps; each at its accept/refuse edge, and the same
refusals after a replay and a snapshot restore."""

from __future__ import annotations

from conftest import BUY, ETH, SELL, Exchange, kinds

from engine.core.commands import SetRiskLimits
from engine.core.domain import RejectReason, RiskLimits, RiskScope, risk_layer
from engine.core.matcher import MatchingEngine
from engine.core.state import decode_state, encode_state, export_state, restore_state, state_hash
from engine.core.throttles import SECOND, WINDOW

R = RejectReason
VENUE, SYMBOL, ACCOUNT = int(RiskScope.VENUE), int(RiskScope.SYMBOL), int(RiskScope.ACCOUNT)


def limits(ex: Exchange, scope: int = VENUE, target: str = "", **kw) -> list:
    return ex.apply(SetRiskLimits(scope, target, RiskLimits(**kw)))


def at(ex: Exchange, ts: int) -> Exchange:
    """The next command is stamped `ts` (Exchange.stamp adds its step first)."""
    ex.ts = ts - 1_000
    return ex


def outcome(events: list) -> str | int:
    return "accepted" if kinds(events)[0] == "OrderAccepted" else events[0].reason


def test_the_new_reasons_are_in_the_account_layer():
    assert risk_layer(R.ORDER_RATE_LIMIT) == "account" and risk_layer(R.CANCEL_RATIO_LIMIT) == "account"


def test_order_rate_allows_a_burst_then_one_per_interval(ex):
    limits(ex, max_orders_per_sec=4)  # a burst of 4, then one each 250 ms
    t0 = (ex.ts // SECOND + 1) * SECOND
    for i in range(4):
        assert outcome(at(ex, t0 + i).buy("a", 100, 1, symbol=ETH)) == "accepted"
    assert outcome(at(ex, t0 + 10).buy("a", 100, 1, symbol=ETH)) == R.ORDER_RATE_LIMIT
    assert outcome(at(ex, t0 + 10).buy("b", 100, 1, symbol=ETH)) == "accepted"  # per account
    # The 5th fits one interval after the first: 250 ms, to the nanosecond.
    assert outcome(at(ex, t0 + SECOND // 4 - 1).buy("a", 100, 1, symbol=ETH)) == R.ORDER_RATE_LIMIT
    assert outcome(at(ex, t0 + SECOND // 4).buy("a", 100, 1, symbol=ETH)) == "accepted"
    assert outcome(at(ex, t0 + SECOND // 4 + 1).buy("a", 100, 1, symbol=ETH)) == R.ORDER_RATE_LIMIT
    # After a quiet second the full burst is back.
    for i in range(4):
        assert outcome(at(ex, t0 + 2 * SECOND + i).sell("a", 200, 1, symbol=ETH)) == "accepted"


def test_refused_orders_and_cancels_use_no_order_rate(ex):
    limits(ex, max_orders_per_sec=1)
    t0 = (ex.ts // SECOND + 1) * SECOND
    oid = at(ex, t0).buy("a", 100, 1, symbol=ETH)[0].order_id
    assert outcome(at(ex, t0 + 1).buy("a", 100, 1, symbol=ETH)) == R.ORDER_RATE_LIMIT
    assert kinds(at(ex, t0 + 2).cancel("a", oid)) == ["OrderCancelled"]  # never refused
    assert outcome(at(ex, t0 + SECOND).buy("a", 100, 1, symbol=ETH)) == "accepted"


def test_cancel_ratio_refuses_new_orders_past_the_edge_but_never_cancels(ex):
    limits(ex, ACCOUNT, "a", max_cancel_ratio=2)
    t0 = (ex.ts // WINDOW + 1) * WINDOW
    t1 = t0 + WINDOW
    old = [at(ex, t0 + i).buy("a", 100 + i, 2, symbol=ETH)[0].order_id for i in range(6)]
    # The next minute counts afresh; cancels of orders placed before it count in it.
    new = [at(ex, t1).buy("a", 90, 1, symbol=ETH)[0].order_id]  # 1 order
    for oid in old[:2]:
        assert kinds(at(ex, t1 + 1).cancel("a", oid)) == ["OrderCancelled"]
    new.append(at(ex, t1 + 2).buy("a", 90, 1, symbol=ETH)[0].order_id)  # 2 cancels = 2 x 1: passes
    for oid in old[2:4]:
        at(ex, t1 + 3).cancel("a", oid)
    ex.amend("a", old[4], new_qty=1)  # an amend is no cancel
    at(ex, t1 + 4).cancel("a", 999_999)  # nor is a refused one
    new.append(at(ex, t1 + 5).buy("a", 90, 1, symbol=ETH)[0].order_id)  # 4 cancels = 2 x 2: passes
    assert kinds(at(ex, t1 + 6).cancel_all("a", ETH)) == ["OrderCancelled"] * 5  # each counts: 9
    assert (ex.engine.risk.throttles["a"].orders, ex.engine.risk.throttles["a"].cancels) == (3, 9)
    assert outcome(at(ex, t1 + 7).buy("a", 90, 1, symbol=ETH)) == R.CANCEL_RATIO_LIMIT  # 9 > 2 x 3
    assert outcome(at(ex, t1 + 7).buy("b", 90, 1, symbol=ETH)) == "accepted"  # per account
    assert outcome(at(ex, t1 + WINDOW).buy("a", 90, 1, symbol=ETH)) == "accepted"  # a new minute
    oid = ex.engine.next_order_id - 1
    assert kinds(at(ex, t1 + WINDOW + 1).cancel("a", oid)) == ["OrderCancelled"]


def _throttled_history() -> list:
    ex = Exchange()
    limits(ex, max_orders_per_sec=3, max_cancel_ratio=1)
    t0 = (ex.ts // WINDOW + 1) * WINDOW
    for i in range(40):
        side = BUY if i % 2 else SELL
        events = at(ex, t0 + i * (SECOND // 20)).order(f"acct-{i % 3}", side, 100 + i % 5, 1, symbol=ETH)
        if kinds(events)[0] == "OrderAccepted" and i % 4 == 0:
            at(ex, t0 + i * (SECOND // 20) + 1).cancel(f"acct-{i % 3}", events[0].order_id)
    return ex.history


def test_replay_and_snapshot_restore_refuse_the_same_orders():
    history = _throttled_history()
    refused = [ev for _, events in history for ev in events if getattr(ev, "reason", 0) in (423, 424)]
    assert refused, "the workload must hit a throttle"
    live = Exchange()
    for cmd, _ in history:
        live.engine.apply(cmd)
    replayed = MatchingEngine(live.engine.instruments.values())
    mid = len(history) // 2
    for cmd, events in history[:mid]:
        assert replayed.apply(cmd) == events
    restored = restore_state(decode_state(encode_state(export_state(replayed))))
    assert state_hash(restored) == state_hash(replayed)
    for cmd, events in history[mid:]:
        assert restored.apply(cmd) == events  # the throttle counts came through the snapshot
    assert state_hash(restored) == state_hash(live.engine)
