"""The matching engine: a pure, deterministic function of (state, command) -> events.

No clock, no I/O, no logging, no telemetry: the sequencer stamps `seq` and `ts` on each
command and the engine copies them onto the events it emits. User mistakes become
OrderRejected events; an exception here means a broken invariant (crash-only: the process
dies and recovers from the journal).

The order path is written for CPython speed: locals instead of attribute chains, integer
comparisons instead of enum attribute lookups, one list of events per command.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from engine.core.balances import ACCOUNT_COMMANDS, Balance, Ledger, apply_account_command, listing_problem
from engine.core.book import BookSide, OrderBook, RestingOrder
from engine.core.client_ids import AccountOrders, ClientIdExpiry
from engine.core.commands import (
    Amend,
    Cancel,
    CancelAll,
    Command,
    ListInstrument,
    NewOrder,
    ReplayCancel,
    ReplayCommand,
    ReplayNewOrder,
    SetCreditChecks,
    Transfer,
)
from engine.core.domain import (
    MAX_ACCOUNT_LEN,
    Asset,
    CancelReason,
    Instrument,
    OrderType,
    RejectReason,
    RequestKind,
    SelfTradePrevention,
    Side,
    TimeInForce,
)
from engine.core.events import (
    CreditChecksChanged,
    Event,
    InstrumentListed,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderDone,
    OrderRejected,
    Trade,
)
from engine.core.risk import RISK_COMMANDS, RiskState, apply_risk_command, check_amend, check_new
from engine.core.risk_watch import watched_apply
from engine.core.settlement import (
    Money,
    TradePair,
    available,
    balance,
    fee_cells,
    funds,
    release,
)

# Plain ints for the hot path (an IntEnum attribute lookup costs more than a global int).
BUY = int(Side.BUY)
SELL = int(Side.SELL)
LIMIT = int(OrderType.LIMIT)
MARKET = int(OrderType.MARKET)
GTC = int(TimeInForce.GTC)
IOC = int(TimeInForce.IOC)
FOK = int(TimeInForce.FOK)
STP_NONE = int(SelfTradePrevention.NONE)
STP_NEWEST = int(SelfTradePrevention.CANCEL_NEWEST)
STP_BOTH = int(SelfTradePrevention.CANCEL_BOTH)
_VALID_TIF = frozenset((GTC, IOC, FOK))
VALID_STP = frozenset(int(m) for m in SelfTradePrevention)
MAX_CLIENT_ORDER_ID_LEN = 64

R = RejectReason
C = CancelReason
REQ_NEW = int(RequestKind.NEW)
REQ_CANCEL = int(RequestKind.CANCEL)
REQ_AMEND = int(RequestKind.AMEND)
REQ_CANCEL_ALL = int(RequestKind.CANCEL_ALL)
REQ_LIST = int(RequestKind.LIST_INSTRUMENT)
REQ_ACCOUNTS_ADMIN = int(RequestKind.ACCOUNTS_ADMIN)


def new_order_problem(cmd: NewOrder | ReplayNewOrder, inst: Instrument) -> RejectReason | int:
    """The first thing wrong with a new order's fields (0 when none), most basic first."""
    side, qty, price, order_type, tif = cmd.side, cmd.qty, cmd.price, cmd.order_type, cmd.tif
    if side != BUY and side != SELL:
        return R.INVALID_SIDE
    if qty <= 0:
        return R.INVALID_QUANTITY
    if qty % inst.lot_size:
        return R.QUANTITY_OFF_LOT
    if qty < inst.min_qty:
        return R.QUANTITY_BELOW_MIN
    if qty > inst.max_qty:
        return R.QUANTITY_ABOVE_MAX
    if order_type == LIMIT:
        if price <= 0:
            return R.INVALID_PRICE
        if price % inst.tick_size:
            return R.PRICE_OFF_TICK
    elif order_type == MARKET:
        if price:
            return R.MARKET_ORDER_WITH_PRICE
    else:
        return R.INVALID_ORDER_TYPE
    if tif not in _VALID_TIF:
        return R.INVALID_TIME_IN_FORCE
    if cmd.stp not in VALID_STP:
        return R.INVALID_STP_MODE
    if cmd.post_only and (order_type != LIMIT or tif != GTC):
        return R.POST_ONLY_NOT_LIMIT_GTC
    if not cmd.account or len(cmd.account) > MAX_ACCOUNT_LEN:
        return R.INVALID_ACCOUNT
    if len(cmd.client_order_id) > MAX_CLIENT_ORDER_ID_LEN:
        return R.INVALID_CLIENT_ORDER_ID
    return 0


class SequenceError(RuntimeError):
    """A command arrived with a sequence number not above the last one: a sequencer bug."""


class Market:
    """What the order path needs of one symbol, gathered for a single dict lookup."""

    __slots__ = (
        "symbol", "book", "bids", "asks", "tick", "lot", "min_qty", "max_qty", "sweep_ticks", "sweep_bps",
        "money", "credit",
    )  # fmt: skip

    def __init__(self, inst: Instrument, book: OrderBook) -> None:
        # The symbol's one string object. A decoded command brings fresh copies of its
        # symbol and account; an order that rests keeps these shared ones instead, so a deep
        # book does not hold a string per order and field (a smaller heap, fewer cache misses).
        self.symbol = book.symbol
        self.book = book
        self.bids = book.bids
        self.asks = book.asks
        self.tick = inst.tick_size
        self.lot = inst.lot_size
        self.min_qty = inst.min_qty
        self.max_qty = inst.max_qty
        self.sweep_ticks = 0
        self.sweep_bps = 0
        self.money: Money | None = None  # credit and settlement, when it names listed assets
        self.credit: Money | None = None  # `money` while credit checks are on: the order path's test

    def configure(self, inst: Instrument, assets: dict[str, Asset], credit_checks: bool) -> None:
        """The parts an instrument may gain after listing (assets, fees, market protection),
        and whether its orders are credit-checked now."""
        self.sweep_ticks = inst.max_sweep_ticks
        self.sweep_bps = inst.max_sweep_bps
        base = assets.get(inst.base)
        self.money = Money(inst, base) if base is not None and inst.quote in assets else None
        self.credit = self.money if credit_checks else None

    def protection(self, side: int, touch: int) -> int:
        """The worst price a market order may trade at, `touch` being the best opposite
        price: the tighter of the instrument's sweeps in ticks and in basis points (whole
        ticks, at least one), or 0 when it sets neither."""
        tick = self.tick
        span = self.sweep_ticks * tick
        bps = self.sweep_bps
        if bps:
            by_bps = max(touch * bps // 10_000 // tick, 1) * tick
            span = by_bps if not span or by_bps < span else span
        if not span:
            return 0
        return touch + span if side == BUY else max(touch - span, tick)


class MatchingEngine:
    def __init__(self, instruments: Iterable[Instrument]) -> None:
        self.ledger = Ledger()  # assets, balances, transfers (engine/core/balances.py)
        self.balances = self.ledger.balances  # the same dict, one attribute nearer the order path
        self.instruments: dict[str, Instrument] = {}
        self.books: dict[str, OrderBook] = {}
        self.markets: dict[str, Market] = {}
        for inst in instruments:
            if inst.symbol in self.instruments:
                raise ValueError(f"duplicate instrument {inst.symbol}")
            self._list(inst)
        self.accounts: dict[str, AccountOrders] = {}
        # Forgets client order ids once free (engine/core/client_ids.py): the order path
        # queues each registration, and a pass is due every so many orders.
        self.clid_expiry = ClientIdExpiry()
        queue = self.clid_expiry.queue
        self.clid_accounts, self.clid_keys = queue.accounts, queue.clids
        self.clid_pass_at = 0  # the first order's pass sets it (from the constant read then)
        self.next_order_id = 1
        self.next_trade_id = 1
        self.last_seq = 0
        self.risk = RiskState()
        self.risk_on = False  # any limit, kill switch or halt set: the only cost without any
        # The pre-trade check of a new order. An attribute so the node can time the real call
        # on a sample of batches (engine/exchange.py) with a wrapper that reads the clock:
        # the core itself reads none, and the check is never run twice.
        self.check_new: Callable[[MatchingEngine, NewOrder | ReplayNewOrder], int] = check_new
        self.risk_watch = False  # risk observes every command (engine/core/risk_watch.py)
        self.last_price: dict[str, int] = {}  # symbol -> last trade price (risk's reference)

    def _list(self, inst: Instrument) -> None:
        self.instruments[inst.symbol] = inst
        book = self.books[inst.symbol] = OrderBook(inst.symbol)
        market = self.markets[inst.symbol] = Market(inst, book)
        market.configure(inst, self.ledger.assets, self.ledger.credit_checks)

    def configure_markets(self) -> None:
        """After assets or the credit switch change (or a restore): each market's money,
        credit and protection."""
        ledger = self.ledger
        for symbol, market in self.markets.items():
            market.configure(self.instruments[symbol], ledger.assets, ledger.credit_checks)

    # -- entry point -------------------------------------------------------------------

    def apply(self, cmd: Command) -> list[Event]:
        """Apply one sequenced command; return the events it caused, in order."""
        if self.risk_watch:  # risk's one hook: it calls back here with the flag down
            return watched_apply(self, cmd)
        seq = cmd.seq
        if seq <= self.last_seq:
            raise SequenceError(f"command seq {seq} not above last seq {self.last_seq}")
        self.last_seq = seq
        if type(cmd) is not NewOrder:
            return self._apply_other(cmd)
        events: list[Event] = []
        self._new_order(cmd, events)
        return events

    def replay(self, commands: Iterable[Command | ReplayCommand]) -> int:
        """Apply a batch of sequenced commands as `apply` does, without building the events
        of new orders and cancels (recovery throws them away): returns how many events
        `apply` would have returned for them. Takes the replay prefixes of
        `decode_for_replay` as well. A batch per call, not a command: the dispatch is the
        one piece of replay's work that is not the order path's own."""
        new_order = self._new_order
        cancel = self._cancel
        events = 0
        # Both change only under `apply` (a risk command may start the watch): read again after it.
        last_seq = self.last_seq
        watched = self.risk_watch
        for cmd in commands:
            kind = type(cmd)
            c: Any = cmd  # typed by its branch, as in `_apply_other`
            seq = c.seq
            # While risk watches every command (open notional, throttles: risk_watch.py),
            # all of them go through `apply`, whose one hook keeps those figures. The
            # replay prefixes first: a file journal's replay reads nothing else.
            if seq > last_seq and not watched:
                if kind is ReplayNewOrder or kind is NewOrder:
                    self.last_seq = last_seq = seq
                    events += new_order(c, None)
                    continue
                if kind is ReplayCancel or kind is Cancel:
                    self.last_seq = last_seq = seq
                    events += cancel(c, None)
                    continue
            # The rest (and a stale seq, which `apply` refuses) builds its few events.
            if kind is ReplayNewOrder or kind is ReplayCancel:
                c = c.full()
            events += len(self.apply(c))
            last_seq = self.last_seq
            watched = self.risk_watch
        return events

    # -- new order ---------------------------------------------------------------------

    def _new_order(self, cmd: NewOrder | ReplayNewOrder, events: list[Event] | None) -> int:
        """A new order, sequenced: the one order path of `apply` and `replay`. Its events go
        to `events`, or nowhere when it is None (replay: it throws them away);
        returns how many there were."""
        try:  # a subscript, cheaper than a `get` call; an unknown symbol is rare
            market = self.markets[cmd.symbol]
        except KeyError:
            return self._reject_new(cmd, R.UNKNOWN_SYMBOL, events)
        symbol = market.symbol
        side = cmd.side
        qty = cmd.qty
        price = cmd.price
        order_type = cmd.order_type
        tif = cmd.tif
        post_only = cmd.post_only
        account = cmd.account
        clid = cmd.client_order_id
        stp = cmd.stp
        # One short-circuit expression for the common valid order; the slow path below
        # names the first problem. A property test keeps the two in agreement.
        if not (
            (side == BUY or side == SELL)
            and market.min_qty <= qty <= market.max_qty
            and not qty % market.lot
            and (
                (order_type == LIMIT and price > 0 and not price % market.tick)
                or (order_type == MARKET and not price)
            )
            and tif in _VALID_TIF
            and stp in VALID_STP
            and (not post_only or (order_type == LIMIT and tif == GTC))
            and 0 < len(account) <= MAX_ACCOUNT_LEN
            and len(clid) <= MAX_CLIENT_ORDER_ID_LEN
        ):
            return self._reject_new(cmd, new_order_problem(cmd, self.instruments[symbol]), events)
        if self.risk_on:
            reason = self.check_new(self, cmd)
            if not reason and side == BUY and market.credit is not None:  # spot position limits
                reason = self._position_problem(account, symbol, market.credit, qty, 0)
            if reason:
                return self._reject_new(cmd, reason, events)
        # The price it may trade to: a limit order's own; a market order's protection price
        # (engine/core/settlement.py explains the credit rules), 0 when unbounded.
        limit = price
        money = market.credit
        if order_type == MARKET and (market.sweep_ticks or market.sweep_bps or money is not None):
            touch = (market.asks if side == BUY else market.bids).best
            if touch is not None:
                if market.sweep_ticks or market.sweep_bps:  # else no protection: skip the call
                    limit = market.protection(side, touch)
                if not limit and money is not None and side == BUY:
                    limit = market.asks.worst()  # what a buy needs reserving: the whole book
        need = held = 0  # held: what `funds` would hold with it, reused when it rests untouched
        funds: Balance | None = None  # the balance its reservation comes from
        if money is not None:
            # Dict subscripts, not `get` calls (a call costs as much again); misses are rare.
            if side == BUY:
                try:  # Money.reservation, inlined: the per-lot figure is cached by price
                    need = qty // market.lot * money.buy_lots[limit]
                except KeyError:
                    need = qty // market.lot * money.buy_per_lot(limit)
            else:
                need = qty * money.contract_size
            try:
                balance: Balance = money.pairs[account][side]  # type: ignore[assignment]  # side 1|2
            except KeyError:  # without both balances (rare); one it lacks holds nothing: a
                # throwaway empty one refuses any need, and no order that needs 0 rests
                balance = money.pair(self.balances, account)[side] or Balance()
            # available >= need, as held + need <= total: a small sum against the total
            # costs less than the total's difference (a fresh large integer) on every order.
            if (held := balance.held + need) > balance.total and need:
                return self._reject_new(cmd, R.INSUFFICIENT_BALANCE, events)
            funds = balance
        oid = self.next_order_id
        acct = self.accounts.get(account)
        # Duplicate check and registration in one probe (undone if post-only refuses below).
        registered = False
        if acct is not None:
            account = acct.name
            if clid:
                prior = acct.by_clid.setdefault(clid, oid)
                if prior != oid:
                    if acct.live_clid(clid, oid) is not None:
                        return self._reject_new(cmd, R.DUPLICATE_CLIENT_ORDER_ID, events)
                    acct.by_clid[clid] = oid  # its old order left the window: the id is free again
                registered = True

        if side == BUY:
            own = market.bids
            opp = market.asks
            best = opp.best
            crosses = best is not None and (order_type == MARKET or best <= price)
        else:
            own = market.asks
            opp = market.bids
            best = opp.best
            crosses = best is not None and (order_type == MARKET or best >= price)
        if crosses and post_only:
            if acct is not None and registered:
                del acct.by_clid[clid]
            return self._reject_new(cmd, R.POST_ONLY_WOULD_CROSS, events)

        if acct is None:
            acct = self.accounts[account] = AccountOrders(account)
            if clid:
                acct.by_clid[clid] = oid
        self.next_order_id = oid + 1
        if clid:
            self.clid_accounts.append(acct)
            self.clid_keys.append(clid)
        if oid >= self.clid_pass_at:
            self.clid_pass_at = self.clid_expiry.prune(oid + 1)
        seq = cmd.seq
        ts = 0
        if events is not None:
            ts = cmd.ts
            events.append(
                OrderAccepted(seq, ts, oid, account, clid, symbol, side, order_type, tif, price, qty)
            )
        # OrderAccepted, then one closing event (done, or a cancel of the rest) unless it rests.
        count = 2

        remaining = qty
        if crosses:
            if tif == FOK and not self._fok_fillable(opp, side, not limit, limit, account, stp, qty):
                if events is not None:
                    events.append(OrderCancelled(seq, ts, oid, account, symbol, C.FOK_NOT_FILLABLE, qty, 0))
                return count
            remaining, stopped, matched = self._match(
                events, opp, side, not limit, limit, oid, account, stp, qty, symbol, seq, ts, money
            )
            count += matched
            if not remaining:
                if events is not None:
                    events.append(OrderDone(seq, ts, oid, account, symbol, qty))
                return count
            if stopped:
                if events is not None:
                    events.append(
                        OrderCancelled(
                            seq, ts, oid, account, symbol, C.SELF_TRADE, remaining, qty - remaining
                        )
                    )
                return count
        if tif == FOK:  # nothing to trade against at all
            if events is not None:
                events.append(OrderCancelled(seq, ts, oid, account, symbol, C.FOK_NOT_FILLABLE, qty, 0))
        elif order_type == MARKET:
            if events is not None:
                # Stopped by its protection price while the book still had more, or emptied it.
                why = C.MARKET_PROTECTION if limit and opp.best is not None else C.NO_LIQUIDITY
                events.append(OrderCancelled(seq, ts, oid, account, symbol, why, remaining, qty - remaining))
        elif tif == GTC:
            # What it holds of `funds` (credit checks on): given to the constructor, as a
            # Struct's setattr afterwards costs several times more.
            if funds is None:
                reserved = 0
            elif not crosses:  # nothing moved `funds` since the check: its sum stands
                reserved = need
                funds.held = held
            else:
                reserved = need if remaining == qty else money.reservation(side, price, remaining)  # type: ignore[union-attr]
                funds.held += reserved
            order = RestingOrder(
                oid,
                account,
                clid,
                symbol,
                side,
                price,
                qty,
                remaining,
                qty - remaining,
                tif,
                post_only,
                stp,
                seq,
                reserved,
            )
            # BookSide.add, inlined: this is the most frequent operation of all.
            level = own.levels.get(price)
            if level is None:
                level = own.new_level(price)
            level.orders[oid] = order
            level.qty += remaining
            acct.open[oid] = order
            return count - 1  # resting: no closing event
        elif events is not None:
            events.append(
                OrderCancelled(seq, ts, oid, account, symbol, C.IOC_REMAINDER, remaining, qty - remaining)
            )
        return count

    def _apply_other(self, cmd: Command) -> list[Event]:
        kind = type(cmd)
        # Dispatched by `kind is`, the cheapest check; mypy cannot narrow through it, so the
        # command is typed by its branch (a cast would cost a call per command).
        c: Any = cmd
        if kind is Cancel:
            events: list[Event] = []
            self._cancel(c, events)
            return events
        if kind is Amend:
            return self._amend(c)
        if kind is CancelAll:
            return self._cancel_all(c)
        if kind is ListInstrument:
            return self._list_instrument(c)
        if kind in RISK_COMMANDS:
            return apply_risk_command(self, c)
        if kind is SetCreditChecks:
            return self._set_credit(c)
        if kind in ACCOUNT_COMMANDS:
            events = apply_account_command(self.ledger, c)
            if events and type(events[0]) is not OrderRejected and kind is not Transfer:
                self.configure_markets()  # a new asset: instruments naming it gain money
            return events
        return [
            OrderRejected(
                cmd.seq,
                getattr(cmd, "ts", 0),
                str(getattr(cmd, "account", "")),
                "",
                "",
                0,
                R.UNKNOWN_COMMAND,
            )
        ]

    # -- listing ------------------------------------------------------------------------

    def _list_instrument(self, cmd: ListInstrument) -> list[Event]:
        inst = cmd.instrument
        listed = self.instruments.get(inst.symbol)
        if listed == inst:
            return []
        reason = listing_problem(self.ledger.assets, listed, inst)
        if reason:
            return [OrderRejected(cmd.seq, cmd.ts, "", "", inst.symbol, REQ_LIST, int(reason))]
        cancels: list[Event] = []
        if listed is None:
            self._list(inst)
        else:  # an instrument listed before assets existed gains them (its Market is kept)
            self.instruments[inst.symbol] = inst
            market = self.markets[inst.symbol]
            market.configure(inst, self.ledger.assets, self.ledger.credit_checks)
            if market.credit is not None:
                self._reserve_resting(inst.symbol, cmd.seq, cmd.ts, cancels)
        return [
            InstrumentListed(
                cmd.seq,
                cmd.ts,
                inst.symbol,
                inst.tick_size,
                inst.lot_size,
                inst.min_qty,
                inst.max_qty,
                inst.base,
                inst.quote,
                inst.contract_size,
                inst.maker_fee_bps,
                inst.taker_fee_bps,
                inst.max_sweep_ticks,
                inst.max_sweep_bps,
            ),
            *cancels,
        ]

    # -- credit ---------------------------------------------------------------------------

    def _release(self, order: RestingOrder) -> None:
        money = self.markets[order.symbol].money
        assert money is not None, "only an instrument with assets reserves"
        release(self.ledger.balances, money, order)

    def _reserve(self, order: RestingOrder, money: Money, amount: int) -> None:
        """Set an open order's reservation to `amount`, moving the difference into held."""
        balance(self.ledger.balances, order.account, money.asset(order.side)).held += amount - order.reserved
        order.reserved = amount

    def _set_credit(self, cmd: SetCreditChecks) -> list[Event]:
        ledger = self.ledger
        fee_account = cmd.fee_account
        if not fee_account:
            # Journaled before settlement, when the switch was recorded but not enforced:
            # replayed as it acted (not at all). Start-up journals the switch again with
            # the fee account, and enforcement begins there (docs/accounts.md, old data).
            return []
        if cmd.enabled == ledger.credit_checks and fee_account == ledger.fee_account:
            return []
        if len(fee_account) > MAX_ACCOUNT_LEN:  # the sequencer stamps what a config gave
            return [
                OrderRejected(cmd.seq, cmd.ts, fee_account, "", "", REQ_ACCOUNTS_ADMIN, R.INVALID_ACCOUNT)
            ]
        ledger.fee_account = fee_account
        cancels: list[Event] = []
        changed = cmd.enabled != ledger.credit_checks
        ledger.credit_checks = cmd.enabled
        self.configure_markets()  # each market's Money anew: the credit switch, the fee account
        if changed:
            if cmd.enabled:
                self._reserve_resting("", cmd.seq, cmd.ts, cancels)
            else:  # a pure matching venue: nothing stays held
                for acct in self.accounts.values():
                    for order in acct.open.values():
                        if order.reserved:
                            self._release(order)
        return [CreditChecksChanged(cmd.seq, cmd.ts, cmd.enabled, fee_account, len(cancels)), *cancels]

    def _reserve_resting(self, symbol: str, seq: int, ts: int, events: list[Event]) -> None:
        """Credit checks begin for resting orders (of `symbol`, "" for all): each reserves,
        in order id order, or is cancelled (INSUFFICIENT_BALANCE) when its account cannot."""
        orders = sorted(
            (o for a in self.accounts.values() for o in a.open.values() if not symbol or o.symbol == symbol),
            key=lambda o: o.order_id,
        )
        balances = self.ledger.balances
        for order in orders:
            market = self.markets[order.symbol]
            money = market.money
            if money is None or order.reserved:
                continue
            need = money.reservation(order.side, order.price, order.leaves)
            if need > available(balances, order.account, money.asset(order.side)):
                side = market.bids if order.side == BUY else market.asks
                self.cancel_resting(order, side, C.INSUFFICIENT_BALANCE, seq, ts, events)
            else:
                self._reserve(order, money, need)

    def _position_problem(self, account: str, symbol: str, money: Money, qty: int, skip: int) -> int:
        """Position limit (risk, spot): the account's base balance in quantity units, plus its
        open buys in the symbol (but order `skip`), plus `qty`, beyond max_position."""
        lim = self.risk.effective(account, symbol)
        if lim is None or not lim.max_position:
            return 0
        b = self.ledger.balance(account, money.base)
        position = (b.total // money.contract_size if b is not None else 0) + qty
        acct = self.accounts.get(account)
        if acct is not None:
            position += sum(
                o.leaves
                for o in acct.open.values()
                if o.symbol == symbol and o.side == BUY and o.order_id != skip
            )
        return R.POSITION_LIMIT if position > lim.max_position else 0

    def _reject_new(self, cmd: NewOrder | ReplayNewOrder, reason: int, events: list[Event] | None) -> int:
        if events is not None:
            events.append(
                OrderRejected(
                    cmd.seq,
                    cmd.ts,
                    cmd.account,
                    cmd.client_order_id,
                    cmd.symbol,
                    REQ_NEW,
                    int(reason),
                )
            )
        return 1

    def _match(
        self,
        events: list[Event] | None,
        opp: BookSide,
        side: int,
        is_market: bool,
        limit: int,
        oid: int,
        account: str,
        stp: int,
        qty: int,
        symbol: str,
        seq: int,
        ts: int,
        money: Money | None,
    ) -> tuple[int, bool, int]:
        """The match loop, the only one: trades `qty` of an incoming order against the
        opposite side in price-time priority, with self-trade prevention. Its events go to
        `events`, or nowhere when it is None (replay). Returns the quantity left, whether
        self-trade prevention stopped the incoming order, and how many events there were.
        With `money` (credit checks on, an instrument with assets) each trade settles."""
        remaining = qty
        maker_fee = taker_fee = 0
        # With money, each trade settles the maker here, inlined (a call per trade cost as
        # much as the settlement itself), and the taker's balances and the fee account's
        # once per match, from these sums: integer sums, so every balance ends the same.
        taker: TradePair | None = None  # the incoming order's balances, at its first fill
        levels = opp.levels
        accounts = self.accounts
        traded = 0  # the last fill's price, kept for risk's price band once per call
        count = 0
        stopped = False
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
                        stopped = True
                        break
                    self.cancel_resting(maker, opp, C.SELF_TRADE, seq, ts, events)
                    count += 1
                    if stp == STP_BOTH:
                        stopped = True
                        break
                    if opp.best != price:  # that emptied the level
                        break
                    continue
                fill = remaining if remaining < mleaves else mleaves
                if money is not None:  # the maker's side (engine/core/settlement.py: the rules)
                    # The fees by settlement.fee_terms, the one rule: (amount * mul + up) // den
                    if money.simple:  # amount = price x qty, both rates +-1/den: mul is 1
                        amount = price * fill
                        maker_fee = (amount + money.maker_up) // money.maker_den
                        taker_fee = (amount + money.taker_up) // money.taker_den
                    else:
                        amount = price * fill * money.num if money.exact else money.amount(price, fill)
                        maker_fee = (amount * money.maker_mul + money.maker_up) // money.maker_den
                        taker_fee = (amount * money.taker_mul + money.taker_up) // money.taker_den
                    if taker is None:  # its first fill (set here: the plain path skips it)
                        try:  # subscripts, not `get` calls; a miss creates (settlement.funds)
                            taker = money.pairs[account]
                        except KeyError:
                            taker = funds(self.balances, money, account)
                        # Its quote amount and both sides' fees so far: the first fill's own
                        # (not sums from 0: each sum makes a new integer object).
                        paid = amount
                        taker_fees = taker_fee
                        maker_fees = maker_fee
                    else:
                        paid += amount
                        taker_fees += taker_fee
                        maker_fees += maker_fee
                    try:
                        _, mquote, mbase = money.pairs[maker.account]
                    except KeyError:
                        _, mquote, mbase = funds(self.balances, money, maker.account)
                    # The maker's share of its reservation, linear in lots: what `fill` reserved.
                    if is_buy:  # the maker sells: base held and paid, quote received
                        base_amount = fill * money.contract_size
                        if fill != mleaves:  # a filled maker leaves the book with its reservation
                            maker.reserved -= base_amount  # (a Struct's setattr: worth skipping)
                        mbase.held -= base_amount
                        mbase.total -= base_amount
                        mquote.total += amount - maker_fee
                    else:  # the maker buys: quote held and paid with its fee, base received
                        if fill == mleaves:  # all it still holds; it leaves the book
                            released = maker.reserved
                        else:
                            try:  # cached when it rested, unless cleared since
                                released = money.buy_lots[maker.price] * fill // money.lot
                            except KeyError:
                                released = money.reservation(BUY, maker.price, fill)
                            maker.reserved -= released
                        mquote.held -= released
                        mquote.total -= amount + maker_fee
                        mbase.total += fill * money.contract_size
                remaining -= fill
                mleaves -= fill
                maker.leaves = mleaves
                maker.filled += fill
                level.qty -= fill
                tid = self.next_trade_id
                self.next_trade_id = tid + 1
                traded = price
                maker_id = maker.order_id
                maker_account = maker.account
                count += 1
                if events is not None:
                    events.append(
                        Trade(
                            seq,
                            ts,
                            tid,
                            symbol,
                            price,
                            fill,
                            side,
                            maker_id,
                            maker_account,
                            mleaves,
                            oid,
                            account,
                            remaining,
                            maker_fee,
                            taker_fee,
                            money is not None,
                        )
                    )
                if not mleaves:
                    del orders[maker_id]
                    del accounts[maker_account].open[maker_id]
                    count += 1
                    if events is not None:
                        events.append(OrderDone(seq, ts, maker_id, maker_account, symbol, maker.filled))
                    if not orders:
                        opp.drop_level(price)
                        break
            if stopped:
                break
        if traded:
            self.last_price[symbol] = traded
            if taker is not None:  # the taker's side and the fee account's, summed
                assert money is not None
                _, tquote, tbase = taker
                base_amount = (qty - remaining) * money.contract_size
                if is_buy:
                    tquote.total -= paid + taker_fees
                    tbase.total += base_amount
                else:
                    tbase.total -= base_amount
                    tquote.total += paid - taker_fees
                fees = maker_fees + taker_fees
                if fees:  # each trade's two fees sum to >= 0: see engine/core/settlement.py
                    fee_balance, tally = money.fee_cells or fee_cells(self.ledger, money)
                    fee_balance.total += fees
                    tally.total += fees
        return remaining, stopped, count

    def _fok_fillable(
        self, opp: BookSide, side: int, is_market: bool, limit: int, account: str, stp: int, qty: int
    ) -> bool:
        """Whether a fill-or-kill order would fill completely, without changing any state."""
        need = qty
        is_buy = side == BUY
        for level in opp.iter_levels():
            price = level.price
            if not is_market and (price > limit if is_buy else price < limit):
                return False
            if stp == STP_NONE:
                need -= level.qty
            else:
                for maker in level.orders.values():
                    if maker.account == account:
                        if stp == STP_NEWEST or stp == STP_BOTH:
                            return False
                        continue  # cancel-oldest removes it: it fills nothing
                    need -= maker.leaves
                    if need <= 0:
                        return True
            if need <= 0:
                return True
        return False

    def cancel_resting(
        self, order: RestingOrder, side: BookSide, reason: int, seq: int, ts: int, events: list[Event] | None
    ) -> None:
        """Takes a resting order off its side and its account, appending its OrderCancelled
        to `events` (when not None). Public: risk cancels through it (a kill switch)."""
        leaves = order.leaves
        side.remove(order)
        del self.accounts[order.account].open[order.order_id]
        if order.reserved:
            self._release(order)
        if events is not None:
            events.append(
                OrderCancelled(
                    seq, ts, order.order_id, order.account, order.symbol, reason, leaves, order.filled
                )
            )

    # -- cancel, amend, cancel-all -------------------------------------------------------

    def _find_open(self, cmd: Cancel | ReplayCancel | Amend) -> tuple[RestingOrder | None, int]:
        """The account's open order named by id or client id, else (None, reject reason)."""
        acct = self.accounts.get(cmd.account)
        if acct is None:
            return None, R.UNKNOWN_ORDER
        oid = cmd.order_id
        if not oid:
            clid = cmd.client_order_id
            if not clid:
                return None, R.UNKNOWN_ORDER
            found = acct.live_clid(clid, self.next_order_id)
            if found is None:
                return None, R.UNKNOWN_ORDER
            oid = found
            order = acct.open.get(oid)
            # A client id replaced by an amend (FIX OrigClOrdID) no longer names the order.
            if order is None or order.client_order_id != clid:
                return None, R.ORDER_NOT_OPEN
            return order, 0
        order = acct.open.get(oid)
        return (order, 0) if order is not None else (None, R.UNKNOWN_ORDER)

    def _reject_target(
        self, cmd: Cancel | ReplayCancel | Amend, request: int, reason: int, symbol: str = ""
    ) -> list[Event]:
        return [
            OrderRejected(
                cmd.seq,
                cmd.ts,
                cmd.account,
                cmd.client_order_id,
                symbol,
                request,
                int(reason),
                cmd.order_id,
            )
        ]

    def _cancel(self, cmd: Cancel | ReplayCancel, events: list[Event] | None) -> int:
        """A cancel, sequenced: its one event goes to `events`, or nowhere when it is None
        (replay: it throws it away). Returns 1, the number of events."""
        acct = self.accounts.get(cmd.account)
        oid = cmd.order_id
        if acct is None or not oid:
            order, reason = self._find_open(cmd)
            if order is None:
                if events is not None:
                    events += self._reject_target(cmd, REQ_CANCEL, reason)
                return 1
            oid = order.order_id
            acct = self.accounts[order.account]
            del acct.open[oid]
        else:
            # Found and taken off the account's index in one probe.
            order = acct.open.pop(oid, None)
            if order is None:
                if events is not None:
                    events += self._reject_target(cmd, REQ_CANCEL, R.UNKNOWN_ORDER)
                return 1
        market = self.markets[order.symbol]
        side = market.bids if order.side == BUY else market.asks
        leaves = order.leaves
        # BookSide.remove, inlined: cancels are a third of all traffic.
        price = order.price
        level = side.levels[price]
        orders = level.orders
        del orders[oid]
        level.qty -= leaves
        if not orders:
            side.drop_level(price)
        reserved = order.reserved
        if reserved:  # release(), inlined; the order is dropped, so its `reserved` stays as is
            money = market.money
            assert money is not None, "only an instrument with assets reserves"
            try:  # a subscript, not a `get` call; a miss is an account holding one of the assets
                money.pairs[order.account][order.side].held -= reserved  # type: ignore[union-attr]  # side 1|2
            except KeyError:
                release(self.balances, money, order)
        if events is not None:
            events.append(
                OrderCancelled(
                    cmd.seq,
                    cmd.ts,
                    oid,
                    order.account,
                    order.symbol,
                    C.USER,
                    leaves,
                    order.filled,
                )
            )
        return 1

    def _cancel_all(self, cmd: CancelAll) -> list[Event]:
        symbol = cmd.symbol
        if symbol and symbol not in self.books:
            return [
                OrderRejected(cmd.seq, cmd.ts, cmd.account, "", symbol, REQ_CANCEL_ALL, int(R.UNKNOWN_SYMBOL))
            ]
        acct = self.accounts.get(cmd.account)
        events: list[Event] = []
        if acct is None:
            return events
        # Sorted by order id so the event order never depends on dict history (a restored
        # snapshot rebuilds the index in a different insertion order).
        targets = sorted(
            (o for o in acct.open.values() if not symbol or o.symbol == symbol),
            key=lambda o: o.order_id,
        )
        books = self.books
        for order in targets:
            book = books[order.symbol]
            side = book.bids if order.side == BUY else book.asks
            self.cancel_resting(order, side, C.CANCEL_ALL, cmd.seq, cmd.ts, events)
        return events

    def _amend(self, cmd: Amend) -> list[Event]:
        order, reason = self._find_open(cmd)
        if order is None:
            return self._reject_target(cmd, REQ_AMEND, reason)
        symbol = order.symbol
        inst = self.instruments[symbol]
        new_qty = cmd.new_qty or order.qty
        new_price = cmd.new_price or order.price
        new_clid = cmd.new_client_order_id
        acct = self.accounts[order.account]
        reason = 0
        if cmd.new_qty < 0:
            reason = R.INVALID_QUANTITY
        elif cmd.new_price < 0:
            reason = R.INVALID_PRICE
        elif new_qty % inst.lot_size:
            reason = R.QUANTITY_OFF_LOT
        elif new_qty < inst.min_qty:
            reason = R.QUANTITY_BELOW_MIN
        elif new_qty > inst.max_qty:
            reason = R.QUANTITY_ABOVE_MAX
        elif new_price % inst.tick_size:
            reason = R.PRICE_OFF_TICK
        elif new_qty <= order.filled:
            reason = R.AMEND_QUANTITY_NOT_ABOVE_FILLED
        elif new_clid and len(new_clid) > MAX_CLIENT_ORDER_ID_LEN:
            reason = R.INVALID_CLIENT_ORDER_ID
        elif (
            new_clid
            and new_clid != order.client_order_id
            and acct.live_clid(new_clid, self.next_order_id) is not None
        ):
            reason = R.DUPLICATE_CLIENT_ORDER_ID
        elif (
            new_qty == order.qty
            and new_price == order.price
            and (not new_clid or new_clid == order.client_order_id)
        ):
            reason = R.AMEND_NO_CHANGE
        book = self.books[symbol]
        is_buy = order.side == BUY
        own, opp = (book.bids, book.asks) if is_buy else (book.asks, book.bids)
        best = opp.best
        crosses = best is not None and (best <= new_price if is_buy else best >= new_price)
        if not reason and crosses and order.post_only:
            reason = R.POST_ONLY_WOULD_CROSS
        if not reason and self.risk_on and (new_price != order.price or new_qty > order.qty):
            reason = check_amend(self, order, new_qty, new_price)
        money = self.markets[symbol].credit
        if not reason and money is not None:
            if self.risk_on and is_buy and new_qty > order.qty:
                reason = self._position_problem(
                    order.account, symbol, money, new_qty - order.filled, order.order_id
                )
            # The new reservation less what it holds now must fit `available` (an amend
            # down always does): as for a new order, it covers any fills when it crosses.
            need = money.reservation(order.side, new_price, new_qty - order.filled)
            if not reason and need - order.reserved > available(
                self.ledger.balances, order.account, money.asset(order.side)
            ):
                reason = R.INSUFFICIENT_BALANCE
        if reason:
            return self._reject_target(cmd, REQ_AMEND, reason, symbol)

        seq = cmd.seq
        ts = cmd.ts
        oid = order.order_id
        if new_clid and new_clid != order.client_order_id:
            acct.by_clid[new_clid] = oid
            self.clid_expiry.queue.append(acct, new_clid)
            order.client_order_id = new_clid
        kept = new_price == order.price and new_qty <= order.qty
        if kept:
            # Quantity down (or only a new client id): keeps time priority.
            delta = order.qty - new_qty
            order.qty = new_qty
            order.leaves -= delta
            own.levels[order.price].qty -= delta
            if money is not None:
                self._reserve(order, money, money.reservation(order.side, new_price, order.leaves))
            leaves = order.leaves
        else:
            # Price change or quantity up: loses priority; may cross and trade as a taker.
            filled = order.filled
            own.remove(order)
            if order.reserved:
                self._release(order)  # it trades as a taker, paying from its total; then reserves anew
            leaves = new_qty - filled
        amended = OrderAmended(
            seq, ts, oid, order.account, order.client_order_id, symbol, new_price, new_qty, leaves, kept
        )
        if kept:
            return [amended]
        events: list[Event] = [amended]
        if crosses:
            remaining, stopped, _ = self._match(
                events,
                opp,
                order.side,
                False,
                new_price,
                oid,
                order.account,
                order.stp,
                leaves,
                symbol,
                seq,
                ts,
                money,
            )
            filled += leaves - remaining
            leaves = remaining
            if not leaves:
                del acct.open[oid]
                events.append(OrderDone(seq, ts, oid, order.account, symbol, filled))
                return events
            if stopped:
                del acct.open[oid]
                events.append(
                    OrderCancelled(seq, ts, oid, order.account, symbol, C.SELF_TRADE, leaves, filled)
                )
                return events
        moved = RestingOrder(
            oid,
            order.account,
            order.client_order_id,
            symbol,
            order.side,
            new_price,
            new_qty,
            leaves,
            filled,
            order.tif,
            order.post_only,
            order.stp,
            seq,
        )
        if money is not None:
            self._reserve(moved, money, money.reservation(moved.side, new_price, leaves))
        own.add(moved)
        acct.open[oid] = moved  # same key: the account index keeps its order
        return events
