"""Recovery is startup: the newest valid snapshot, the journal replayed after it, the
state hash checked. The same path serves a restart, disaster recovery and (later) a
standby taking over."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.journal import JournalCorruptError
from engine.journal.segments import FileJournal
from engine.matcher import MatchingEngine
from engine.replay import COMPILED, SilentReplayer
from engine.snapshots import SnapshotStore
from engine.state import state_hash

log = logging.getLogger("loom.recovery")


@dataclass(frozen=True)
class Recovered:
    engine: MatchingEngine
    snapshot_seq: int  # 0 when replayed from the first record
    snapshot_path: str
    snapshots_skipped: int
    replayed_commands: int
    replayed_events: int
    state_hash: str
    duration_s: float
    torn_tail_truncations: int


def replay(
    engine: MatchingEngine,
    journal: FileJournal,
    from_seq: int,
    on_batch: Callable[[int, int], None] | None = None,
    compiled: bool = COMPILED,
) -> tuple[int, int]:
    """Apply every journaled command from `from_seq`; returns (commands, events).
    `compiled` picks the replay loop (engine/replay.py); the compiled one when built."""
    # Nobody consumes the events of a replay: they are counted, not built.
    apply_batch = SilentReplayer(engine, compiled).apply
    # A file journal decodes for replay (new orders and cancels without the fields that
    # only go into events); other backends give full commands, which replay takes too.
    read = getattr(journal, "replay_batches", None) or journal.read_batches
    commands = events = 0
    for batch in read(from_seq):
        events += apply_batch(batch)
        commands += len(batch)
        if on_batch is not None:
            on_batch(commands, events)
    return commands, events


def recover(
    journal: FileJournal,
    snapshots: SnapshotStore | None,
    on_batch: Callable[[int, int], None] | None = None,
) -> Recovered:
    started = time.perf_counter()
    loaded = snapshots.load_newest_valid(max_seq=journal.last_seq) if snapshots else None
    if loaded is not None:
        engine = loaded.engine
        log.info("recovery: snapshot %s at seq %d verified", loaded.path, loaded.seq)
    else:
        engine = MatchingEngine([])
    first = journal.segments[0].first_seq if journal.segments else 1
    if engine.last_seq + 1 < first:
        raise JournalCorruptError(
            str(journal.directory),
            0,
            engine.last_seq + 1,
            f"journal starts at seq {first} but the state needs it from {engine.last_seq + 1}",
        )
    commands, events = replay(engine, journal, engine.last_seq + 1, on_batch)
    if engine.last_seq != journal.last_seq:
        raise JournalCorruptError(
            str(journal.directory),
            0,
            engine.last_seq + 1,
            f"replay ended at seq {engine.last_seq}, journal ends at {journal.last_seq}",
        )
    digest = state_hash(engine)
    duration = time.perf_counter() - started
    log.info(
        "recovery: seq %d, %d commands replayed after the snapshot (%s replay loop), state hash %s, %.2f s",
        engine.last_seq,
        commands,
        "compiled" if COMPILED else "Python",
        digest[:16],
        duration,
    )
    return Recovered(
        engine=engine,
        snapshot_seq=loaded.seq if loaded else 0,
        snapshot_path=str(loaded.path) if loaded else "",
        snapshots_skipped=len(snapshots.last_skipped) if snapshots else 0,
        replayed_commands=commands,
        replayed_events=events,
        state_hash=digest,
        duration_s=duration,
        torn_tail_truncations=journal.torn_tail_truncations,
    )
