"""Property tests: random command sequences (several accounts, one or two symbols, limit and
market orders, every time in force, post-only, every STP mode, cancels and amends of live,
finished and made-up orders, cancel-all, and a sprinkling of invalid values).

`Simulation` keeps a model of every accepted order built from the events alone and checks,
after every command:
  * check_engine() is clean and no book is crossed;
  * accept/reject agrees with an independent validation oracle; a rejected command changes
    nothing but `last_seq`;
  * every trade: price = the maker's price, never worse than the taker's limit, makers taken
    strictly in price-time priority (every better-placed maker had already finished), the
    leaves reported in the trade match the model;
  * quantity conservation per order: qty == filled + cancelled + resting leaves, with
    exactly one terminal event (OrderCancelled or OrderDone) unless the order rests;
  * the engine's resting orders, account indexes and client-id registry equal the model's.
Two more properties: replaying the commands into a fresh engine is deterministic, and a
snapshot taken anywhere (encode -> decode -> restore) continues identically.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import pytest
from conftest import BTC, BUY, ETH, FOK, GTC, INSTRUMENTS, IOC, LIMIT, MARKET, SELL, STP, T0, TS_STEP
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.core.commands import Amend, Cancel, CancelAll, Command, NewOrder
from engine.core.domain import CancelReason, RejectReason
from engine.core.events import OrderAccepted, OrderAmended, OrderCancelled, OrderDone, OrderRejected, Trade
from engine.core.invariants import check_engine
from engine.core.matcher import MatchingEngine
from engine.core.state import decode_state, encode_state, export_state, restore_state, state_hash

R = RejectReason
C = CancelReason
ACCOUNTS = ("A", "B", "C")
GRID = {BTC: (100, 5, 10), ETH: (100, 1, 1)}  # base price, tick, lot
INST = {i.symbol: i for i in INSTRUMENTS}
VALID_TIF = (GTC, IOC, FOK)
VALID_STP = tuple(int(m) for m in STP)
MAX_ID_LEN = 64

PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------


@dataclass
class OrderModel:
    oid: int
    account: str
    symbol: str
    side: int
    order_type: int
    tif: int
    post_only: bool
    stp: int
    price: int
    qty: int
    clid: str
    queue_seq: int  # seq of acceptance or of the last priority-losing amend
    filled: int = 0
    cancelled: int = 0
    terminal: int = 0  # number of terminal events seen (must end at 0 or 1)

    @property
    def leaves(self) -> int:
        return self.qty - self.filled - self.cancelled


def priority_key(o: OrderModel, queue_seq: int) -> tuple[int, int]:
    """Smaller = matched earlier: lowest ask / highest bid, then oldest."""
    return (o.price if o.side == SELL else -o.price, queue_seq)


class Simulation:
    def __init__(self, symbols: tuple[str, ...]) -> None:
        self.symbols = symbols
        self.engine = MatchingEngine(INSTRUMENTS)
        self.seq = 0
        self.ts = T0
        self.orders: dict[int, OrderModel] = {}
        self.clids: dict[str, dict[str, int]] = {}  # account -> client id -> order id (ever)
        self.next_oid = 1
        self.next_trade_id = 1
        self.fresh = 0
        self.log: list[tuple[object, list]] = []
        self.hashes: list[str] = []

    # -- model queries ---------------------------------------------------------------------

    def open_orders(self) -> list[OrderModel]:
        return [o for o in self.orders.values() if not o.terminal]

    def best(self, symbol: str, side: int) -> int | None:
        prices = [o.price for o in self.open_orders() if o.symbol == symbol and o.side == side]
        if not prices:
            return None
        return max(prices) if side == BUY else min(prices)

    def would_cross(self, symbol: str, side: int, price: int) -> bool:
        best = self.best(symbol, SELL if side == BUY else BUY)
        return best is not None and (best <= price if side == BUY else best >= price)

    def resolve(self, account: str, order_id: int, clid: str) -> tuple[OrderModel | None, int]:
        """The target of a cancel/amend per the documented rules, else the reject reason."""
        if order_id:
            o = self.orders.get(order_id)
            if o is None or o.account != account or o.terminal:
                return None, R.UNKNOWN_ORDER
            return o, 0
        if not clid:
            return None, R.UNKNOWN_ORDER
        oid = self.clids.get(account, {}).get(clid)
        if oid is None:
            return None, R.UNKNOWN_ORDER
        o = self.orders[oid]
        # A client id replaced by an amend no longer names the order (FIX OrigClOrdID).
        return (None, R.ORDER_NOT_OPEN) if o.terminal or o.clid != clid else (o, 0)

    # -- building commands from abstract ops -------------------------------------------------

    def fresh_clid(self) -> str:
        self.fresh += 1
        return f"o{self.fresh}"

    def pick_clid(self, account: str | None, pick: int) -> str:
        pool = sorted(
            clid for acct, ids in self.clids.items() if account is None or acct == account for clid in ids
        )
        return pool[pick % len(pool)] if pool else f"zz{pick}"

    def pick_order_id(self, by: str, account: str, pick: int) -> tuple[str, int]:
        """(account, order id) for a cancel/amend. "open_id" names a live order of the
        account, or else of any account (and then acts as its owner)."""
        if by == "open_id":
            live = sorted((o.oid, o.account) for o in self.open_orders())
            own = [x for x in live if x[1] == account]
            pool = own or live
            if pool:
                oid, owner = pool[pick % len(pool)]
                return owner, oid
            by = "any_id"
        if by == "any_id" and self.next_oid > 1:
            return account, 1 + pick % (self.next_oid - 1)
        return account, self.next_oid + pick % 5  # never issued (yet)

    def build(self, op: dict):
        kind = op["op"]
        if kind == "new":
            return self.build_new(op)
        if kind == "cancel_all":
            sym = op["symbol"]
            if sym in ("sym0", "sym1"):
                sym = self.symbols[int(sym[-1]) % len(self.symbols)]
            return CancelAll(op["account"], sym)
        by, account, pick = op["by"], op["account"], op["pick"]
        order_id, clid = 0, ""
        if by in ("open_id", "any_id", "unknown_id"):
            account, order_id = self.pick_order_id(by, account, pick)
        elif by == "clid":
            clid = self.pick_clid(account, pick)
        elif by == "other_clid":
            clid = self.pick_clid(None, pick)
        elif by == "unknown_clid":
            clid = f"zz{pick}"
        if kind == "cancel":
            return Cancel(account, order_id, clid)
        target = self.orders.get(order_id) if order_id else None
        if clid and target is None:
            oid = self.clids.get(account, {}).get(clid)
            target = self.orders.get(oid) if oid else None
        symbol = target.symbol if target is not None else BTC
        base, tick, lot = GRID[symbol]
        new_qty = {
            "keep": 0,
            "lots": lot * op["lots"],
            "bad": (-lot, lot * op["lots"] + 1, INST[symbol].max_qty + lot)[op["lots"] % 3],
        }[op["qty"]]
        new_price = {
            "keep": 0,
            "tick": base + tick * op["tick"],
            "bad": (-tick, base + tick * op["tick"] + 1)[op["tick"] % 2],
        }[op["price"]]
        rename = op["rename"]
        new_clid = {
            "": "",
            "fresh": self.fresh_clid() if rename == "fresh" else "",
            "dup": self.pick_clid(account, pick),
            "long": "L" * (MAX_ID_LEN + 1),
        }[rename]
        return Amend(account, order_id, clid, new_qty, new_price, new_clid)

    def build_new(self, op: dict) -> NewOrder:
        symbol = self.symbols[op["sym"] % len(self.symbols)]
        base, tick, lot = GRID[symbol]
        account = op["account"]
        order_type = op["type"]
        price = base + tick * op["tick"] if order_type == LIMIT else 0
        qty = lot * op["lots"]
        side, tif, stp, post_only = op["side"], op["tif"], op["stp"], op["post_only"]
        clid = {
            "fresh": self.fresh_clid,
            "empty": lambda: "",
            "dup": lambda: self.pick_clid(account, op["tick"]),
            "long": lambda: "L" * (MAX_ID_LEN + 1),
        }[op["clid"]]()
        bad = op["bad"]
        if bad == "side7":
            side = 7
        elif bad == "side0":
            side = 0
        elif bad == "qty0":
            qty = 0
        elif bad == "qty_neg":
            qty = -lot
        elif bad == "qty_off_lot":
            qty += 1
        elif bad == "qty_big":
            qty = INST[symbol].max_qty + lot
        elif bad == "price0":
            price = 0
        elif bad == "price_neg":
            price = -tick
        elif bad == "price_off_tick":
            price += 1
        elif bad == "market_price":
            order_type, price = MARKET, base
        elif bad == "type7":
            order_type = 7
        elif bad == "tif":
            tif = 7
        elif bad == "tif2":
            tif = 2
        elif bad == "stp":
            stp = 9
        elif bad == "stp_neg":
            stp = -1
        elif bad == "acct_empty":
            account = ""
        elif bad == "acct_long":
            account = "a" * (MAX_ID_LEN + 1)
        elif bad == "symbol":
            symbol = "NOPE-USD"
        return NewOrder(account, clid, symbol, side, order_type, price, qty, tif, post_only, stp)

    # -- oracles -----------------------------------------------------------------------------

    def expect_new(self, cmd: NewOrder) -> set[int]:
        """Acceptable reject reasons; empty = must be accepted."""
        inst = INST.get(cmd.symbol) if cmd.symbol in self.engine.instruments else None
        if inst is None:
            return {R.UNKNOWN_SYMBOL}
        v: set[int] = set()
        if cmd.side not in (BUY, SELL):
            v.add(R.INVALID_SIDE)
        if cmd.qty <= 0:
            v.add(R.INVALID_QUANTITY)
        if cmd.qty % inst.lot_size:
            v.add(R.QUANTITY_OFF_LOT)
        if cmd.qty < inst.min_qty:
            v.add(R.QUANTITY_BELOW_MIN)
        if cmd.qty > inst.max_qty:
            v.add(R.QUANTITY_ABOVE_MAX)
        if cmd.order_type == LIMIT:
            if cmd.price <= 0:
                v.add(R.INVALID_PRICE)
            if cmd.price % inst.tick_size:
                v.add(R.PRICE_OFF_TICK)
        elif cmd.order_type == MARKET:
            if cmd.price != 0:
                v.add(R.MARKET_ORDER_WITH_PRICE)
        else:
            v.add(R.INVALID_ORDER_TYPE)
        if cmd.tif not in VALID_TIF:
            v.add(R.INVALID_TIME_IN_FORCE)
        if cmd.stp not in VALID_STP:
            v.add(R.INVALID_STP_MODE)
        if cmd.post_only and (cmd.order_type != LIMIT or cmd.tif != GTC):
            v.add(R.POST_ONLY_NOT_LIMIT_GTC)
        if not cmd.account or len(cmd.account) > MAX_ID_LEN:
            v.add(R.INVALID_ACCOUNT)
        if len(cmd.client_order_id) > MAX_ID_LEN:
            v.add(R.INVALID_CLIENT_ORDER_ID)
        if v:
            return v
        if cmd.client_order_id and cmd.client_order_id in self.clids.get(cmd.account, {}):
            v.add(R.DUPLICATE_CLIENT_ORDER_ID)
        if cmd.post_only and self.would_cross(cmd.symbol, cmd.side, cmd.price):
            v.add(R.POST_ONLY_WOULD_CROSS)
        return v

    def expect_amend(self, cmd: Amend, o: OrderModel) -> set[int]:
        inst = INST[o.symbol]
        qty = cmd.new_qty or o.qty
        price = cmd.new_price or o.price
        new_clid = cmd.new_client_order_id
        v: set[int] = set()
        if cmd.new_qty < 0:
            v.add(R.INVALID_QUANTITY)
        if cmd.new_price < 0:
            v.add(R.INVALID_PRICE)
        if qty % inst.lot_size:
            v.add(R.QUANTITY_OFF_LOT)
        if qty < inst.min_qty:
            v.add(R.QUANTITY_BELOW_MIN)
        if qty > inst.max_qty:
            v.add(R.QUANTITY_ABOVE_MAX)
        if price % inst.tick_size:
            v.add(R.PRICE_OFF_TICK)
        if qty <= o.filled:
            v.add(R.AMEND_QUANTITY_NOT_ABOVE_FILLED)
        if len(new_clid) > MAX_ID_LEN:
            v.add(R.INVALID_CLIENT_ORDER_ID)
        if new_clid and new_clid != o.clid and new_clid in self.clids[o.account]:
            v.add(R.DUPLICATE_CLIENT_ORDER_ID)
        if qty == o.qty and price == o.price and new_clid in ("", o.clid):
            v.add(R.AMEND_NO_CHANGE)
        if not v and o.post_only and self.would_cross(o.symbol, o.side, price):
            v.add(R.POST_ONLY_WOULD_CROSS)
        return v

    # -- one step ----------------------------------------------------------------------------

    def step(self, op: dict) -> list:
        return self.apply(self.build(op))

    def apply(self, cmd) -> list:
        self.seq += 1
        self.ts += TS_STEP
        cmd.seq, cmd.ts = self.seq, self.ts
        before = self.fingerprint()
        pre_open = {o.oid: o.queue_seq for o in self.open_orders()}
        expected, target = self.expect(cmd)

        events = self.engine.apply(cmd)

        problems = check_engine(self.engine)
        assert problems == [], problems
        for ev in events:
            assert (ev.seq, ev.ts) == (cmd.seq, cmd.ts), ev
        rejected = [e for e in events if type(e) is OrderRejected]
        if rejected:
            assert len(events) == 1, events
            rej = rejected[0]
            assert expected, f"{cmd} rejected {R(rej.reason).name}, oracle expects acceptance"
            assert rej.reason in expected, (
                f"{cmd}: reason {R(rej.reason).name} not in {sorted(R(r).name for r in expected)}"
            )
            assert (rej.account, rej.client_order_id) == (cmd.account, getattr(cmd, "client_order_id", ""))
            assert self.fingerprint() == before, "a rejected command changed the engine state"
        else:
            assert not expected, f"{cmd} accepted ({events}), oracle expects {expected}"
        self.absorb(cmd, events, pre_open, target)
        self.compare_with_engine()
        self.log.append((cmd, events))
        self.hashes.append(state_hash(self.engine))
        return events

    def fingerprint(self) -> bytes:
        return encode_state(msgspec.structs.replace(export_state(self.engine), last_seq=0))

    def expect(self, cmd) -> tuple[set[int], OrderModel | None]:
        if type(cmd) is NewOrder:
            return self.expect_new(cmd), None
        if type(cmd) is CancelAll:
            unknown = cmd.symbol and cmd.symbol not in self.engine.instruments
            return ({R.UNKNOWN_SYMBOL} if unknown else set()), None
        target, reason = self.resolve(cmd.account, cmd.order_id, cmd.client_order_id)
        if target is None:
            return {reason}, None
        if type(cmd) is Amend:
            return self.expect_amend(cmd, target), target
        return set(), target

    # -- folding events into the model -------------------------------------------------------

    def absorb(self, cmd, events: list, pre_open: dict[int, int], target: OrderModel | None) -> None:
        taker: OrderModel | None = None
        last_key: tuple[int, int] | None = None
        for ev in events:
            kind = type(ev)
            if kind is OrderAccepted:
                assert type(cmd) is NewOrder and taker is None
                assert ev.order_id == self.next_oid, "order ids must be consecutive"
                self.next_oid += 1
                assert (ev.account, ev.client_order_id, ev.symbol, ev.side, ev.order_type, ev.tif) == (
                    cmd.account,
                    cmd.client_order_id,
                    cmd.symbol,
                    cmd.side,
                    cmd.order_type,
                    cmd.tif,
                )
                assert (ev.price, ev.qty) == (cmd.price, cmd.qty)
                taker = self.orders[ev.order_id] = OrderModel(
                    ev.order_id,
                    cmd.account,
                    cmd.symbol,
                    cmd.side,
                    cmd.order_type,
                    cmd.tif,
                    cmd.post_only,
                    cmd.stp,
                    cmd.price,
                    cmd.qty,
                    cmd.client_order_id,
                    cmd.seq,
                )
                if cmd.client_order_id:
                    self.clids.setdefault(cmd.account, {})[cmd.client_order_id] = ev.order_id
                else:
                    self.clids.setdefault(cmd.account, {})
            elif kind is OrderAmended:
                assert type(cmd) is Amend and target is not None and ev.order_id == target.oid
                assert taker is None and not target.terminal
                o = taker = target
                assert (ev.account, ev.symbol) == (o.account, o.symbol)
                expect_kept = ev.price == o.price and ev.qty <= o.qty
                assert ev.priority_kept == expect_kept, (ev, o)
                assert ev.qty == (cmd.new_qty or o.qty) and ev.price == (cmd.new_price or o.price)
                if cmd.new_client_order_id:
                    assert ev.client_order_id == cmd.new_client_order_id
                    self.clids[o.account][cmd.new_client_order_id] = o.oid
                else:
                    assert ev.client_order_id == o.clid
                o.qty, o.price, o.clid = ev.qty, ev.price, ev.client_order_id
                if not ev.priority_kept:
                    o.queue_seq = cmd.seq
                assert ev.leaves == o.leaves > 0
            elif kind is Trade:
                last_key = self.absorb_trade(ev, taker, pre_open, last_key)
            elif kind is OrderCancelled:
                o = self.orders[ev.order_id]
                assert not o.terminal, f"second terminal event for {o}"
                assert (ev.account, ev.symbol) == (o.account, o.symbol)
                assert ev.cancelled_qty == o.leaves > 0, (ev, o)
                assert ev.filled_qty == o.filled
                self.check_cancel_reason(cmd, ev, o, taker)
                o.cancelled = ev.cancelled_qty
                o.terminal += 1
            elif kind is OrderDone:
                o = self.orders[ev.order_id]
                assert not o.terminal, f"second terminal event for {o}"
                assert (ev.account, ev.symbol) == (o.account, o.symbol)
                assert ev.filled_qty == o.filled == o.qty, (ev, o)
                o.terminal += 1
            else:
                assert kind is OrderRejected, ev

        if type(cmd) is Cancel and target is not None:
            assert [(type(e), e.order_id) for e in events] == [(OrderCancelled, target.oid)]
        if type(cmd) is CancelAll and (not events or type(events[0]) is OrderCancelled):
            expected_ids = sorted(
                oid
                for oid in pre_open
                if self.orders[oid].account == cmd.account
                and (not cmd.symbol or self.orders[oid].symbol == cmd.symbol)
            )
            assert [e.order_id for e in events] == expected_ids
        if taker is not None:
            self.check_taker_outcome(cmd, events, taker)

    def absorb_trade(
        self, ev: Trade, taker: OrderModel | None, pre_open: dict[int, int], last_key: tuple[int, int] | None
    ) -> tuple[int, int]:
        assert taker is not None and ev.taker_order_id == taker.oid, "trade without this command's taker"
        m = self.orders[ev.maker_order_id]
        assert m.oid in pre_open and not m.terminal, f"maker {m} was not resting before the command"
        assert ev.trade_id == self.next_trade_id
        self.next_trade_id += 1
        assert ev.qty > 0
        assert ev.symbol == m.symbol == taker.symbol
        assert m.side != taker.side and ev.aggressor_side == taker.side
        assert (ev.maker_account, ev.taker_account) == (m.account, taker.account)
        assert ev.price == m.price, "trade price must be the maker's price"
        if taker.order_type == LIMIT:
            worse = ev.price > taker.price if taker.side == BUY else ev.price < taker.price
            assert not worse, f"trade at {ev.price} through the taker's limit {taker.price}"
        if m.account == taker.account:
            assert taker.stp == STP.NONE, "self-trade despite self-trade prevention"
        # Price-time priority: every maker placed ahead of this one had already finished.
        key = priority_key(m, pre_open[m.oid])
        for oid, queue_seq in pre_open.items():
            o = self.orders[oid]
            same_side = o.symbol == m.symbol and o.side == m.side and oid != m.oid
            if same_side and priority_key(o, queue_seq) < key:
                assert o.terminal, f"trade with {m} while better-placed {o} still rests"
        assert last_key is None or key > last_key, "makers out of priority order within a command"
        m.filled += ev.qty
        taker.filled += ev.qty
        assert ev.maker_leaves == m.leaves >= 0
        assert ev.taker_leaves == taker.leaves >= 0
        return key

    def check_cancel_reason(self, cmd, ev: OrderCancelled, o: OrderModel, taker: OrderModel | None) -> None:
        reason = ev.reason
        if type(cmd) is Cancel:
            assert reason == C.USER
        elif type(cmd) is CancelAll:
            assert reason == C.CANCEL_ALL and o.account == cmd.account
        elif o is taker:
            allowed = {C.SELF_TRADE}
            if o.order_type == MARKET:
                allowed.add(C.NO_LIQUIDITY)
                if o.tif == FOK:
                    allowed.add(C.FOK_NOT_FILLABLE)
            elif o.tif == IOC:
                allowed.add(C.IOC_REMAINDER)
            elif o.tif == FOK:
                allowed.add(C.FOK_NOT_FILLABLE)
            assert reason in allowed, (ev, o)
            if reason == C.SELF_TRADE:
                assert o.stp in (STP.CANCEL_NEWEST, STP.CANCEL_BOTH)
        else:  # a maker removed by the taker's self-trade prevention
            assert taker is not None and reason == C.SELF_TRADE, (ev, o)
            assert o.account == taker.account and taker.stp in (STP.CANCEL_OLDEST, STP.CANCEL_BOTH)

    def check_taker_outcome(self, cmd, events: list, o: OrderModel) -> None:
        if o.order_type == MARKET or o.tif != GTC:
            assert o.terminal == 1, f"{o} must not rest"
        if o.tif == FOK:
            assert o.filled in (0, o.qty), "FOK filled partially"
            if o.filled == 0 and o.terminal:
                assert [type(e) for e in events] == [OrderAccepted, OrderCancelled], events
        if o.post_only:
            assert not any(type(e) is Trade for e in events), "post-only order traded"
        last = events[-1]
        stopped = type(last) is OrderCancelled and last.order_id == o.oid and last.reason == C.SELF_TRADE
        if o.leaves and not stopped and not (o.tif == FOK and o.filled == 0):
            # The taker stopped short: nothing it could still trade with may be left.
            opp = SELL if o.side == BUY else BUY
            if o.order_type == MARKET:
                assert self.best(o.symbol, opp) is None, f"{o} gave up with liquidity left"
            else:
                assert not self.would_cross(o.symbol, o.side, o.price), f"{o} stopped while it still crosses"

    # -- model vs engine ---------------------------------------------------------------------

    def compare_with_engine(self) -> None:
        state = export_state(self.engine)
        assert state.next_order_id == self.next_oid
        assert state.next_trade_id == self.next_trade_id
        engine_open = {}
        for book in state.books:
            for side_orders in (book.bids, book.asks):
                prev = None
                for o in side_orders:
                    engine_open[o.order_id] = o
                    key = priority_key(self.orders[o.order_id], o.seq)
                    assert prev is None or key > prev, "export is not in price-time priority order"
                    prev = key
            if book.bids and book.asks:
                assert book.bids[0].price < book.asks[0].price, f"crossed book {book.symbol}"
        model_open = {o.oid: o for o in self.open_orders()}
        assert set(engine_open) == set(model_open), (sorted(engine_open), sorted(model_open))
        for oid, m in model_open.items():
            e = engine_open[oid]
            assert (e.account, e.client_order_id, e.symbol, e.side, e.price) == (
                m.account,
                m.clid,
                m.symbol,
                m.side,
                m.price,
            )
            assert (e.qty, e.filled, e.leaves, e.seq) == (m.qty, m.filled, m.leaves, m.queue_seq), (e, m)
            assert (e.tif, e.post_only, e.stp) == (GTC, m.post_only, m.stp)
            assert m.leaves > 0
        for m in self.orders.values():
            assert m.terminal in (0, 1)
            resting_leaves = engine_open[m.oid].leaves if m.oid in engine_open else 0
            assert m.qty == m.filled + m.cancelled + resting_leaves, m  # conservation
        for name, acct in self.engine.accounts.items():
            assert set(acct.open) == {oid for oid, m in model_open.items() if m.account == name}
        assert {a.account: dict(a.client_order_ids) for a in state.accounts} == self.clids


# ---------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------

MUTATIONS = [
    "side7",
    "side0",
    "qty0",
    "qty_neg",
    "qty_off_lot",
    "qty_big",
    "price0",
    "price_neg",
    "price_off_tick",
    "market_price",
    "type7",
    "tif",
    "tif2",
    "stp",
    "stp_neg",
    "acct_empty",
    "acct_long",
    "symbol",
]

accounts = st.sampled_from(ACCOUNTS)

new_ops = st.fixed_dictionaries(
    {
        "op": st.just("new"),
        "account": accounts,
        "sym": st.integers(0, 1),
        "side": st.sampled_from([BUY, SELL]),
        "type": st.sampled_from([LIMIT, LIMIT, LIMIT, MARKET]),
        "tick": st.integers(0, 8),
        "lots": st.integers(1, 8),
        "tif": st.sampled_from([GTC, GTC, GTC, IOC, FOK]),
        "post_only": st.sampled_from([False] * 5 + [True]),
        "stp": st.sampled_from(VALID_STP),
        "clid": st.sampled_from(["fresh"] * 12 + ["empty", "empty", "dup", "long"]),
        "bad": st.sampled_from([None] * 100 + MUTATIONS),  # ~15% carry one invalid value
    }
)
cancel_ops = st.fixed_dictionaries(
    {
        "op": st.just("cancel"),
        "account": accounts,
        "by": st.sampled_from(
            [
                "open_id",
                "open_id",
                "open_id",
                "any_id",
                "clid",
                "clid",
                "other_clid",
                "unknown_id",
                "unknown_clid",
                "none",
            ]
        ),
        "pick": st.integers(0, 1_000),
    }
)
amend_ops = st.fixed_dictionaries(
    {
        "op": st.just("amend"),
        "account": accounts,
        "by": st.sampled_from(["open_id"] * 5 + ["clid", "any_id", "unknown_id", "other_clid"]),
        "pick": st.integers(0, 1_000),
        "qty": st.sampled_from(["keep", "keep", "lots", "lots", "lots", "bad"]),
        "lots": st.integers(1, 10),
        "price": st.sampled_from(["keep", "keep", "keep", "tick", "tick", "bad"]),
        "tick": st.integers(0, 8),
        "rename": st.sampled_from([""] * 8 + ["fresh", "fresh", "dup", "long"]),
    }
)
cancel_all_ops = st.fixed_dictionaries(
    {
        "op": st.just("cancel_all"),
        "account": st.sampled_from([*ACCOUNTS, "nobody"]),
        "symbol": st.sampled_from(["", "", "sym0", "sym1", "NOPE-USD"]),
    }
)
# Weighted mix: half new orders (st.one_of would treat repeated branches as one).
OP_MIX = ("new",) * 10 + ("cancel",) * 3 + ("amend",) * 5 + ("cancel_all",)
OP_STRATEGIES = {"new": new_ops, "cancel": cancel_ops, "amend": amend_ops, "cancel_all": cancel_all_ops}
ops = st.sampled_from(OP_MIX).flatmap(OP_STRATEGIES.__getitem__)
# Hypothesis sizes lists around min_size; the long branch gives a deep book, the short one
# lets a failure shrink to a handful of commands.
scripts = st.one_of(st.lists(ops, min_size=1, max_size=8), st.lists(ops, min_size=25, max_size=80))
symbol_sets = st.sampled_from([(BTC,), (ETH,), (BTC, ETH)])


def run(symbols: tuple[str, ...], script: list[dict]) -> Simulation:
    sim = Simulation(symbols)
    for op in script:
        sim.step(op)
    return sim


# ---------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(symbols=symbol_sets, script=scripts)
def test_random_sequences_keep_every_invariant(symbols, script):
    sim = run(symbols, script)
    # The model and the engine agree (checked after every command); the run exercised it.
    assert len(sim.log) == len(script)
    assert sim.engine.last_seq == len(script)


@PROPERTY_SETTINGS
@given(symbols=symbol_sets, script=scripts, cut=st.integers(0, 60))
def test_replay_is_deterministic_and_snapshots_continue_identically(symbols, script, cut):
    sim = run(symbols, script)
    # The journal view: commands survive the wire encoding and replay to identical events.
    wire = msgspec.msgpack.encode([cmd for cmd, _ in sim.log])
    commands = msgspec.msgpack.decode(wire, type=list[Command])
    cut %= len(commands) + 1

    replay = MatchingEngine(INSTRUMENTS)
    restored: MatchingEngine | None = None
    for i, cmd in enumerate(commands):
        if i == cut:
            restored = snapshot_round_trip(replay)
        events = replay.apply(cmd)
        assert msgspec.msgpack.encode(events) == msgspec.msgpack.encode(sim.log[i][1]), f"command {i}"
        assert state_hash(replay) == sim.hashes[i]
        if restored is not None:
            assert msgspec.msgpack.encode(restored.apply(cmd)) == msgspec.msgpack.encode(events)
            assert check_engine(restored) == []
            assert state_hash(restored) == sim.hashes[i]
    if restored is None:  # cut after the last command
        restored = snapshot_round_trip(replay)
    assert state_hash(restored) == state_hash(replay) == state_hash(sim.engine)
    assert encode_state(export_state(restored)) == encode_state(export_state(sim.engine))


def snapshot_round_trip(engine: MatchingEngine) -> MatchingEngine:
    data = encode_state(export_state(engine))
    restored = restore_state(decode_state(data))
    assert check_engine(restored) == []
    assert state_hash(restored) == state_hash(engine)
    assert encode_state(export_state(restored)) == data
    return restored


@settings(max_examples=100, deadline=None)
@given(symbols=symbol_sets, script=st.lists(new_ops, min_size=1, max_size=40))
def test_order_flow_conserves_quantity_per_account_and_symbol(symbols, script):
    """Across all trades, what buyers bought equals what sellers sold, per symbol; and each
    account's net position equals the sum of its fills by side."""
    sim = run(symbols, script)
    bought: dict[tuple[str, str], int] = {}
    sold: dict[tuple[str, str], int] = {}
    for _, events in sim.log:
        for t in events:
            if type(t) is Trade:
                buyer = t.taker_account if t.aggressor_side == BUY else t.maker_account
                seller = t.maker_account if t.aggressor_side == BUY else t.taker_account
                bought[(buyer, t.symbol)] = bought.get((buyer, t.symbol), 0) + t.qty
                sold[(seller, t.symbol)] = sold.get((seller, t.symbol), 0) + t.qty
    for symbol in symbols:
        assert sum(q for (_, s), q in bought.items() if s == symbol) == sum(
            q for (_, s), q in sold.items() if s == symbol
        )
    # Fills per account and side, from the order models, equal the trade tallies.
    for (account, symbol), qty in bought.items():
        assert qty == sum(
            o.filled for o in sim.orders.values() if (o.account, o.symbol, o.side) == (account, symbol, BUY)
        )
    for (account, symbol), qty in sold.items():
        assert qty == sum(
            o.filled for o in sim.orders.values() if (o.account, o.symbol, o.side) == (account, symbol, SELL)
        )


def test_model_catches_a_broken_engine():
    """The harness has teeth: a tampered resting quantity is caught by the model."""
    sim = Simulation((BTC,))
    sim.apply(NewOrder("A", "x", BTC, SELL, LIMIT, 100, 30))
    sim.compare_with_engine()  # sound so far
    next(iter(sim.engine.accounts["A"].open.values())).filled += 10  # corrupt the engine
    with pytest.raises(AssertionError):
        sim.compare_with_engine()
