"""Each account's recent ledger entries (`GET /v1/ledger`) and its balance pushes (the
WebSocket `balances` channel), kept beside the core, fed by the durable events.

A ledger entry is one change of one account's total in one asset: a deposit, withdrawal or
adjustment today; a trade's settlement and its fee once settlement lands (kinds `trade` and
`fee`: their events add a converter to ENTRY_SOURCES, nothing else changes). Entries are
keyed by the seq of the command that made them; one command may make several entries for
one account (a trade moves base and quote and charges a fee), so a page never splits a seq.

Cheap on the order path: only balance events reach it (none for an order without
settlement), and each account keeps at most `per_account` entries in a deque; older ones are
dropped, and a page asked from before the newest dropped one answers 410 (as an evicted
order id does), never a silently short page.

Survives a restart without reading the journal: the core keeps every applied transfer for
its idempotency (`Ledger.transfers`, snapshotted and replayed), so the index is seeded from
it at start (`seed`). The settlement slice's entries will need their own seed (a core-held
record, or a read-back like engine/order_lookup.py) when they land.
"""

from __future__ import annotations

import bisect
import logging
from collections import deque
from collections.abc import Callable, Iterable

import msgspec

from engine.core.balances import Ledger, TransferRecord
from engine.core.batch_events import BatchEvents
from engine.core.domain import TransferKind
from engine.core.events import TransferApplied

log = logging.getLogger("loom.ledger")

DEFAULT_PER_ACCOUNT = 1000  # entries kept per account (~150 B each)
MAX_PAGE = 1000
DEFAULT_PAGE = 100
KIND_NAMES = {int(k): k.name.lower() for k in TransferKind}  # + "trade", "fee" with settlement


class LedgerEntry(msgspec.Struct, frozen=True, gc=False):
    """One change of an account's total in one asset, and the balance after it."""

    seq: int  # the command that made it
    ts: int  # the sequencer's timestamp of that command
    asset: str
    kind: str  # deposit | withdrawal | adjustment (| trade | fee)
    amount: int  # signed change of the total
    balance: int  # total after the change
    held: int  # held after the change
    transfer_id: str = ""  # a transfer's id
    symbol: str = ""  # a trade's or fee's symbol and the account's order in it
    order_id: int = 0


Listener = Callable[[str, LedgerEntry], None]


def transfer_entry(seq: int, ts: int, r: TransferRecord | TransferApplied, held: int) -> LedgerEntry:
    """The entry of an applied transfer (the one mapping from transfers to entries)."""
    return LedgerEntry(
        seq,
        ts,
        r.asset,
        KIND_NAMES.get(r.kind, str(r.kind)),
        r.new_total - r.old_total,
        r.new_total,
        held,
        transfer_id=r.transfer_id,
    )


def _transfer_applied(ev: TransferApplied) -> Iterable[tuple[str, LedgerEntry]]:
    if ev.repeated:  # the original's answer again: no balance moved
        return ()
    return ((ev.account, transfer_entry(ev.seq, ev.ts, ev, ev.held)),)


# Event type -> its entries as (account, entry). Settlement adds its events here.
ENTRY_SOURCES: dict[type, Callable[..., Iterable[tuple[str, LedgerEntry]]]] = {
    TransferApplied: _transfer_applied,
}


class Evicted(Exception):
    """The page asked starts before entries this node no longer holds."""

    def __init__(self, evicted_through: int, per_account: int) -> None:
        super().__init__(
            f"ledger entries up to seq {evicted_through} are no longer held (the newest "
            f"{per_account} entries per account are kept); ask with after >= {evicted_through}"
        )
        self.evicted_through = evicted_through


class LedgerIndex:
    def __init__(self, per_account: int = DEFAULT_PER_ACCOUNT) -> None:
        if per_account < 1:
            raise ValueError("the ledger index needs at least one entry per account")
        self.per_account = per_account
        self.entries: dict[str, deque[LedgerEntry]] = {}
        self.evicted_through: dict[str, int] = {}  # account -> seq of its newest dropped entry
        self.listeners: dict[str, set[Listener]] = {}

    def seed(self, ledger: Ledger) -> int:
        """After recovery: the entries of every transfer the core has applied (its held
        amounts now, as the records keep none). Returns how many were added."""
        n = 0
        for r in sorted(ledger.transfers.values(), key=_record_seq):
            b = ledger.balance(r.account, r.asset)
            self._add(r.account, transfer_entry(r.seq, r.ts, r, b.held if b is not None else 0))
            n += 1
        return n

    def on_events(self, _commands: list, _results: list[list], split: BatchEvents) -> None:
        """A service event listener: the batch's balance events become entries and pushes."""
        if not split.other:
            return
        for ev in split.other:
            source = ENTRY_SOURCES.get(type(ev))
            if source is None:
                continue
            for account, entry in source(ev):
                self._add(account, entry)
                self._push(account, entry)

    def _add(self, account: str, entry: LedgerEntry) -> None:
        held = self.entries.get(account)
        if held is None:
            held = self.entries[account] = deque(maxlen=self.per_account)
        if len(held) == self.per_account:
            self.evicted_through[account] = held[0].seq
        held.append(entry)

    def page(self, account: str, after: int | None, limit: int = DEFAULT_PAGE) -> dict:
        """The account's entries with seq > after (from the oldest held when None), oldest
        first, at most `limit` plus the rest of the last entry's seq. Raises Evicted."""
        evicted = self.evicted_through.get(account, 0)
        if after is not None and after < evicted:
            raise Evicted(evicted, self.per_account)
        held = self.entries.get(account, ())
        start = 0 if after is None else bisect.bisect_right(held, after, key=_entry_seq)
        end = min(start + limit, len(held))
        while 0 < end < len(held) and held[end].seq == held[end - 1].seq:
            end += 1  # never split one command's entries across pages
        rows = [held[i] for i in range(start, end)]
        return {
            "account": account,
            "entries": [entry_json(e) for e in rows],
            "next_after": rows[-1].seq if rows else (after if after is not None else evicted),
            "has_more": end < len(held),
            "evicted_through": evicted,
        }

    # -- balance pushes --------------------------------------------------------------------------

    def subscribe(self, account: str, listener: Listener) -> Callable[[], None]:
        self.listeners.setdefault(account, set()).add(listener)

        def unsubscribe() -> None:
            listeners = self.listeners.get(account)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self.listeners[account]

        return unsubscribe

    def _push(self, account: str, entry: LedgerEntry) -> None:
        listeners = self.listeners.get(account)
        if not listeners:
            return
        for listener in list(listeners):
            try:
                listener(account, entry)
            except Exception:
                log.exception("balance listener for %s failed; dropping it", account)
                listeners.discard(listener)


def _record_seq(r: TransferRecord) -> int:
    return r.seq


def _entry_seq(e: LedgerEntry) -> int:
    return e.seq


def entry_json(e: LedgerEntry) -> dict:
    out = {
        "seq": e.seq,
        "ts": e.ts,
        "asset": e.asset,
        "kind": e.kind,
        "amount": e.amount,
        "balance": e.balance,
    }
    if e.transfer_id:
        out["transfer_id"] = e.transfer_id
    if e.symbol:
        out["symbol"] = e.symbol
        out["order_id"] = e.order_id
    return out


def balance_json(e: LedgerEntry) -> dict:
    """A `balances` channel push: the asset's balance after the entry."""
    return {
        "type": "balance",
        "asset": e.asset,
        "total": e.balance,
        "held": e.held,
        "available": e.balance - e.held,
        "seq": e.seq,
    }
