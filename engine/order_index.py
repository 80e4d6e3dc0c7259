"""The finished-order index: a compact record of each finished order among the newest
`capacity` order ids, so `GET /v1/orders/{id}` answers for them after the order store's
full views (with fills) are gone, and after a restart or a failover.

Order ids are assigned by the engine in sequence, so "the last N orders" is an id range,
`[next_order_id - capacity, next_order_id)`, and a ring of `capacity` fixed-size slots
(slot = id % capacity) holds it without a dict (a dict of a million entries costs tens of
milliseconds each time it resizes, and ~100 bytes an entry). A record is RECORD.size bytes
in a preallocated chunk, plus the client order id (a shared string) and, only for orders
that came with the caller's trace id, that id: no per-order Python object but the string.

Below the range an id is evicted (410); at or past `next_order_id` it was never assigned
(404). Between the two every id is either open (the order store) or finished (here) once
the history before the node's start has been read back (`engine/order_lookup.py`); until
then those ids answer "rebuilding" (503), and ids whose history the journal no longer holds
answer "history gone" (410).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from enum import Enum

import msgspec

from engine.core.order_store import CANCELLED, FILLED, OrderView

# order id, price, qty, filled, accepted seq/ts, updated seq/ts; account and symbol (interned
# indices), side, type, tif, status (0 filled, 1 cancelled), cancel reason.
RECORD = struct.Struct("<qqqqqqqqIHBBBBH")
_OID = struct.Struct("<q")  # a record's first field
CHUNK = 1 << 16  # slots per chunk: chunks are allocated as ids first reach them
_STATUSES = (FILLED, CANCELLED)
_STATUS_CODE = {FILLED: 0, CANCELLED: 1}
_encode_clids = msgspec.msgpack.Encoder().encode
_decode_clids = msgspec.msgpack.Decoder(list[str]).decode


class Lookup(Enum):
    UNKNOWN = "unknown"  # never assigned (or another account's: answered the same)
    EVICTED = "evicted"  # older than the lookup window
    HISTORY_GONE = "history-gone"  # in the window, but the journal no longer holds its history
    REBUILDING = "rebuilding"  # in the window, finished before the node started, not read back yet


class FinishedOrders:
    def __init__(self, capacity: int, next_order_id: Callable[[], int]) -> None:
        if capacity < 1:
            raise ValueError("the lookup window needs at least one order")
        self.capacity = capacity
        self.next_order_id = next_order_id
        self._chunks: list[bytearray | None] = [None] * ((capacity + CHUNK - 1) // CHUNK)
        self._clids: list[list[str] | None] = [None] * len(self._chunks)
        self._trace_ids: dict[int, str] = {}  # the caller's trace id, for the few that had one
        self.accounts: list[str] = []
        self.symbols: list[str] = []
        self._account_ix: dict[str, int] = {}
        self._symbol_ix: dict[str, int] = {}
        # Ids below `rebuild_hi` finished before this node's start: known once the history
        # has been read back (`history_from` is then the lowest id it reached).
        self.rebuild_hi = 0
        self.rebuilt = True
        self.history_from = 1

    @property
    def window_lo(self) -> int:
        """The lowest order id the lookup window still covers."""
        return max(1, self.next_order_id() - self.capacity)

    def intern_names(self, accounts, symbols) -> None:
        for name in accounts:
            self._account(name)
        for name in symbols:
            self._symbol(name)

    def _account(self, name: str) -> int:
        ix = self._account_ix.get(name)
        if ix is None:
            ix = self._account_ix[name] = len(self.accounts)
            self.accounts.append(name)
        return ix

    def _symbol(self, name: str) -> int:
        ix = self._symbol_ix.get(name)
        if ix is None:
            ix = self._symbol_ix[name] = len(self.symbols)
            self.symbols.append(name)
        return ix

    def _slot(self, order_id: int) -> tuple[int, int]:
        slot = order_id % self.capacity
        return slot // CHUNK, slot % CHUNK

    def add(self, view: OrderView) -> None:
        """Keep a finished order (ids below the window are dropped: they are evicted)."""
        oid = view.order_id
        if oid < self.window_lo:
            return
        c, i = self._slot(oid)
        chunk = self._chunks[c]
        if chunk is None:
            chunk = self._chunks[c] = bytearray(RECORD.size * CHUNK)
            self._clids[c] = [""] * CHUNK
        at = i * RECORD.size
        held = _OID.unpack_from(chunk, at)[0]
        if held > oid:
            return  # a newer order owns the slot
        if held and self._trace_ids:
            self._trace_ids.pop(held, None)
        RECORD.pack_into(
            chunk,
            at,
            oid,
            view.price,
            view.qty,
            view.filled,
            view.accepted_seq,
            view.accepted_ts,
            view.updated_seq,
            view.updated_ts,
            self._account(view.account),
            self._symbol(view.symbol),
            view.side,
            view.order_type,
            view.tif,
            _STATUS_CODE[view.status],
            view.cancel_reason,
        )
        self._clids[c][i] = view.client_order_id
        if view.trace_id:
            self._trace_ids[oid] = view.trace_id

    def get(self, order_id: int) -> OrderView | None:
        """The finished order's view (without its fills), or None."""
        if order_id <= 0:
            return None
        c, i = self._slot(order_id)
        chunk = self._chunks[c]
        if chunk is None:
            return None
        rec = RECORD.unpack_from(chunk, i * RECORD.size)
        if rec[0] != order_id:
            return None
        return _view(rec, self.accounts, self.symbols, self._clids[c][i], self._trace_ids.get(order_id, ""))

    def missing(self, order_id: int) -> Lookup:
        """Why an id that is neither open nor here has no answer."""
        if order_id >= self.next_order_id():
            return Lookup.UNKNOWN
        if order_id < self.window_lo:
            return Lookup.EVICTED
        if order_id < self.rebuild_hi:
            if not self.rebuilt:
                return Lookup.REBUILDING
            if order_id < self.history_from:
                return Lookup.HISTORY_GONE
        return Lookup.UNKNOWN

    # -- moving a rebuilt index between processes ---------------------------------------------

    def export(self) -> dict:
        """Everything a rebuilt index holds, as plain values that cross a process boundary
        cheaply: per chunk its bytes, its client order ids as one msgpack blob, its trace ids."""
        traces: dict[int, dict[int, str]] = {}
        for oid, tid in self._trace_ids.items():
            traces.setdefault(self._slot(oid)[0], {})[oid] = tid
        return {
            "capacity": self.capacity,
            "chunks": [
                (c, bytes(chunk), _encode_clids(self._clids[c]), traces.get(c, {}))
                for c, chunk in enumerate(self._chunks)
                if chunk
            ],
            "accounts": self.accounts,
            "symbols": self.symbols,
        }

    def merge_chunk(self, exported: dict, chunk: tuple) -> None:
        """Take one exported chunk: adopted whole when this index holds nothing there and
        the names are interned alike (the usual case: live orders reach the index only once
        the store's recent views overflow), else record by record."""
        if exported["capacity"] != self.capacity:
            raise ValueError(f"a rebuilt index of {exported['capacity']} orders, not {self.capacity}")
        c, data, clid_blob, traces = chunk
        clids = _decode_clids(clid_blob)
        accounts, symbols = exported["accounts"], exported["symbols"]
        alike = accounts[: len(self.accounts)] == self.accounts[: len(accounts)] and (
            symbols[: len(self.symbols)] == self.symbols[: len(symbols)]
        )
        if alike and self._chunks[c] is None:
            self.intern_names(accounts, symbols)
            self._chunks[c] = bytearray(data)
            self._clids[c] = clids
            self._trace_ids.update(traces)
            return
        for i, rec in enumerate(RECORD.iter_unpack(data)):
            if rec[0]:
                self.add(_view(rec, accounts, symbols, clids[i], traces.get(rec[0], "")))


def _view(rec: tuple, accounts: list[str], symbols: list[str], clid: str, trace_id: str) -> OrderView:
    (oid, price, qty, filled, a_seq, a_ts, u_seq, u_ts, acct, sym, side, otype, tif, status, reason) = rec
    return OrderView(
        oid,
        accounts[acct],
        clid,
        symbols[sym],
        side,
        otype,
        tif,
        price,
        qty,
        0,
        filled,
        _STATUSES[status],
        reason,
        a_seq,
        a_ts,
        u_seq,
        u_ts,
        fills=None,
        trace_id=trace_id,
    )
