"""Pre-trade risk: part of the deterministic core (pure, journaled, replayed).

Checks run in layers, cheapest and widest first, each with its own decade of reject codes
(engine/domain.RejectReason 40x/41x/42x):

1. venue/instrument: a kill switch engaged for the venue, the symbol or the account; the
   symbol's trading halted;
2. order ("fat finger"): quantity, notional, price band around a reference price;
3. account: open orders per account, gross open notional per account and symbol (a running
   figure, engine/core/risk_watch.py), the throttles: orders per second and cancels per
   order, on the sequencer's timestamps (engine/core/throttles.py).

Every applied change of limits, kill switches and halts leaves an audit record (who, when,
scope, old and new value: engine/core/risk_audit.py).

Limits come from three scopes (venue, symbol, account); per field the tightest non-zero
value applies. With no limits, switches or halts the engine skips all of it on one
attribute test (`MatchingEngine.risk_on`). Cancels are never refused, nor are amends that
only reduce quantity at the same price: reducing risk must always be possible.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, TypeVar

from engine.core.book import BookSide, OrderBook, RestingOrder
from engine.core.commands import NewOrder, ReplayNewOrder, SetKillSwitch, SetRiskLimits, SetTradingHalt
from engine.core.domain import CancelReason, Instrument, RejectReason, RequestKind, RiskLimits, RiskScope
from engine.core.events import Event, KillSwitchChanged, OrderRejected, RiskLimitsChanged, TradingHaltChanged
from engine.core.risk_audit import HALT, KILL_SWITCH, LIMITS, AuditRecord
from engine.core.risk_audit import append as audit
from engine.core.risk_watch import rebuild
from engine.core.throttles import Throttle
from engine.core.throttles import check as throttle_check

R = RejectReason
VENUE = int(RiskScope.VENUE)
SYMBOL = int(RiskScope.SYMBOL)
ACCOUNT = int(RiskScope.ACCOUNT)
REQ_RISK = int(RequestKind.RISK)
BUY = 1
GTC = 1
BPS = 10_000
MAX_TARGET_LEN = 64
MAX_CACHED = 65_536  # effective-limit cache entries before it is cleared (bounded memory)
_FIELDS = RiskLimits.__struct_fields__
_NO_LIMITS = RiskLimits()
_MISSING = RiskLimits()  # a sentinel: compared by identity, never read
RISK_COMMANDS = frozenset((SetRiskLimits, SetKillSwitch, SetTradingHalt))


class RiskState:
    """Limits, kill switches, halts, the throttles' counters and the audit trail.
    `effective` results are cached per (account, symbol); the cache and the running open
    notional are derived data (not exported, not hashed: rebuilt from the rest)."""

    __slots__ = (
        "limits",
        "kill_switches",
        "halts",
        "_effective",
        "throttles",
        "audit",
        "notional",
        "watching",
        "counting",
    )

    def __init__(self) -> None:
        self.limits: dict[tuple[int, str], RiskLimits] = {}
        self.kill_switches: dict[tuple[int, str], str] = {}  # (scope, target) -> reason
        self.halts: dict[str, str] = {}  # symbol -> reason
        self._effective: dict[tuple[str, str], RiskLimits | None] = {}
        self.throttles: dict[str, Throttle] = {}  # account -> counters, while watching
        self.audit: list[AuditRecord] = []  # by seq
        self.notional: dict[tuple[str, str], int] = {}  # (account, symbol) -> open notional
        self.watching = False  # a limit needs the order flow observed (engine/core/risk_watch.py)
        self.counting = False  # a throttle limit is set: the throttles count (engine/core/throttles.py)

    def needs_watching(self) -> bool:
        return any(lim.max_open_notional for lim in self.limits.values()) or self.needs_counting()

    def needs_counting(self) -> bool:
        """Only while a throttle limit is set: state written before throttles existed has no
        counts, and restoring it must reach the state a replay from the start reaches."""
        return any(lim.max_orders_per_sec or lim.max_cancel_ratio for lim in self.limits.values())

    @property
    def active(self) -> bool:
        return bool(self.limits or self.kill_switches or self.halts)

    def changed(self) -> None:
        self._effective.clear()

    def effective(self, account: str, symbol: str) -> RiskLimits | None:
        """The tightest non-zero value of each field over venue, symbol and account."""
        key = (account, symbol)
        cache = self._effective
        if key in cache:
            return cache[key]
        get = self.limits.get
        parts = [p for p in (get((VENUE, "")), get((SYMBOL, symbol)), get((ACCOUNT, account))) if p]
        found: RiskLimits | None = None
        if len(parts) == 1:
            found = parts[0]
        elif parts:
            values = []
            for name in _FIELDS:
                set_ = [v for v in (getattr(p, name) for p in parts) if v]
                values.append(min(set_) if set_ else 0)
            found = RiskLimits(*values)
        if len(cache) >= MAX_CACHED:
            cache.clear()
        cache[key] = found
        return found

    def gate(self, account: str, symbol: str) -> int:
        """Layer 1: kill switches and halts (0 when trading is allowed)."""
        switches = self.kill_switches
        if switches:
            if (VENUE, "") in switches:
                return R.KILL_SWITCH_VENUE
            if (SYMBOL, symbol) in switches:
                return R.KILL_SWITCH_SYMBOL
            if (ACCOUNT, account) in switches:
                return R.KILL_SWITCH_ACCOUNT
        if symbol in self.halts:
            return R.INSTRUMENT_HALTED
        return 0


RiskCommand = SetRiskLimits | SetKillSwitch | SetTradingHalt


class _Account(Protocol):
    @property
    def open(self) -> Mapping[int, RestingOrder]: ...


class RiskEngine(Protocol):
    """What risk reads and changes of the matching engine: `MatchingEngine` is one (a
    protocol, not an import, because the matcher imports this module)."""

    risk: RiskState
    risk_on: bool
    risk_watch: bool

    @property
    def instruments(self) -> Mapping[str, Instrument]: ...
    @property
    def books(self) -> Mapping[str, OrderBook]: ...
    @property
    def last_price(self) -> Mapping[str, int]: ...
    @property
    def accounts(self) -> Mapping[str, _Account]: ...
    def cancel_resting(
        self, order: RestingOrder, side: BookSide, reason: int, seq: int, ts: int, events: list[Event] | None
    ) -> None: ...


# -- the checks -------------------------------------------------------------------------------


def order_checks(
    engine: RiskEngine, lim: RiskLimits, symbol: str, side: int, limit_price: int, qty: int
) -> tuple[int, int]:
    """Layer 2 (`limit_price` 0 for a market order). Returns (reason, notional); notional is
    0 when nothing needs it, or when there is no price to value a market order at."""
    max_qty = lim.max_order_qty
    if max_qty and qty > max_qty:
        return R.ORDER_QUANTITY_LIMIT, 0
    band = lim.price_band_bps
    max_notional = lim.max_order_notional
    if not (band or max_notional or lim.max_open_notional):
        return 0, 0
    ref = engine.last_price.get(symbol) or _book_reference(engine, symbol, side)
    notional = (limit_price or ref) * qty
    if max_notional and notional > max_notional:
        return R.ORDER_NOTIONAL_LIMIT, notional
    if band and limit_price and ref and abs(limit_price - ref) * BPS > band * ref:
        return R.PRICE_OUTSIDE_BAND, notional
    return 0, notional


def _book_reference(engine: RiskEngine, symbol: str, side: int) -> int:
    """Without a last trade: the best opposite price, else the best same-side price, else 0."""
    book = engine.books[symbol]
    own, opp = (book.bids, book.asks) if side == BUY else (book.asks, book.bids)
    return opp.best or own.best or 0


def check_new(engine: RiskEngine, cmd: NewOrder | ReplayNewOrder) -> int:
    """The first risk layer a (field-valid) new order fails, or 0. A field-valid order has
    a positive price exactly when it is a limit order."""
    risk: RiskState = engine.risk
    symbol = cmd.symbol
    account = cmd.account
    if risk.kill_switches or risk.halts:
        reason = risk.gate(account, symbol)
        if reason:
            return reason
    lim = risk._effective.get((account, symbol), _MISSING)
    if lim is _MISSING:
        lim = risk.effective(account, symbol)
    if lim is None:
        return 0
    # Layer 2, as in order_checks (inlined: this runs for every new order while limits exist).
    price = cmd.price
    qty = cmd.qty
    max_qty = lim.max_order_qty
    if max_qty and qty > max_qty:
        return R.ORDER_QUANTITY_LIMIT
    notional = 0
    band = lim.price_band_bps
    max_notional = lim.max_order_notional
    if band or max_notional or lim.max_open_notional:
        ref = engine.last_price.get(symbol) or _book_reference(engine, symbol, cmd.side)
        notional = (price or ref) * qty
        if max_notional and notional > max_notional:
            return R.ORDER_NOTIONAL_LIMIT
        if band and price and ref and abs(price - ref) * BPS > band * ref:
            return R.PRICE_OUTSIDE_BAND
    max_open = lim.max_open_orders
    if max_open and price and cmd.tif == GTC:  # only an order that may rest counts
        acct = engine.accounts.get(account)
        if acct is not None and len(acct.open) >= max_open:
            return R.OPEN_ORDERS_LIMIT
    max_open_notional = lim.max_open_notional
    # The running figure (engine/core/risk_watch.py), not a scan of the account's orders.
    if max_open_notional and risk.notional.get((account, symbol), 0) + notional > max_open_notional:
        return R.OPEN_NOTIONAL_LIMIT
    if lim.max_orders_per_sec or lim.max_cancel_ratio:
        return throttle_check(risk.throttles.get(account), lim, cmd.ts)
    return 0


def check_amend(engine: RiskEngine, order: RestingOrder, new_qty: int, new_price: int) -> int:
    """Risk layers for an amend that raises quantity or moves the price (0 = allowed)."""
    risk: RiskState = engine.risk
    symbol = order.symbol
    reason = risk.gate(order.account, symbol)
    if reason:
        return reason
    lim = risk.effective(order.account, symbol)
    if lim is None:
        return 0
    if new_price == order.price:  # a quantity increase: the band was checked on entry
        lim = RiskLimits(*[0 if name == "price_band_bps" else getattr(lim, name) for name in _FIELDS])
    reason, _ = order_checks(engine, lim, symbol, order.side, new_price, new_qty)
    if reason:
        return reason
    if lim.max_open_notional:
        rest = risk.notional.get((order.account, symbol), 0) - order.price * order.leaves
        if rest + new_price * (new_qty - order.filled) > lim.max_open_notional:
            return R.OPEN_NOTIONAL_LIMIT
    return 0


# -- the risk commands ------------------------------------------------------------------------


def _reject(cmd: RiskCommand, reason: int, symbol: str = "") -> list[Event]:
    account = cmd.target if not isinstance(cmd, SetTradingHalt) and cmd.scope == ACCOUNT else ""
    return [OrderRejected(cmd.seq, cmd.ts, account, "", symbol, REQ_RISK, int(reason))]


def _target_problem(engine: RiskEngine, scope: int, target: str) -> int:
    if scope == VENUE:
        return R.INVALID_RISK_TARGET if target else 0
    if scope == SYMBOL:
        return 0 if target in engine.instruments else R.INVALID_RISK_TARGET
    if scope == ACCOUNT:
        return 0 if 0 < len(target) <= MAX_TARGET_LEN else R.INVALID_RISK_TARGET
    return R.INVALID_RISK_SCOPE


def apply_risk_command(engine: RiskEngine, cmd: RiskCommand) -> list[Event]:
    if isinstance(cmd, SetRiskLimits):
        events = _set_limits(engine, cmd)
    elif isinstance(cmd, SetKillSwitch):
        events = _set_kill_switch(engine, cmd)
    else:
        events = _set_halt(engine, cmd)
    risk = engine.risk
    risk.changed()
    engine.risk_on = risk.active
    watching = risk.needs_watching()
    if watching and not risk.watching:
        rebuild(risk.notional, engine.accounts)
    elif not watching:
        risk.notional.clear()
    risk.counting = risk.needs_counting()
    if not risk.counting:
        risk.throttles.clear()  # counted only while a throttle is set: stale counts would refuse
    risk.watching = engine.risk_watch = watching
    return events


def _set_limits(engine: RiskEngine, cmd: SetRiskLimits) -> list[Event]:
    scope, target, limits = cmd.scope, cmd.target, cmd.limits
    reason = _target_problem(engine, scope, target)
    if not reason and any(getattr(limits, name) < 0 for name in _FIELDS):
        reason = R.INVALID_RISK_LIMIT
    if reason:
        return _reject(cmd, reason, target if scope == SYMBOL else "")
    key = (scope, target)
    risk = engine.risk
    old = risk.limits.get(key, _NO_LIMITS)
    if limits.is_empty():
        risk.limits.pop(key, None)
        limits = _NO_LIMITS
    else:
        risk.limits[key] = limits
    by = cmd.requested_by
    audit(risk.audit, AuditRecord(cmd.seq, cmd.ts, by, LIMITS, scope, target, old, limits))
    return [RiskLimitsChanged(cmd.seq, cmd.ts, scope, target, limits, old, by)]


def _set_kill_switch(engine: RiskEngine, cmd: SetKillSwitch) -> list[Event]:
    scope, target = cmd.scope, cmd.target
    reason = _target_problem(engine, scope, target)
    if reason:
        return _reject(cmd, reason, target if scope == SYMBOL else "")
    by = cmd.requested_by
    switches = engine.risk.kill_switches
    was = _switch(engine, cmd, KILL_SWITCH, scope, target, switches, (scope, target), cmd.engaged, cmd.reason)
    cancels: list[Event] = []
    if cmd.engaged and cmd.cancel_orders:
        _cancel_in_scope(engine, scope, target, cmd.seq, cmd.ts, cancels)
    changed = KillSwitchChanged(
        cmd.seq, cmd.ts, scope, target, cmd.engaged, cmd.reason, len(cancels), was, by
    )
    return [changed, *cancels]


_Key = TypeVar("_Key", tuple[int, str], str)  # a kill switch's (scope, target), a halt's symbol


def _switch(
    engine: RiskEngine,
    cmd: SetKillSwitch | SetTradingHalt,
    kind: int,
    scope: int,
    target: str,
    table: dict[_Key, str],
    key: _Key,
    on: bool,
    reason: str,
) -> bool:
    """Turn one kill switch or halt on (with its reason) or off, and audit the change: the
    one shape of both records. Returns whether it was on before."""
    was = key in table
    old_reason = table.get(key, "")
    if on:
        table[key] = reason
    else:
        table.pop(key, None)
    record = AuditRecord(
        cmd.seq,
        cmd.ts,
        cmd.requested_by,
        kind,
        scope,
        target,
        old_on=was,
        new_on=on,
        old_reason=old_reason,
        new_reason=reason,
    )
    audit(engine.risk.audit, record)
    return was


def _cancel_in_scope(
    engine: RiskEngine, scope: int, target: str, seq: int, ts: int, events: list[Event]
) -> None:
    if scope == ACCOUNT:
        acct = engine.accounts.get(target)
        orders = list(acct.open.values()) if acct is not None else []
    else:
        orders = [o for a in engine.accounts.values() for o in a.open.values()]
        if scope == SYMBOL:
            orders = [o for o in orders if o.symbol == target]
    # By order id: the event order never depends on dict history (snapshots rebuild it).
    orders.sort(key=lambda o: o.order_id)
    books = engine.books
    for order in orders:
        book = books[order.symbol]
        side = book.bids if order.side == BUY else book.asks
        engine.cancel_resting(order, side, CancelReason.KILL_SWITCH, seq, ts, events)


def _set_halt(engine: RiskEngine, cmd: SetTradingHalt) -> list[Event]:
    symbol = cmd.symbol
    if symbol not in engine.instruments:
        return _reject(cmd, R.UNKNOWN_SYMBOL, symbol)
    by = cmd.requested_by
    was = _switch(engine, cmd, HALT, SYMBOL, symbol, engine.risk.halts, symbol, cmd.halted, cmd.reason)
    return [TradingHaltChanged(cmd.seq, cmd.ts, symbol, cmd.halted, cmd.reason, was, by)]
