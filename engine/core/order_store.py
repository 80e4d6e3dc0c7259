"""The order store: a read model of orders built from the durable events, for order
queries (`GET /v1/orders/{id}`), open-order lists and recent trades. Open orders are all
kept; the most recent finished ones in full (with their fills), up to a bound; older ones
go on as compact records in the finished-order index (engine/order_index.py), when there
is one, and the journal holds the full history."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from engine.core.batch_events import BatchEvents
from engine.core.commands import Command
from engine.core.domain import CancelReason, OrderType, RejectReason, Side, TimeInForce
from engine.core.events import (
    Event,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderDone,
    OrderRejected,
    Trade,
)
from engine.core.matcher import MatchingEngine

OPEN = "open"
FILLED = "filled"
CANCELLED = "cancelled"


class Fill(msgspec.Struct, gc=False):
    trade_id: int
    price: int
    qty: int
    seq: int
    ts: int
    liquidity: str  # "maker" or "taker"

    def to_json(self) -> dict[str, Any]:
        return {
            "trade_id": self.trade_id,
            "price": self.price,
            "qty": self.qty,
            "seq": self.seq,
            "ts": self.ts,
            "liquidity": self.liquidity,
        }


class OrderView(msgspec.Struct, gc=False):
    """Untracked by the garbage collector (gc=False, fills a tuple): a hundred thousand of
    these must not make every full collection a multi-millisecond pause."""

    order_id: int
    account: str
    client_order_id: str
    symbol: str
    side: int
    order_type: int
    tif: int
    price: int
    qty: int
    leaves: int
    filled: int = 0
    status: str = OPEN
    cancel_reason: int = 0
    accepted_seq: int = 0
    accepted_ts: int = 0
    updated_seq: int = 0
    updated_ts: int = 0
    fills: tuple[Fill, ...] | None = ()  # None: a compact record (the index keeps no fills)
    trace_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "account": self.account,
            "client_order_id": self.client_order_id,
            "symbol": self.symbol,
            "side": Side(self.side).name.lower(),
            "type": OrderType(self.order_type).name.lower(),
            "tif": TimeInForce(self.tif).name.lower(),
            "price": self.price,
            "qty": self.qty,
            "leaves": self.leaves,
            "filled": self.filled,
            "status": self.status,
            "cancel_reason": CancelReason(self.cancel_reason).name.lower() if self.cancel_reason else None,
            "accepted_seq": self.accepted_seq,
            "accepted_ts": self.accepted_ts,
            "updated_seq": self.updated_seq,
            "updated_ts": self.updated_ts,
            "fills": None if self.fills is None else [f.to_json() for f in self.fills],
            "trace_id": self.trace_id,
        }


def reject_reason_name(code: int) -> str:
    try:
        return RejectReason(code).name
    except ValueError:
        return f"REASON_{code}"


class OrderIndex(Protocol):
    """Where finished views go on once evicted from `done`, compacted
    (engine.order_index.FinishedOrders: outside the core, it may read the journal)."""

    @property
    def window_lo(self) -> int: ...
    def add(self, view: OrderView) -> None: ...
    def get(self, order_id: int) -> OrderView | None: ...
    def close(self) -> None: ...


class OrderStore:
    def __init__(
        self, keep_done: int = 100_000, keep_trades: int = 1_000, index: OrderIndex | None = None
    ) -> None:
        self.orders: dict[int, OrderView] = {}  # open orders
        self.done: OrderedDict[int, OrderView] = OrderedDict()  # most recent last
        self.keep_done = keep_done
        # engine.order_index.FinishedOrders: where views evicted from `done` go on, compacted.
        self.index = index
        self.keep_trades = keep_trades
        self.trades: dict[str, deque[Trade]] = {}
        # seq -> trace id for orders that came without one (the node's, set by the app).
        # Derived when a view is shown, never per order on the order path.
        self.derive_trace_id: Callable[[int], str] | None = None

    def seed_open_orders(self, engine: MatchingEngine) -> int:
        """After recovery: every resting order as an open view (their fills before the
        restart are in the journal, not here). The acceptance seq is left unknown (0): a
        resting order's `seq` is its time priority, which an amend moves, and the trace id
        is derived from the acceptance seq (or was journaled with the order), so guessing
        would name the wrong trace. The trace lookup reads such orders from the journal."""
        n = 0
        for account in engine.accounts.values():
            for o in account.open.values():
                self.orders[o.order_id] = OrderView(
                    o.order_id,
                    o.account,
                    o.client_order_id,
                    o.symbol,
                    o.side,
                    2,
                    o.tif,
                    o.price,
                    o.qty,
                    o.leaves,
                    o.filled,
                    updated_seq=o.seq,
                )
                n += 1
        return n

    def trace_id(self, view: OrderView) -> str:
        """The caller's trace id, else the one derived from the acceptance seq."""
        if view.trace_id or self.derive_trace_id is None or not view.accepted_seq:
            return view.trace_id
        return self.derive_trace_id(view.accepted_seq)

    def json(self, view: OrderView) -> dict[str, Any]:
        body = view.to_json()
        body["trace_id"] = self.trace_id(view)
        return body

    def get(self, order_id: int) -> OrderView | None:
        """An open order or a recent finished one, in full (with its fills)."""
        return self.orders.get(order_id) or self.done.get(order_id)

    def find(self, order_id: int) -> OrderView | None:
        """An open order, else a finished one within the index's lookup window: in full when
        recent, else the index's compact record (fills None)."""
        view = self.orders.get(order_id)
        if view is not None or self.index is None:
            return view or self.done.get(order_id)
        if order_id < self.index.window_lo:
            return None  # evicted, even while its full view is still among the recent ones
        return self.done.get(order_id) or self.index.get(order_id)

    def flush_done(self) -> None:
        """Move every recent finished view into the index (a rebuild's last step)."""
        while self.done and self.index is not None:
            self.index.add(self.done.popitem(last=False)[1])

    def open_orders(self, account: str, symbol: str = "") -> list[OrderView]:
        return [
            o for o in self.orders.values() if o.account == account and (not symbol or o.symbol == symbol)
        ]

    def recent_trades(self, symbol: str, limit: int = 100) -> list[Trade]:
        trades = self.trades.get(symbol)
        return list(trades)[-limit:] if trades else []

    def _finish(self, view: OrderView, status: str) -> None:
        view.status = status
        self.orders.pop(view.order_id, None)
        self.done[view.order_id] = view
        if len(self.done) > self.keep_done:
            evicted = self.done.popitem(last=False)[1]
            if self.index is not None:
                self.index.add(evicted)

    def on_batch(self, commands: list[Command], results: list[list[Event]]) -> None:
        self.on_events(commands, results, BatchEvents(results))

    def on_events(self, commands: list[Command], results: list[list[Event]], split: BatchEvents) -> None:
        """Apply a durable batch from its events split by type (the service's shared walk).
        Per type is the same as in order (an order is accepted before it trades and trades
        before it is done or cancelled) except for amends, which set the quantity a later
        fill changes: a batch holding any is applied event by event. (The finished orders
        of a batch enter `done` filled first, then cancelled: only the eviction order among
        them differs.)"""
        if split.amended:
            for events in results:
                for ev in events:
                    self.apply(ev)
        else:
            accept, trade = self._accept, self._trade
            for ev in split.accepted:
                accept(ev)
            for ev in split.trades:
                trade(ev)
            for ev in split.done:
                view = self.orders.get(ev.order_id)
                if view is not None:
                    view.leaves = 0
                    self._finish(view, FILLED)
            for ev in split.cancelled:
                self._cancelled(ev)
        if split.accepted and commands:
            # The caller's trace id, journaled with the order (commands of a batch have
            # consecutive seqs, so the accepting command is found by its seq).
            first = commands[0].seq
            for ev in split.accepted:
                i = ev.seq - first
                cmd = commands[i] if 0 <= i < len(commands) else None
                trace_id = getattr(cmd, "trace_id", "") if cmd is not None and cmd.seq == ev.seq else ""
                if trace_id:
                    view = self.get(ev.order_id)
                    if view is not None:
                        view.trace_id = trace_id

    def apply(self, ev: Event) -> None:
        if type(ev) is OrderAccepted:
            self._accept(ev)
        elif type(ev) is Trade:
            self._trade(ev)
        elif type(ev) is OrderDone:
            view = self.orders.get(ev.order_id)
            if view is not None:
                view.leaves = 0
                self._finish(view, FILLED)
        elif type(ev) is OrderCancelled:
            self._cancelled(ev)
        elif type(ev) is OrderAmended:
            view = self.orders.get(ev.order_id)
            if view is not None:
                view.price, view.qty, view.leaves = ev.price, ev.qty, ev.leaves
                view.client_order_id = ev.client_order_id
                view.updated_seq, view.updated_ts = ev.seq, ev.ts
        elif type(ev) is OrderRejected:
            pass  # never an order: the submitter gets the rejection directly

    def _accept(self, ev: OrderAccepted) -> None:
        self.orders[ev.order_id] = OrderView(
            ev.order_id,
            ev.account,
            ev.client_order_id,
            ev.symbol,
            ev.side,
            ev.order_type,
            ev.tif,
            ev.price,
            ev.qty,
            ev.qty,
            accepted_seq=ev.seq,
            accepted_ts=ev.ts,
            updated_seq=ev.seq,
            updated_ts=ev.ts,
        )

    def _trade(self, ev: Trade) -> None:
        trades = self.trades.get(ev.symbol)
        if trades is None:
            trades = self.trades[ev.symbol] = deque(maxlen=self.keep_trades)
        trades.append(ev)
        for oid, leaves, liquidity in (
            (ev.maker_order_id, ev.maker_leaves, "maker"),
            (ev.taker_order_id, ev.taker_leaves, "taker"),
        ):
            view = self.orders.get(oid)
            if view is not None:
                view.filled += ev.qty
                view.leaves = leaves
                view.updated_seq, view.updated_ts = ev.seq, ev.ts
                view.fills = (view.fills or ()) + (
                    Fill(ev.trade_id, ev.price, ev.qty, ev.seq, ev.ts, liquidity),
                )

    def _cancelled(self, ev: OrderCancelled) -> None:
        view = self.orders.get(ev.order_id)
        if view is not None:
            view.leaves = 0
            view.cancel_reason = ev.reason
            view.updated_seq, view.updated_ts = ev.seq, ev.ts
            self._finish(view, CANCELLED)
