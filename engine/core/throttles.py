"""Throttles of the core: new orders per second and cancels per order, per account, on the
sequencer's timestamps (`cmd.ts`, stamped outside the core), so a replay, a standby and a
snapshot restore refuse exactly the orders the live engine refused. The gateways' per-session
rate limits cannot promise that: they run on each process's own clock.

- Order rate (`max_orders_per_sec` = N): a generic cell rate algorithm (a leaky bucket kept
  as one number, the theoretical arrival time `tat`). Each accepted new order moves `tat`
  on by 1e9 // N ns; an order is refused while `tat` is more than N - 1 intervals ahead of
  its `ts`. So a burst of N orders passes, then one every 1/N s.
- Cancel ratio (`max_cancel_ratio` = R): per account and whole minute of `ts`, the cancels
  (successful cancels, and each order a cancel-all took) and the accepted new orders. A new
  order is refused while cancels > R x max(orders, 1) this minute; cancels are never refused.

Counted for every account while any throttle limit is set
(engine/core/risk_watch.py observes each command then); an amend is neither.
"""

from __future__ import annotations

import msgspec

from engine.core.domain import RejectReason, RiskLimits

SECOND = 1_000_000_000
WINDOW = 60 * SECOND  # the cancel ratio's window: one minute of the sequencer's clock


class Throttle(msgspec.Struct, array_like=True, gc=False):
    """One account's counters (state: exported, hashed, snapshotted)."""

    tat: int = 0  # the order rate's theoretical arrival time, ns
    window: int = 0  # ts // WINDOW of the counts below
    orders: int = 0
    cancels: int = 0


def interval(rate: int) -> int:
    return SECOND // rate if rate < SECOND else 1


def check(throttle: Throttle | None, lim: RiskLimits, ts: int) -> int:
    """The throttle a new order at `ts` fails (a reject reason), or 0."""
    if throttle is None:
        return 0
    rate = lim.max_orders_per_sec
    if rate and ts < throttle.tat - (rate - 1) * interval(rate):
        return RejectReason.ORDER_RATE_LIMIT
    ratio = lim.max_cancel_ratio
    if ratio and throttle.window == ts // WINDOW and throttle.cancels > ratio * max(throttle.orders, 1):
        return RejectReason.CANCEL_RATIO_LIMIT
    return 0


def _current(throttles: dict[str, Throttle], account: str, ts: int) -> Throttle:
    throttle = throttles.get(account)
    if throttle is None:
        throttle = throttles[account] = Throttle()
    window = ts // WINDOW
    if throttle.window != window:
        throttle.window, throttle.orders, throttle.cancels = window, 0, 0
    return throttle


def count_order(throttles: dict[str, Throttle], account: str, ts: int, rate: int) -> None:
    """An accepted new order; `rate` the account's order rate limit for its symbol (0: none)."""
    throttle = _current(throttles, account, ts)
    throttle.orders += 1
    if rate:
        throttle.tat = max(throttle.tat, ts) + interval(rate)


def count_cancel(throttles: dict[str, Throttle], account: str, ts: int) -> None:
    _current(throttles, account, ts).cancels += 1
