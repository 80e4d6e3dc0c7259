"""An order's whole history read back from the journal, with no trace backend at all.

Order ids are assigned by the engine in sequence, so the newest snapshot taken before the
order existed (its next order id is at most the one sought) is a safe place to start; the
journal is replayed from there, watching for the order's events, until it is finished or
the journal ends. The stage timings come from the batch records' `BatchMeta`: the order's
own record (receive time) and the one after it (its batch's journal, match and ack
durations). Reads the journal read-only: it can run beside a live node.
"""

from __future__ import annotations

from pathlib import Path

from engine.events import OrderAccepted, OrderCancelled, OrderDone, OrderRejected, Trade
from engine.journal.format import BatchMeta
from engine.journal.segments import FileJournal
from engine.matcher import MatchingEngine
from engine.snapshots import SnapshotError, SnapshotStore
from engine.stage_timings import Durations, stages_json
from telemetry.tracing import derived_trace_id


def _start_engine(snapshots_dir: Path, order_id: int) -> MatchingEngine:
    """A restored engine from the newest snapshot the order is younger than, or a fresh one."""
    if snapshots_dir.is_dir():
        store = SnapshotStore(snapshots_dir)
        for info in reversed(store.list()):
            try:
                loaded = store.verify(info)
            except (SnapshotError, ValueError, OSError):
                continue
            if loaded.engine.next_order_id <= order_id:
                return loaded.engine
    return MatchingEngine([])


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


def _venue(journal: FileJournal) -> int:
    if journal.venue_id is not None:  # stored before retention retired seq 1
        return journal.venue_id
    return next(iter(journal.read(1))).ts if journal.last_seq else 0


def order_history(data_dir: str | Path, order_id: int) -> dict | None:
    """{"order_id", "trace_id", "accepted_seq", "events": [every event of the order, each
    with the seq and ts of the command that caused it], "done", "stages": the order's stage
    timings (engine/stage_timings.py)}, or None when the journal holds no such order."""
    data_dir = Path(data_dir)
    # With the archive: retention may have moved the order's records there.
    journal = FileJournal(data_dir / "journal", read_only=True, archive=True)
    try:
        engine = _start_engine(data_dir / "snapshots", order_id)
        first = journal.segments[0].first_seq if journal.segments else 1
        if engine.last_seq + 1 < first:
            raise JournalRangeGone(
                f"order {order_id} is older than every kept snapshot, and the journal at "
                f"{data_dir / 'journal'} (with its archive) now begins at seq {first}: seqs "
                f'{engine.last_seq + 1}..{first - 1} are no longer held (journal_retention = "delete" '
                "removed them), so the order's history cannot be read back"
            )
        return _replay_for(journal, engine, order_id)
    except FileNotFoundError as exc:  # a segment deleted by retention while it was read
        raise JournalRangeGone(
            f"journal segment {exc.filename} was removed by journal retention while order "
            f"{order_id} was looked up"
        ) from exc
    finally:
        journal.close()


def _replay_for(journal: FileJournal, engine: MatchingEngine, order_id: int) -> dict | None:
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
