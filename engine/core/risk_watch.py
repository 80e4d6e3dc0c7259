"""What risk learns from each command while it must watch the order flow: the running open
notional per (account, symbol) behind `max_open_notional`, and the throttles' counts
(engine/core/throttles.py). Watching is on while any limit sets one of those
(`RiskState.watching`); otherwise this module costs one attribute test per command.

`MatchingEngine.apply` hands each command here first (its only hook); this applies it
and updates the figures from its events, so the match loop itself knows nothing of it:

- a maker's fill (Trade) lowers the maker's figure by price x fill (a maker trades at its
  own price);
- the command's own order (a Cancel's or an Amend's target, a NewOrder's new order) is
  taken out before and put back after at what it then rests at;
- any other order cancelled (a kill switch, a cancel-all, self-trade prevention of a
  resting order) has its (account, symbol) recounted from the open orders: those
  commands are rare, and the cancelled order's price is gone with it.

The figures are derived from the open orders (not exported: `rebuild` after a restore) and
equal a scan of them after every command (tests/test_risk_watch.py checks it). A silent
replay's fast paths apply new orders and cancels without `apply` only while no risk is set
(`risk_on`), so they never bypass this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from engine.core.book import RestingOrder
from engine.core.commands import Amend, Cancel, Command, SetRiskLimits
from engine.core.domain import CancelReason, RiskLimits
from engine.core.events import Event, OrderAccepted, OrderCancelled, Trade
from engine.core.throttles import Throttle, count_cancel, count_order

_COUNTED_CANCELS = frozenset((int(CancelReason.USER), int(CancelReason.CANCEL_ALL)))


class _Open(Protocol):
    @property
    def open(self) -> Mapping[int, RestingOrder]: ...


class _Account(_Open, Protocol):
    @property
    def by_clid(self) -> Mapping[str, int]: ...


class _Risk(Protocol):
    @property
    def watching(self) -> bool: ...
    @property
    def counting(self) -> bool: ...
    @property
    def notional(self) -> dict[tuple[str, str], int]: ...
    @property
    def throttles(self) -> dict[str, Throttle]: ...
    def effective(self, account: str, symbol: str) -> RiskLimits | None: ...


class WatchedEngine(Protocol):
    risk_watch: bool

    @property
    def accounts(self) -> Mapping[str, _Account]: ...
    @property
    def risk(self) -> _Risk: ...
    @property
    def apply(self) -> Callable[[Command], list[Event]]: ...


def scan(accounts: Mapping[str, _Open], account: str, symbol: str) -> int:
    """The open notional of one account in one symbol, from its open orders."""
    acct = accounts.get(account)
    if acct is None:
        return 0
    return sum(o.price * o.leaves for o in acct.open.values() if o.symbol == symbol)


def rebuild(notional: dict[tuple[str, str], int], accounts: Mapping[str, _Open]) -> None:
    """Every figure from the open orders (watching turns on; a restore)."""
    notional.clear()
    for acct in accounts.values():
        for o in acct.open.values():
            key = (o.account, o.symbol)
            notional[key] = notional.get(key, 0) + o.price * o.leaves


def _add(notional: dict[tuple[str, str], int], key: tuple[str, str], amount: int) -> None:
    value = notional.get(key, 0) + amount
    if value:
        notional[key] = value
    else:
        del notional[key]  # no entry for no open orders: the map equals a rebuild


def _target(accounts: Mapping[str, _Account], cmd: Cancel | Amend) -> RestingOrder | None:
    """The open order a cancel or amend names, if any (the engine finds the same one)."""
    acct = accounts.get(cmd.account)
    if acct is None:
        return None
    if cmd.order_id:
        return acct.open.get(cmd.order_id)
    oid = acct.by_clid.get(cmd.client_order_id) if cmd.client_order_id else None
    order = acct.open.get(oid) if oid is not None else None
    return order if order is not None and order.client_order_id == cmd.client_order_id else None


def watched_apply(engine: WatchedEngine, cmd: Command) -> list[Event]:
    """`engine.apply(cmd)` with the running figures kept (the hook at the top of `apply`)."""
    risk = engine.risk
    accounts = engine.accounts
    kind = type(cmd)
    target = _target(accounts, cmd) if kind is Cancel or kind is Amend else None  # type: ignore[arg-type]
    before = (target.order_id, target.price * target.leaves) if target is not None else (0, 0)
    engine.risk_watch = False  # this call is not handed back here
    try:
        events = engine.apply(cmd)
    finally:
        engine.risk_watch = risk.watching  # a risk command may have changed it
    if not risk.watching or kind is SetRiskLimits or not events:
        return events  # a limits change that starts watching rebuilt the figures already
    notional = risk.notional
    throttles = risk.throttles
    counting = risk.counting
    own = before[0]
    if target is not None:
        _add(notional, (target.account, target.symbol), -before[1])
    recount: set[tuple[str, str]] = set()
    for ev in events:
        t = type(ev)
        if t is Trade:
            assert isinstance(ev, Trade)
            if ev.maker_order_id != own:
                _add(notional, (ev.maker_account, ev.symbol), -ev.price * ev.qty)
        elif t is OrderAccepted:
            assert isinstance(ev, OrderAccepted)
            own = ev.order_id
            if counting:
                lim = risk.effective(ev.account, ev.symbol)
                count_order(throttles, ev.account, ev.ts, lim.max_orders_per_sec if lim else 0)
        elif t is OrderCancelled:
            assert isinstance(ev, OrderCancelled)
            if ev.order_id != own:
                recount.add((ev.account, ev.symbol))
            if counting and ev.reason in _COUNTED_CANCELS:
                count_cancel(throttles, ev.account, ev.ts)
    if own:
        account = target.account if target is not None else _account_of(events)
        acct = accounts.get(account)
        rested = acct.open.get(own) if acct is not None else None
        if rested is not None:
            _add(notional, (rested.account, rested.symbol), rested.price * rested.leaves)
    for account, symbol in sorted(recount):
        value = scan(accounts, account, symbol)
        if value:
            notional[(account, symbol)] = value
        else:
            notional.pop((account, symbol), None)
    return events


def _account_of(events: Iterable[Event]) -> str:
    for ev in events:
        if type(ev) is OrderAccepted:
            assert isinstance(ev, OrderAccepted)
            return ev.account
    return ""
