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

import os
import struct
from array import array
from collections.abc import Callable
from enum import Enum
from pathlib import Path

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


class _MemorySlots:
    """The ring in the heap: chunks of records and their client order ids, allocated as ids
    first reach them (a rebuild's child process, or `lookup_index = "memory"`)."""

    def __init__(self, slots: int) -> None:
        self.chunks: list[bytearray | None] = [None] * ((slots + CHUNK - 1) // CHUNK)
        self.clids: list[list[str] | None] = [None] * len(self.chunks)

    def held(self, slot: int) -> int:
        chunk = self.chunks[slot // CHUNK]
        return 0 if chunk is None else _OID.unpack_from(chunk, slot % CHUNK * RECORD.size)[0]

    def put(self, slot: int, record: bytes, clid: str) -> None:
        c, i = divmod(slot, CHUNK)
        chunk = self.chunks[c]
        if chunk is None:
            chunk = self.chunks[c] = bytearray(RECORD.size * CHUNK)
            self.clids[c] = [""] * CHUNK
        chunk[i * RECORD.size : (i + 1) * RECORD.size] = record
        self.clids[c][i] = clid  # type: ignore[index]

    def get(self, slot: int) -> tuple[tuple, str] | None:
        c, i = divmod(slot, CHUNK)
        chunk = self.chunks[c]
        if chunk is None:
            return None
        return RECORD.unpack_from(chunk, i * RECORD.size), self.clids[c][i]  # type: ignore[index]

    def export(self) -> list[tuple[int, bytes, list[str]]]:
        return [(c, bytes(chunk), self.clids[c]) for c, chunk in enumerate(self.chunks) if chunk]  # type: ignore[misc]

    def adopt(self, c: int, data: bytes, clids: list[str]) -> bool:
        """Take a whole chunk when this one holds nothing there."""
        if self.chunks[c] is not None:
            return False
        self.chunks[c], self.clids[c] = bytearray(data), clids
        return True


# A slot on disk: the record, then the client order id's UTF-8 length and bytes (longer ones,
# beyond the field, stay in memory: MAX_CLIENT_ORDER_ID_LEN is 64 characters, not bytes).
_FILE_CLID = 64
FILE_SLOT = struct.Struct(RECORD.format + f"B{_FILE_CLID}s")
_LONG = 255  # the length byte of a client order id kept in memory


class _FileSlots:
    """The ring in a file: the finished orders of the window (1M by default) sit in the
    kernel's page cache, which it may write out and drop, not in the node's heap. The file is
    scratch: recreated at every start and unlinked as soon as it is open; the orders
    finished before the start are read back from the journal as before. Each slot's order
    id stays in memory (8 bytes a slot, fixed: no read to find a slot's owner or to miss),
    and records are written behind in sorted runs of up to WRITE_BEHIND: a pwrite per
    finished order cost ~40 us on the order path."""

    WRITE_BEHIND = 4096

    def __init__(self, slots: int, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.slots = slots
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
        # Unnamed at once: scratch, so a killed node leaves nothing behind (the kernel frees
        # it with the last descriptor).
        os.unlink(path)
        os.ftruncate(self.fd, slots * FILE_SLOT.size)  # sparse: unwritten slots read as zeros
        self.oids = array("q", bytes(8 * slots))  # the order id each slot holds (0: none)
        self.pending: dict[int, bytes] = {}  # slot -> its slot bytes, not written yet
        self.long_clids: dict[int, str] = {}  # slot -> a client order id too long for the field

    def close(self) -> None:
        if self.fd >= 0:
            self.flush()
            os.close(self.fd)
            self.fd = -1

    def flush(self) -> None:
        """Write the pending slots, one pwrite per run of consecutive slots."""
        pending, self.pending = self.pending, {}
        run: list[bytes] = []
        start = prev = -2
        for slot in sorted(pending):
            if slot != prev + 1 and run:
                os.pwrite(self.fd, b"".join(run), start * FILE_SLOT.size)
                run = []
            if not run:
                start = slot
            run.append(pending[slot])
            prev = slot
        if run:
            os.pwrite(self.fd, b"".join(run), start * FILE_SLOT.size)

    def held(self, slot: int) -> int:
        return self.oids[slot]

    def _slot_bytes(self, slot: int, record: bytes, clid: str) -> bytes:
        raw = clid.encode()
        if len(raw) > _FILE_CLID:
            self.long_clids[slot] = clid
            return record + bytes((_LONG,)) + bytes(_FILE_CLID)
        if self.long_clids:
            self.long_clids.pop(slot, None)
        return record + bytes((len(raw),)) + raw.ljust(_FILE_CLID, b"\0")

    def put(self, slot: int, record: bytes, clid: str) -> None:
        self.oids[slot] = _OID.unpack_from(record)[0]
        self.pending[slot] = self._slot_bytes(slot, record, clid)
        if len(self.pending) >= self.WRITE_BEHIND:
            self.flush()

    def _decode(self, slot: int, fields: tuple) -> tuple[tuple, str]:
        *rec, n, raw = fields
        return tuple(rec), (self.long_clids.get(slot, "") if n == _LONG else raw[:n].decode())

    def get(self, slot: int) -> tuple[tuple, str] | None:
        if not self.oids[slot]:
            return None
        data = self.pending.get(slot) or os.pread(self.fd, FILE_SLOT.size, slot * FILE_SLOT.size)
        return self._decode(slot, FILE_SLOT.unpack(data))

    def export(self) -> list[tuple[int, bytes, list[str]]]:
        self.flush()
        out = []
        for c in range((self.slots + CHUNK - 1) // CHUNK):
            n = min(CHUNK, self.slots - c * CHUNK)
            if not any(self.oids[c * CHUNK : c * CHUNK + n]):
                continue
            data = os.pread(self.fd, n * FILE_SLOT.size, c * CHUNK * FILE_SLOT.size)
            records, clids = bytearray(RECORD.size * CHUNK), [""] * CHUNK
            for i, fields in enumerate(FILE_SLOT.iter_unpack(data)):
                rec, clids[i] = self._decode(c * CHUNK + i, fields)
                RECORD.pack_into(records, i * RECORD.size, *rec)
            out.append((c, bytes(records), clids))
        return out

    def adopt(self, c: int, data: bytes, clids: list[str]) -> bool:
        """Write a whole chunk (one pwrite) when none of its slots holds an order yet."""
        base = c * CHUNK
        n = min(CHUNK, self.slots - base)
        if any(self.oids[base : base + n]):
            return False
        out = bytearray(n * FILE_SLOT.size)
        for i, rec in enumerate(RECORD.iter_unpack(data[: n * RECORD.size])):
            out[i * FILE_SLOT.size : (i + 1) * FILE_SLOT.size] = self._slot_bytes(
                base + i, RECORD.pack(*rec), clids[i]
            )
            self.oids[base + i] = rec[0]
        os.pwrite(self.fd, out, base * FILE_SLOT.size)
        return True


class FinishedOrders:
    def __init__(self, capacity: int, next_order_id: Callable[[], int], path: Path | None = None) -> None:
        """`path`: a scratch file for the records (None: in the heap)."""
        if capacity < 1:
            raise ValueError("the lookup window needs at least one order")
        self.capacity = capacity
        self.next_order_id = next_order_id
        self._slots: _MemorySlots | _FileSlots = (
            _FileSlots(capacity, path) if path else _MemorySlots(capacity)
        )
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

    def close(self) -> None:
        if isinstance(self._slots, _FileSlots):
            self._slots.close()

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

    def add(self, view: OrderView) -> None:
        """Keep a finished order (ids below the window are dropped: they are evicted)."""
        oid = view.order_id
        if oid < self.window_lo:
            return
        slot = oid % self.capacity
        held = self._slots.held(slot)
        if held > oid:
            return  # a newer order owns the slot
        if held and self._trace_ids:
            self._trace_ids.pop(held, None)
        record = RECORD.pack(
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
        self._slots.put(slot, record, view.client_order_id)
        if view.trace_id:
            self._trace_ids[oid] = view.trace_id

    def get(self, order_id: int) -> OrderView | None:
        """The finished order's view (without its fills), or None."""
        if order_id <= 0:
            return None
        got = self._slots.get(order_id % self.capacity)
        if got is None or got[0][0] != order_id:
            return None
        rec, clid = got
        return _view(rec, self.accounts, self.symbols, clid, self._trace_ids.get(order_id, ""))

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
            traces.setdefault(oid % self.capacity // CHUNK, {})[oid] = tid
        return {
            "capacity": self.capacity,
            "chunks": [
                (c, data, _encode_clids(clids), traces.get(c, {})) for c, data, clids in self._slots.export()
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
        if alike and self._slots.adopt(c, data, clids):
            self.intern_names(accounts, symbols)
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
