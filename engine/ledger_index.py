"""Each account's recent ledger entries (`GET /v1/ledger`) and its balance pushes (the
WebSocket `balances` channel), kept beside the core, fed by the durable events.

A ledger entry is one change of one account's total in one asset: a deposit, withdrawal or
adjustment (ENTRY_SOURCES), and a trade's settlement (kind `trade`, base and quote) and its
fees (kind `fee`: the payer's, negative, a rebate's positive, and the fee account's), with
the symbol and the account's order (`settlement_deltas`). Entries are keyed by the seq of the
command that made them; one command may make several entries for one account (a trade moves
base and quote and charges a fee), so a page never splits a seq.

A trade event names amounts, not balances: the balance after each of its entries is counted
back from the core's totals once the batch is applied (every change of a total has an
entry, so the walk back is exact); `held` on a trade's entry is the held amount after the
whole batch (reservations also move without entries, when orders rest or leave).

Cheap on the order path: only balance events reach it (none for an order without
settlement), and each account keeps at most `per_account` entries in a deque; older ones are
dropped, and a page asked from before the newest dropped one answers 410 (as an evicted
order id does), never a silently short page.

Survives a restart and a failover: the entries from before a node's start are read back
from its journal or stream in the lookup worker (engine/ledger_history.py), as the
finished-order index is, and merged in front of the ones made since (`merge_read_back`).
Until then a page answers Rebuilding (503): never a page silently missing the history. The
transfers alone need no journal (the core keeps every applied one, `seed`: all a node
that has seen no trade reads back); a journal
trimmed by retention loses the entries before its oldest snapshot (they count as evicted).
"""

from __future__ import annotations

import bisect
import logging
from collections import deque
from collections.abc import Callable, Iterable

import msgspec

from engine.core.balances import Ledger, TransferRecord, quote_amount
from engine.core.batch_events import BatchEvents
from engine.core.domain import TransferKind
from engine.core.events import Trade, TransferApplied
from engine.core.matcher import MatchingEngine

log = logging.getLogger("loom.ledger")

DEFAULT_PER_ACCOUNT = 1000  # entries kept per account (~150 B each)
MAX_PAGE = 1000
DEFAULT_PAGE = 100
KIND_NAMES = {int(k): k.name.lower() for k in TransferKind}  # and "trade", "fee" (settlement)
BUY = 1


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


# Event type -> its entries as (account, entry): the events that name balances themselves.
ENTRY_SOURCES: dict[type, Callable[..., Iterable[tuple[str, LedgerEntry]]]] = {
    TransferApplied: _transfer_applied,
}

# (account, asset, kind, signed amount, order id) of one settled trade
Delta = tuple[str, str, str, int, int]


def settlement_deltas(engine: MatchingEngine, t: Trade) -> list[Delta]:
    """The changes of totals one settled trade made (engine/core/settlement.py `settle`):
    each side's base and quote, each side's fee, and the fee account's net fee."""
    inst = engine.instruments[t.symbol]
    base, quote = inst.base, inst.quote
    amount = quote_amount(t.price, t.qty, inst.contract_size, engine.ledger.assets[base].scale)
    base_amount = t.qty * inst.contract_size
    buyer_is_taker = t.aggressor_side == BUY
    taker = (t.taker_account, t.taker_order_id, t.taker_fee)
    maker = (t.maker_account, t.maker_order_id, t.maker_fee)
    (buyer, buy_id, buy_fee), (seller, sell_id, sell_fee) = (
        (taker, maker) if buyer_is_taker else (maker, taker)
    )
    out: list[Delta] = [
        (buyer, base, "trade", base_amount, buy_id),
        (buyer, quote, "trade", -amount, buy_id),
        (seller, base, "trade", -base_amount, sell_id),
        (seller, quote, "trade", amount, sell_id),
    ]
    if buy_fee:
        out.append((buyer, quote, "fee", -buy_fee, buy_id))
    if sell_fee:
        out.append((seller, quote, "fee", -sell_fee, sell_id))
    if buy_fee + sell_fee:
        out.append((engine.ledger.fee_account, quote, "fee", buy_fee + sell_fee, 0))
    return out


class Evicted(Exception):
    """The page asked starts before entries this node no longer holds."""

    def __init__(self, evicted_through: int, per_account: int) -> None:
        super().__init__(
            f"ledger entries up to seq {evicted_through} are no longer held (the newest "
            f"{per_account} entries per account are kept); ask with after >= {evicted_through}"
        )
        self.evicted_through = evicted_through


class Rebuilding(Exception):
    """The entries from before this node's start are still being read back."""


class LedgerIndex:
    def __init__(self, per_account: int = DEFAULT_PER_ACCOUNT) -> None:
        if per_account < 1:
            raise ValueError("the ledger index needs at least one entry per account")
        self.per_account = per_account
        self.entries: dict[str, deque[LedgerEntry]] = {}
        self.evicted_through: dict[str, int] = {}  # account -> seq of its newest dropped entry
        self.listeners: dict[str, set[Listener]] = {}
        # The live engine (a getter: a standby's promotion replaces it), for settlement
        # entries; None: transfers only.
        self.engine: Callable[[], MatchingEngine] | None = None
        # False from the node's start until the entries before it are read back (`merge_read_back`).
        self.rebuilt = True

    def seed(self, ledger: Ledger) -> int:
        """After recovery: the entries of every transfer the core has applied (its held
        amounts now, as the records keep none). Returns how many were added."""
        n = 0
        for r in sorted(ledger.transfers.values(), key=_record_seq):
            b = ledger.balance(r.account, r.asset)
            self._add(r.account, transfer_entry(r.seq, r.ts, r, b.held if b is not None else 0))
            n += 1
        return n

    def merge_read_back(self, read_back: dict, upto_seq: int) -> None:
        """The entries of seqs `history_from`..`upto_seq` read back from the journal
        (engine/ledger_history.py) take the place of what the index held for them (the
        transfers seeded at start); entries made since stay after them. A trimmed history
        (history_from > 1) counts what came before it as evicted."""
        history_from = read_back["history_from"]
        rebuilt: dict[str, list[LedgerEntry]] = read_back["entries"]
        for account in set(self.entries) | set(rebuilt):
            held = self.entries.pop(account, ())
            newer = [e for e in held if e.seq > upto_seq]
            self.evicted_through[account] = max(
                self.evicted_through.get(account, 0),
                read_back["evicted_through"].get(account, 0),
                history_from - 1,
            )
            for entry in [*rebuilt.get(account, ()), *newer]:
                self._add(account, entry)
            if not self.evicted_through[account]:
                del self.evicted_through[account]
        self.rebuilt = True

    def on_events(self, _commands: list, _results: list[list], split: BatchEvents) -> None:
        """A service event listener: the batch's balance events become entries and pushes."""
        settled = self.engine is not None and any(t.settled for t in split.trades) if split.trades else False
        if settled:
            self._settlement(split)
            return
        if not split.other:
            return
        for ev in split.other:
            source = ENTRY_SOURCES.get(type(ev))
            if source is None:
                continue
            for account, entry in source(ev):
                self._add(account, entry)
                self._push(account, entry)

    def _settlement(self, split: BatchEvents) -> None:
        """A batch with settled trades: its transfers' and trades' entries in seq order, the
        balance after each counted back from the engine's totals after the batch."""
        assert self.engine is not None
        engine = self.engine()
        pending: list[tuple[int, int, str, str, str, int, int, str, str]] = []
        for ev in split.other:
            if type(ev) is TransferApplied and not ev.repeated:
                amount = ev.new_total - ev.old_total
                kind = KIND_NAMES.get(ev.kind, str(ev.kind))
                pending.append((ev.seq, ev.ts, ev.account, ev.asset, kind, amount, 0, ev.transfer_id, ""))
        for t in split.trades:
            if t.settled:
                for account, asset, kind, amount, oid in settlement_deltas(engine, t):
                    pending.append((t.seq, t.ts, account, asset, kind, amount, oid, "", t.symbol))
        pending.sort(key=_pending_seq)  # stable: a command's own entries keep their order
        ledger = engine.ledger
        after: dict[tuple[str, str], int] = {}
        balances: list[int] = [0] * len(pending)
        for i in range(len(pending) - 1, -1, -1):
            _seq, _ts, account, asset, _kind, amount, _oid, _tid, _sym = pending[i]
            key = (account, asset)
            total = after.get(key)
            if total is None:
                b = ledger.balance(account, asset)
                total = b.total if b is not None else 0
            balances[i] = total
            after[key] = total - amount
        for (seq, ts, account, asset, kind, amount, oid, tid, symbol), total in zip(
            pending, balances, strict=True
        ):
            b = ledger.balance(account, asset)
            entry = LedgerEntry(
                seq, ts, asset, kind, amount, total, b.held if b is not None else 0, tid, symbol, oid
            )
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
        first, at most `limit` plus the rest of the last entry's seq. Raises Evicted, and
        Rebuilding until the entries from before this node's start are in."""
        if not self.rebuilt:
            raise Rebuilding("this node is still reading its ledger entries back from the journal")
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


def _pending_seq(p: tuple) -> int:
    return p[0]


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
