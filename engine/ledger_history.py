"""The ledger entries from before a node's start, read back from its journal or stream.

The core keeps every applied transfer but no trades, so a restarted node (or a promoted
standby, or one that joined late) would list a trader's transfers and none of its earlier
settlement entries. This replays the history with events, as the live node applied it
batch by batch, into a fresh LedgerIndex (engine/ledger_index.py), in the lookup worker
process (engine/order_lookup.py), and hands back each account's newest entries for the
node to merge in front of the ones it made since.

From seq 1 when the journal holds it; else from the oldest snapshot that loads, whose
earlier entries are gone for good (`history_from` says where the read-back begins).
"""

from __future__ import annotations

from engine.core.batch_events import BatchEvents
from engine.core.matcher import MatchingEngine
from engine.ledger_index import LedgerIndex
from engine.order_history import HistorySource


def read_back_ledger(source: HistorySource, per_account: int, upto_seq: int) -> dict:
    """{"history_from": the first seq read back, "entries": {account: [LedgerEntry]},
    "evicted_through": {account: seq}} for the commands up to `upto_seq`."""
    journal = source.journal(upto_seq)
    engine: MatchingEngine | None = MatchingEngine([])
    if source.first_seq(journal) > 1:  # trimmed: the oldest snapshot, if the journal follows it
        engine = source.oldest(upto_seq)
        if engine is None or engine.last_seq + 1 < source.first_seq(journal):
            return {"history_from": upto_seq + 1, "entries": {}, "evicted_through": {}}
    assert engine is not None
    history_from = engine.last_seq + 1
    index = LedgerIndex(per_account)
    index.engine = lambda: engine
    apply = engine.apply
    for _meta, batch in journal.read_records(engine.last_seq + 1):
        if batch[0].seq > upto_seq:
            break
        if batch[-1].seq > upto_seq:
            batch = batch[: upto_seq - batch[0].seq + 1]
        results = [apply(cmd) for cmd in batch]
        index.on_events(batch, results, BatchEvents(results))
    return {
        "history_from": history_from,
        "entries": {account: list(held) for account, held in index.entries.items()},
        "evicted_through": index.evicted_through,
    }
