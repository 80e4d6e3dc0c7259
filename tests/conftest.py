"""Shared helpers for the matching-core tests.

`Exchange` plays the sequencer: it stamps every command with the next `seq` and a fake
clock `ts`, applies it, checks that every event carries that seq/ts and that the engine is
internally consistent (`check_engine`) after every single command.

The test modules import the helpers directly (`from conftest import ...`); pytest puts this
directory on sys.path (rootdir-relative "prepend" import mode).
"""

from __future__ import annotations

import itertools

import msgspec
import pytest
from natsproc import nats_cluster, nats_link  # noqa: F401 (session fixtures: a real NATS cluster)

from engine.core.book import RestingOrder
from engine.core.commands import Amend, Cancel, CancelAll, NewOrder
from engine.core.domain import Instrument, OrderType, SelfTradePrevention, Side, TimeInForce
from engine.core.events import OrderAccepted, OrderCancelled, OrderDone, OrderRejected, Trade
from engine.core.invariants import check_engine
from engine.core.matcher import MatchingEngine
from engine.core.state import encode_state, export_state

BTC = "BTC-USD"
ETH = "ETH-USD"
SOL = "SOL-USD"  # min_qty above lot_size, so "below minimum" is reachable with a lot multiple

INSTRUMENTS = (
    Instrument(BTC, tick_size=5, lot_size=10, min_qty=10, max_qty=100_000),
    Instrument(ETH, tick_size=1, lot_size=1),
    Instrument(SOL, tick_size=1, lot_size=5, min_qty=50, max_qty=1_000),
)

BUY = Side.BUY
SELL = Side.SELL
LIMIT = OrderType.LIMIT
MARKET = OrderType.MARKET
GTC = TimeInForce.GTC
IOC = TimeInForce.IOC
FOK = TimeInForce.FOK
STP = SelfTradePrevention

T0 = 1_700_000_000_000_000_000  # fake clock start (ns)
TS_STEP = 1_000


def assert_consistent(engine: MatchingEngine) -> None:
    problems = check_engine(engine)
    assert problems == [], problems


def fingerprint(engine: MatchingEngine) -> bytes:
    """The encoded engine state minus `last_seq` (which every command advances, rejected or
    not): equal fingerprints mean a command changed nothing else."""
    state = export_state(engine)
    return encode_state(msgspec.structs.replace(state, last_seq=0))


def book_view(engine: MatchingEngine, symbol: str) -> dict[str, list[tuple[int, list[tuple[int, int]]]]]:
    """{"bids": [(price, [(order_id, leaves), ...]), ...], "asks": [...]}, best level first,
    time priority within a level. Read through `export_state` (the public view of the book),
    so it does not depend on how a level stores its queue."""
    state = export_state(engine)
    book = next(b for b in state.books if b.symbol == symbol)
    out: dict[str, list[tuple[int, list[tuple[int, int]]]]] = {}
    for name, orders in (("bids", book.bids), ("asks", book.asks)):
        levels: list[tuple[int, list[tuple[int, int]]]] = []
        for o in orders:
            if not levels or levels[-1][0] != o.price:
                levels.append((o.price, []))
            levels[-1][1].append((o.order_id, o.leaves))
        out[name] = levels
    return out


def resting(engine: MatchingEngine) -> dict[int, RestingOrder]:
    """Every resting order by id, read from the books (not the account index)."""
    return {
        o.order_id: o
        for book in export_state(engine).books
        for orders in (book.bids, book.asks)
        for o in orders
    }


def open_ids(engine: MatchingEngine, account: str) -> set[int]:
    acct = engine.accounts.get(account)
    return set(acct.open) if acct is not None else set()


def of_type(events: list, cls) -> list:
    return [e for e in events if type(e) is cls]


def kinds(events: list) -> list[str]:
    return [type(e).__name__ for e in events]


def encode_events(events: list) -> bytes:
    return msgspec.msgpack.encode(events)


class Exchange:
    """A MatchingEngine behind a fake sequencer, with terse order helpers."""

    def __init__(self, instruments=INSTRUMENTS, engine: MatchingEngine | None = None) -> None:
        self.engine = engine if engine is not None else MatchingEngine(instruments)
        self.seq = self.engine.last_seq
        self.ts = T0 + self.seq * TS_STEP
        self._clids = itertools.count(1)
        self.history: list[tuple[object, list]] = []

    # -- sequencing ----------------------------------------------------------------------

    def stamp(self, cmd):
        self.seq += 1
        self.ts += TS_STEP
        cmd.seq = self.seq
        cmd.ts = self.ts
        return cmd

    def apply(self, cmd) -> list:
        self.stamp(cmd)
        events = self.engine.apply(cmd)
        for ev in events:
            assert (ev.seq, ev.ts) == (cmd.seq, cmd.ts), f"{ev} does not carry seq/ts of {cmd}"
        assert_consistent(self.engine)
        self.history.append((cmd, events))
        return events

    # -- commands ------------------------------------------------------------------------

    def next_clid(self) -> str:
        return f"c{next(self._clids)}"

    def order(
        self,
        account: str,
        side: int,
        price: int,
        qty: int,
        *,
        symbol: str = BTC,
        order_type: int = LIMIT,
        tif: int = GTC,
        post_only: bool = False,
        stp: int = STP.CANCEL_NEWEST,
        clid: str | None = None,
    ) -> list:
        if clid is None:
            clid = self.next_clid()
        cmd = NewOrder(account, clid, symbol, side, order_type, price, qty, tif, post_only, stp)
        return self.apply(cmd)

    def buy(self, account: str, price: int, qty: int, **kw) -> list:
        return self.order(account, BUY, price, qty, **kw)

    def sell(self, account: str, price: int, qty: int, **kw) -> list:
        return self.order(account, SELL, price, qty, **kw)

    def market(self, account: str, side: int, qty: int, **kw) -> list:
        return self.order(account, side, 0, qty, order_type=MARKET, **kw)

    def place(self, account: str, side: int, price: int, qty: int, **kw) -> int:
        """A limit order expected to rest untouched; returns its order id."""
        events = self.order(account, side, price, qty, **kw)
        assert kinds(events) == ["OrderAccepted"], events
        return events[0].order_id

    def cancel(self, account: str, order_id: int = 0, client_order_id: str = "") -> list:
        return self.apply(Cancel(account, order_id, client_order_id))

    def amend(
        self,
        account: str,
        order_id: int = 0,
        client_order_id: str = "",
        *,
        new_qty: int = 0,
        new_price: int = 0,
        new_client_order_id: str = "",
    ) -> list:
        return self.apply(Amend(account, order_id, client_order_id, new_qty, new_price, new_client_order_id))

    def cancel_all(self, account: str, symbol: str = "") -> list:
        return self.apply(CancelAll(account, symbol))

    # -- views ---------------------------------------------------------------------------

    def book(self, symbol: str = BTC):
        return book_view(self.engine, symbol)

    def order_state(self, order_id: int) -> RestingOrder | None:
        return resting(self.engine).get(order_id)


@pytest.fixture
def ex():
    exchange = Exchange()
    yield exchange
    # Once more at the end of every test case (the helper also checks after each command,
    # but a test may poke the engine directly).
    assert_consistent(exchange.engine)


__all__ = [
    "BTC",
    "BUY",
    "ETH",
    "FOK",
    "GTC",
    "INSTRUMENTS",
    "IOC",
    "LIMIT",
    "MARKET",
    "SELL",
    "SOL",
    "STP",
    "Exchange",
    "OrderAccepted",
    "OrderCancelled",
    "OrderDone",
    "OrderRejected",
    "Trade",
    "assert_consistent",
    "book_view",
    "encode_events",
    "fingerprint",
    "kinds",
    "of_type",
    "open_ids",
    "resting",
]


@pytest.fixture
def window5(monkeypatch):
    """A client order id window of 5 orders, pruned every 2 (the rule's constants, made small;
    here so that every match path running the rule suite has it)."""
    from engine.core import client_ids

    monkeypatch.setattr(client_ids, "CLIENT_ORDER_ID_WINDOW", 5)
    monkeypatch.setattr(client_ids, "CLIENT_ORDER_ID_PRUNE_EVERY", 2)
