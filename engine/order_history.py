"""An order's whole history read back from the journal, with no trace backend at all.

Order ids are assigned by the engine in sequence, so the newest snapshot taken before the
order existed (its next order id is at most the one sought) is a safe place to start; the
journal is replayed from there, watching for the order's events, until it is finished or
the journal ends. The stage timings come from the batch records' `BatchMeta`: the order's
own record (receive time) and the one after it (its batch's journal, match and ack
durations). Reads the journal read-only: it can run beside a live node.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from engine.core.events import OrderAccepted, OrderCancelled, OrderDone, OrderRejected, Trade
from engine.core.matcher import MatchingEngine
from engine.core.stage_timings import Durations, stages_json
from engine.journal import RecoveryGapError
from engine.journal.format import BatchMeta
from engine.journal.segments import FileJournal
from engine.recovery import first_seq
from engine.snapshots import SnapshotError, SnapshotStore
from telemetry.trace_ids import derived_trace_id

log = logging.getLogger("loom.lookup")


TRACE_RANGE_GONE = 3  # `loom trace` exit status for JournalRangeGone (the trace endpoint: 410)


class JournalRangeGone(LookupError):
    """The order predates every kept snapshot and the journal no longer holds the commands
    before them (journal_retention = "delete"): its history cannot be read back."""


def _concerns(ev, order_id: int) -> bool:
    kind = type(ev)
    if kind is Trade:
        return ev.maker_order_id == order_id or ev.taker_order_id == order_id
    if kind is OrderRejected:
        return False  # a refused cancel/amend names the order but is not part of its life
    return getattr(ev, "order_id", None) == order_id


def _venue(journal) -> int:
    venue = journal.venue_id  # a file journal's is None until retention stored it
    if venue is not None:
        return venue
    return next(iter(journal.read(1))).ts if journal.last_seq else 0


class HistorySource:
    """Where histories are read back from: a journal and the snapshots taken along it,
    kept open for many lookups (the lookup worker's). Which snapshot an order needs is
    decided by each snapshot's next order id, learnt once per snapshot (loading one is
    the costly part of a lookup)."""

    def __init__(self, snapshots_dir: Path) -> None:
        self.local = SnapshotStore(snapshots_dir) if snapshots_dir.is_dir() else None
        self._next_order_id: dict[tuple, int] = {}  # snapshot -> its next order id (0: unusable)

    def journal(self, upto_seq: int = 0):
        raise NotImplementedError

    def first_seq(self, journal) -> int:
        return first_seq(journal)

    def where(self) -> str:
        raise NotImplementedError

    def gone_why(self) -> str:
        """What removes the head of this journal."""
        raise NotImplementedError

    def candidates(self) -> list[tuple[int, tuple, Callable[[], MatchingEngine]]]:
        """(seq, key, load) of every snapshot, oldest first."""
        found = []
        if self.local is not None:
            for info in self.local.list():
                found.append(
                    (info.seq, ("local", str(info.path)), lambda i=info: self.local.verify(i).engine)
                )
        return sorted(found, key=lambda c: c[0])

    def start(self, order_id: int, max_seq: int) -> MatchingEngine | None:
        """A restored engine from the newest snapshot (at or before `max_seq`) the order is
        younger than, or None."""
        for seq, key, load in reversed(self.candidates()):
            if seq > max_seq:
                continue
            known = self._next_order_id.get(key)
            if known is not None and (not known or known > order_id):
                continue
            try:
                engine = load()
            except (SnapshotError, ValueError, OSError) as exc:
                log.warning("lookup: snapshot %s unusable: %s", key[1], exc)
                self._next_order_id[key] = 0
                continue
            self._next_order_id[key] = engine.next_order_id
            if engine.next_order_id <= order_id:
                return engine
        return None

    def oldest(self, max_seq: int) -> MatchingEngine | None:
        """The oldest snapshot that loads (the furthest back a trimmed journal can go)."""
        for seq, key, load in self.candidates():
            if seq > max_seq or self._next_order_id.get(key) == 0:
                continue
            try:
                return load()
            except (SnapshotError, ValueError, OSError):
                self._next_order_id[key] = 0
        return None

    def stale(self) -> None:
        """A read found the journal changed under it (retention): look again next time."""

    def close(self) -> None:
        pass


class LocalHistory(HistorySource):
    """A node's data directory: the journal's segment files (with their archive)."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        super().__init__(self.data_dir / "snapshots")
        self._journal: FileJournal | None = None

    def where(self) -> str:
        return f"the journal at {self.data_dir / 'journal'} (with its archive)"

    def gone_why(self) -> str:
        return 'journal_retention = "delete" removed them'

    def journal(self, upto_seq: int = 0) -> FileJournal:
        """Opened read-only beside the live node; opened again once the node has written
        past what it saw (opening scans the segments)."""
        if self._journal is None or self._journal.last_seq < upto_seq or not upto_seq:
            if self._journal is not None:
                self._journal.close()
            self._journal = FileJournal(self.data_dir / "journal", read_only=True, archive=True)
        return self._journal

    def stale(self) -> None:
        self.close()

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None


def order_history(data_dir: str | Path, order_id: int) -> dict | None:
    """`history` read from a data directory (`loom trace`)."""
    source = LocalHistory(data_dir)
    try:
        return history(source, order_id)
    finally:
        source.close()


def history(source: HistorySource, order_id: int, upto_seq: int = 0) -> dict | None:
    """{"order_id", "trace_id", "accepted_seq", "events": [every event of the order, each
    with the seq and ts of the command that caused it], "done", "stages": the order's stage
    timings (engine/core/stage_timings.py)}, or None when the journal holds no such order.
    `upto_seq`: the journal holds at least this far (0: whatever it holds now)."""
    journal = source.journal(upto_seq)
    try:
        engine = source.start(order_id, journal.last_seq) or MatchingEngine([])
        first = source.first_seq(journal)
        if engine.last_seq + 1 < first:
            raise JournalRangeGone(
                f"order {order_id} is older than every kept snapshot, and {source.where()} now "
                f"begins at seq {first}: seqs {engine.last_seq + 1}..{first - 1} are no longer held "
                f"({source.gone_why()}), so the order's history cannot be read back"
            )
        return _replay_for(journal, engine, order_id)
    except FileNotFoundError as exc:  # a segment deleted by retention while it was read
        source.stale()
        raise JournalRangeGone(
            f"journal segment {exc.filename} was removed by journal retention while order "
            f"{order_id} was looked up"
        ) from exc
    except RecoveryGapError as exc:  # a stream purged while it was read
        raise JournalRangeGone(f"order {order_id}: {exc}") from exc


def rebuild_index(source: HistorySource, capacity: int, lo: int, hi: int, upto_seq: int, names) -> dict:
    """The finished-order index of the orders with ids lo..hi-1 that finished by `upto_seq`,
    read back from the journal: replayed with events from the newest snapshot older than
    `lo` (else from seq 1, else from the oldest snapshot, when the journal was trimmed).
    Returns FinishedOrders.export() and "history_from", the lowest id it covers."""
    from engine.core.order_store import OrderStore
    from engine.order_index import FinishedOrders

    journal = source.journal(upto_seq)
    engine = source.start(lo, upto_seq)
    first = source.first_seq(journal)
    if engine is None and first > 1:
        engine = source.oldest(upto_seq)
        if engine is None or engine.last_seq + 1 < first:
            return {"history_from": hi, **FinishedOrders(capacity, lambda: hi).export()}
    engine = engine or MatchingEngine([])
    index = FinishedOrders(capacity, lambda: hi)
    index.intern_names(*names)
    store = OrderStore(keep_done=10_000, index=index)
    store.seed_open_orders(engine)  # a trimmed journal: orders open at the snapshot
    history_from = min([engine.next_order_id, *store.orders])
    apply = engine.apply
    for _meta, batch in journal.read_records(engine.last_seq + 1):
        if batch[0].seq > upto_seq:
            break
        if batch[-1].seq > upto_seq:
            batch = batch[: upto_seq - batch[0].seq + 1]
        store.on_batch(batch, [apply(cmd) for cmd in batch])
    store.flush_done()
    return {"history_from": history_from, **index.export()}


def _replay_for(journal, engine: MatchingEngine, order_id: int) -> dict | None:
    apply = engine.apply
    found: dict | None = None
    accepted_in = None  # (meta, first_seq, count, seq, ts) of the order's batch
    for meta, batch in journal.read_records(engine.last_seq + 1):
        if accepted_in is not None:
            # This batch's meta holds the durations of the batch before it.
            found["stages"] = _stages(accepted_in, meta)
            accepted_in = None
        if found is not None and found["done"]:
            return found
        for cmd in batch:
            events = apply(cmd)
            if found is None:
                if engine.next_order_id <= order_id:
                    continue  # not accepted yet
                for ev in events:
                    if type(ev) is OrderAccepted and ev.order_id == order_id:
                        found = {
                            "order_id": order_id,
                            "trace_id": cmd.trace_id or derived_trace_id(_venue(journal), cmd.seq),
                            "accepted_seq": ev.seq,
                            "events": [],
                            "done": False,
                        }
                        accepted_in = (meta, batch[0].seq, len(batch), cmd.seq, cmd.ts)
                        found["stages"] = _stages(accepted_in, None)
                        break
                if found is None:
                    continue
            for ev in events:
                if _concerns(ev, order_id):
                    found["events"].append(ev)
                    if type(ev) in (OrderDone, OrderCancelled):
                        found["done"] = True
    return found


def _stages(accepted_in: tuple, next_meta: BatchMeta | None) -> dict:
    meta, first_seq, count, seq, ts = accepted_in
    durations = None
    if next_meta is not None and next_meta.prev_first_seq == first_seq:
        durations = Durations(next_meta.prev_journal_ns, next_meta.prev_match_ns, next_meta.prev_ack_ns)
    return stages_json(meta, first_seq, count, seq, ts, durations)


def trace_url(trace_id: str, template: str | None = None) -> str:
    """A link to the trace in the configured UI (LOOM_TRACE_URL_TEMPLATE, `{trace_id}`
    filled in; Jaeger's UI by default, Grafana Explore with Tempo works the same way)."""
    import os

    template = template or os.environ.get(
        "LOOM_TRACE_URL_TEMPLATE", "http://127.0.0.1:16686/trace/{trace_id}"
    )
    return template.replace("{trace_id}", trace_id) if trace_id else ""


def history_json(found: dict) -> dict:
    """The JSON shape `loom trace` and GET /v1/orders/{id}/trace share."""
    from engine.gateways.json_events import event_json

    events = [event_json(ev) for ev in found["events"]]
    accepted = events[0] if events else {}
    last = events[-1]["type"] if events else ""
    return {
        "order_id": found["order_id"],
        "trace_id": found["trace_id"],
        "trace_url": trace_url(found["trace_id"]),
        "account": accepted.get("account", ""),
        "client_order_id": accepted.get("client_order_id", ""),
        "symbol": accepted.get("symbol", ""),
        "status": {"filled": "filled", "cancelled": "cancelled"}.get(last, "open"),
        "accepted_seq": found["accepted_seq"],
        "events": events,
        "stages": found.get("stages"),
        "source": "journal",
    }
