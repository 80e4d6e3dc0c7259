"""Replay: applying journaled commands when nobody listens to the events.

Recovery applies a million commands and throws every event away, counting them only.
`SilentReplayer` applies the commands that make up most of any journal - valid new orders
(resting, trading or both) and cancels by order id - without building events: the engine's
state changes exactly as under `MatchingEngine.apply`, and the number of events `apply`
would have emitted is returned. The rare rest - every rejection, fill-or-kill orders,
post-only orders that would cross, cancels by client order id, amends, cancel-all,
listings - is handed to `apply` itself.

A property test runs random command streams both ways and compares the state hash and the
event count after every command. Keep the fast paths in step with `MatchingEngine.apply`
and `_match`: a new check or state change on the new-order, matching or cancel path there
(validation, risk) must appear here too, or make these paths hand the command to `apply`.

The same loop is compiled (engine/core/_replay.c, built by `pip install`): replay speed is
bounded by the interpreter, and the loop reads some twenty attributes per command. Without
a compiler the install still succeeds and replay runs this Python loop (`COMPILED` says
which). The property test runs both against `apply`.

Pure like the rest of the core: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from engine.core.book import BookSide, Level, OrderBook, RestingOrder
from engine.core.commands import Cancel, Command, NewOrder, ReplayCancel, ReplayCommand, ReplayNewOrder
from engine.core.domain import CancelReason
from engine.core.matcher import (
    BUY,
    GTC,
    IOC,
    LIMIT,
    MARKET,
    MAX_ACCOUNT_LEN,
    MAX_CLIENT_ORDER_ID_LEN,
    SELL,
    STP_BOTH,
    STP_NEWEST,
    VALID_STP,
    AccountOrders,
    Market,
    MatchingEngine,
)

SELF_TRADE = int(CancelReason.SELF_TRADE)


def _load_compiled() -> Callable[..., int] | None:
    """The compiled loop, configured with the engine's types and constants; None when it
    was not built (no compiler at install time)."""
    try:
        import engine.core._replay as compiled
    except ImportError:
        return None
    compiled.configure(
        {
            "ReplayNewOrder": ReplayNewOrder,
            "NewOrder": NewOrder,
            "ReplayCancel": ReplayCancel,
            "Cancel": Cancel,
            "RestingOrder": RestingOrder,
            "Level": Level,
            "BookSide": BookSide,
            "Market": Market,
            "OrderBook": OrderBook,
            "AccountOrders": AccountOrders,
            "BUY": BUY,
            "SELL": SELL,
            "LIMIT": LIMIT,
            "MARKET": MARKET,
            "GTC": GTC,
            "IOC": IOC,
            "STP_NEWEST": STP_NEWEST,
            "STP_BOTH": STP_BOTH,
            "VALID_STP": sorted(VALID_STP),
            "MAX_CLIENT_ORDER_ID_LEN": MAX_CLIENT_ORDER_ID_LEN,
            "MAX_ACCOUNT_LEN": MAX_ACCOUNT_LEN,
            "SELF_TRADE": SELF_TRADE,
        }
    )
    batch: Callable[..., int] = compiled.replay_batch
    return batch


_compiled_batch = _load_compiled()
COMPILED = _compiled_batch is not None


class SilentReplayer:
    """Applies batches of sequenced commands to one engine without building events.

    Decoded commands carry fresh strings. The replayer remembers, per account name, one
    string object and the account's index: a new order then finds its account with one
    probe, and the resting orders of an account share one name instead of a copy each.
    So the engine must change only through this replayer or `MatchingEngine.apply` while
    the replayer is in use (neither ever replaces an account's index)."""

    __slots__ = ("engine", "_known", "apply", "compiled")

    def __init__(self, engine: MatchingEngine, compiled: bool = COMPILED) -> None:
        self.engine = engine
        self._known: dict[str, tuple[str, dict[str, int], dict[int, RestingOrder]]] = {}
        if compiled and not COMPILED:
            raise RuntimeError("the compiled replay loop (engine.core._replay) is not built")
        self.compiled = compiled
        # apply(commands) -> the number of events `MatchingEngine.apply` would have emitted
        self.apply = self._apply_compiled if compiled else self._apply_python

    def _apply_compiled(self, commands: Iterable[Command | ReplayCommand]) -> int:
        if not isinstance(commands, list | tuple):
            commands = list(commands)
        assert _compiled_batch is not None  # __init__ refused compiled=True without it
        return _compiled_batch(self.engine, self._known, commands, self._handoff)

    def _handoff(self, cmd: Command | ReplayCommand) -> int:
        """What the compiled loop does not take, applied by `MatchingEngine.apply`."""
        full = cmd.full() if isinstance(cmd, ReplayNewOrder | ReplayCancel) else cmd
        return len(self.engine.apply(full))

    def _apply_python(self, commands: Iterable[Command | ReplayCommand]) -> int:
        """Apply the commands in order; return how many events `MatchingEngine.apply`
        would have emitted for them."""
        engine = self.engine
        apply = engine.apply
        markets = engine.markets
        accounts = engine.accounts
        known = self._known
        # The engine's counters and risk switch live in locals here: only `apply` changes
        # them, and they are handed over and read back around it.
        last_seq = engine.last_seq
        next_oid = engine.next_order_id
        risk_on = engine.risk_on
        # The market of the last order or cancel, by its (shared) symbol: most journals
        # trade few symbols, and a listed symbol's market is never replaced.
        cur_symbol: Any = None  # str and Market once an order or cancel has named a symbol
        cur_market: Any = None
        events = 0
        cmd: Any  # typed by its branch: mypy cannot narrow through `kind is`
        for cmd in commands:
            kind = type(cmd)
            if kind is ReplayNewOrder or kind is NewOrder:
                seq = cmd.seq
                symbol = cmd.symbol
                if symbol == cur_symbol:
                    market = cur_market
                else:
                    market = markets.get(symbol)
                    if market is not None:
                        cur_market = market
                        cur_symbol = market.book.symbol
                # Risk checks (any limit, kill switch or halt set) are `apply`'s to make.
                if seq > last_seq and market is not None and not risk_on:
                    side = cmd.side
                    price = cmd.price
                    order_type = cmd.order_type
                    if side == BUY:
                        own = market.bids
                        opp = market.asks
                        best = opp.best
                        crosses = best is not None and (order_type == MARKET or best <= price)
                    elif side == SELL:
                        own = market.asks
                        opp = market.bids
                        best = opp.best
                        crosses = best is not None and (order_type == MARKET or best >= price)
                    else:
                        own = None
                    qty = cmd.qty
                    tif = cmd.tif
                    post_only = cmd.post_only
                    stp = cmd.stp
                    account = cmd.account
                    clid = cmd.client_order_id
                    # The validation of `apply`, less fill-or-kill (left to it); a post-only
                    # order that would cross is refused by `apply` too.
                    if (
                        own is not None
                        and market.min_qty <= qty <= market.max_qty
                        and not qty % market.lot
                        and (
                            (order_type == LIMIT and price > 0 and not price % market.tick)
                            or (order_type == MARKET and not price)
                        )
                        and (tif == GTC or tif == IOC)
                        and stp in VALID_STP
                        and (not post_only or (order_type == LIMIT and tif == GTC and not crosses))
                        and len(clid) <= MAX_CLIENT_ORDER_ID_LEN
                    ):
                        entry = known.get(account)
                        if entry is None:
                            # A known account passed this check when it was first seen.
                            if not 0 < len(account) <= MAX_ACCOUNT_LEN:
                                own = None
                            else:
                                acct = accounts.get(account)
                                if acct is not None:
                                    entry = known[account] = (account, acct.by_clid, acct.open)
                        # A duplicate client id is refused by `apply`: checked before
                        # anything changes (the registration of the id is the check).
                        if entry is not None:
                            account, by_clid, acct_open = entry
                            if clid and by_clid.setdefault(clid, next_oid) != next_oid:
                                own = None
                        elif own is not None:
                            acct = accounts[account] = AccountOrders()
                            by_clid = acct.by_clid
                            acct_open = acct.open
                            known[account] = (account, by_clid, acct_open)
                            if clid:
                                by_clid[clid] = next_oid
                        if own is not None:
                            oid = next_oid
                            next_oid = oid + 1
                            last_seq = seq
                            remaining = qty
                            if crosses:
                                remaining, stopped, emitted = _match_silently(
                                    engine,
                                    opp,
                                    side,
                                    order_type == MARKET,
                                    price,
                                    oid,
                                    account,
                                    stp,
                                    qty,
                                    seq,
                                    cur_symbol,
                                )
                                if not remaining or stopped:
                                    # OrderAccepted, the match, then OrderDone or
                                    # OrderCancelled by self-trade prevention
                                    events += emitted + 2
                                    continue
                                events += emitted
                            if tif != GTC or order_type != LIMIT:
                                events += 2  # OrderAccepted, OrderCancelled (IOC remainder or no liquidity)
                                continue
                            events += 1  # OrderAccepted
                            level = own.levels.get(price)
                            if level is None:
                                level = own.new_level(price)
                            # The level's price object, not the decoded one: a cancel then
                            # finds the level without reading another object.
                            order = RestingOrder(
                                oid,
                                account,
                                clid,
                                cur_symbol,
                                side,
                                level.price,
                                qty,
                                remaining,
                                qty - remaining,
                                tif,
                                post_only,
                                stp,
                                seq,
                            )
                            level.orders[oid] = order
                            level.qty += remaining
                            acct_open[oid] = order
                            continue
            elif kind is ReplayCancel or kind is Cancel:
                seq = cmd.seq
                oid = cmd.order_id
                # With risk set, `apply` cancels: risk may watch the order flow (risk_watch.py).
                if seq > last_seq and oid and not risk_on:
                    held = accounts.get(cmd.account)
                    resting = held.open.get(oid) if held is not None else None
                    if held is not None and resting is not None:
                        last_seq = seq
                        symbol = resting.symbol
                        if symbol is not cur_symbol:
                            cur_market = markets[symbol]
                            cur_symbol = cur_market.book.symbol
                        side = cur_market.bids if resting.side == BUY else cur_market.asks
                        price = resting.price
                        level = side.levels[price]
                        orders = level.orders
                        del orders[oid]
                        level.qty -= resting.leaves
                        if not orders:
                            side.drop_level(price)
                        del held.open[oid]
                        events += 1  # OrderCancelled
                        continue
            if kind is ReplayNewOrder or kind is ReplayCancel:
                cmd = cmd.full()
            engine.last_seq = last_seq
            engine.next_order_id = next_oid
            events += len(apply(cmd))
            last_seq = engine.last_seq
            next_oid = engine.next_order_id
            risk_on = engine.risk_on
        engine.last_seq = last_seq
        engine.next_order_id = next_oid
        return events


def _match_silently(
    engine: MatchingEngine,
    opp: BookSide,
    side: int,
    is_market: bool,
    limit: int,
    oid: int,
    account: str,
    stp: int,
    qty: int,
    seq: int,
    symbol: str,
) -> tuple[int, bool, int]:
    """`MatchingEngine._match` without the events: (quantity left, whether self-trade
    prevention stopped the incoming order, how many events `_match` would have emitted).
    Like `_match`, it notes the last fill's price (risk's reference price) once."""
    remaining = qty
    emitted = 0
    traded = 0  # the last fill's price
    trades = 0
    levels = opp.levels
    accounts = engine.accounts
    is_buy = side == BUY
    while remaining:
        price = opp.best
        if price is None:
            break
        if not is_market and (price > limit if is_buy else price < limit):
            break
        level = levels[price]
        orders = level.orders
        while remaining:
            maker = next(iter(orders.values()))
            mleaves = maker.leaves
            if stp and maker.account == account:
                if stp == STP_NEWEST:
                    if traded:
                        engine.last_price[symbol] = traded
                        engine.next_trade_id += trades
                    return remaining, True, emitted + trades
                # Rare: the cancelled maker's event goes to a list nobody reads.
                engine.cancel_resting(maker, opp, SELF_TRADE, seq, 0, [])
                emitted += 1
                if stp == STP_BOTH:
                    if traded:
                        engine.last_price[symbol] = traded
                        engine.next_trade_id += trades
                    return remaining, True, emitted + trades
                if opp.best != price:  # that emptied the level
                    break
                continue
            fill = remaining if remaining < mleaves else mleaves
            remaining -= fill
            mleaves -= fill
            maker.leaves = mleaves
            maker.filled += fill
            level.qty -= fill
            trades += 1
            traded = price
            if not mleaves:
                maker_id = maker.order_id
                del orders[maker_id]
                del accounts[maker.account].open[maker_id]
                emitted += 1  # OrderDone of the maker (its Trade is counted in `trades`)
                if not orders:
                    opp.drop_level(price)
                    break
    if traded:
        engine.last_price[symbol] = traded
        engine.next_trade_id += trades
    return remaining, False, emitted + trades
