"""Recovery is startup: the newest valid snapshot, the journal replayed after it, the
state hash checked. The same path serves a restart, disaster recovery and a standby
taking over.

A journal may begin past seq 1 (a replicated journal purged behind its snapshots). When
no local snapshot reaches where it begins, the newest replicated snapshot is fetched and
verified instead (and kept locally); when none reaches it either, recovery refuses with
RecoveryGapError naming the missing seqs: it never skips a command.

A snapshot is taken only of state whose commands were journaled, so a verified snapshot
beyond the journal's end proves the journal lost commands that were acknowledged:
`tail_guard` refuses to start then (TailDamageError naming the snapshot) instead of
truncating a tail or setting the snapshot aside, until `loom journal repair` decides.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.core.matcher import MatchingEngine
from engine.core.replay import SilentReplayer
from engine.core.state import state_hash
from engine.journal import JournalCorruptError, RecoveryGapError, TailDamageError
from engine.journal.segments import FileJournal, ScanReport, cut_point
from engine.snapshots import LoadedSnapshot, SnapshotError, SnapshotStore

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
    snapshot_source: str = ""  # "local", "replicated", or "" (none)


def covering_snapshot(store: SnapshotStore, last_seq: int) -> LoadedSnapshot | None:
    """The newest snapshot beyond `last_seq` that verifies (checksum and state hash), or
    None. One that fails verification proves nothing and is passed over."""
    for info in reversed(store.list()):
        if info.seq <= last_seq:
            return None
        try:
            return store.verify(info)
        except (SnapshotError, ValueError, OSError):
            continue  # load_newest_valid sets it aside
    return None


def tail_guard(snapshot_dir: str | os.PathLike) -> Callable[[ScanReport], None]:
    """FileJournal's `guard` for a node's own journal: refuses (TailDamageError) when the
    scan found damage at the tail, or when a verified snapshot covers seqs beyond the
    journal's end after any torn tail is cut, naming the snapshot. Damage before the tail
    is left to the journal, which refuses with it."""

    def check(report: ScanReport) -> None:
        damage = report.damage
        if damage is not None and not isinstance(damage, TailDamageError):
            return
        directory = Path(snapshot_dir)
        covering = (
            covering_snapshot(SnapshotStore(directory), report.last_seq) if directory.is_dir() else None
        )
        if damage is not None:
            raise damage.with_snapshot(str(covering.path), covering.seq) if covering else damage
        if covering is None:
            return
        cut = cut_point(report)  # a torn tail (there is no other damage here)
        if cut is not None:
            problem = f"a record cut short ({report.torn_tail_bytes} bytes, a torn tail but for the snapshot)"
            path, offset = str(cut[0]), cut[1]
        else:
            problem = f"no records after seq {report.last_seq} (the journal's end)"
            last = report.segments[-1] if report.segments else None
            path, offset = (str(last.path), last.size) if last is not None else (report.directory, 0)
        raise TailDamageError(
            path, offset, report.last_seq + 1, problem, None, str(covering.path), covering.seq
        )

    return check


def replay(
    engine: MatchingEngine,
    journal: FileJournal,
    from_seq: int,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[int, int]:
    """Apply every journaled command from `from_seq`; returns (commands, events)."""
    # Nobody consumes the events of a replay: they are counted, not built.
    apply_batch = SilentReplayer(engine).apply
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


def first_seq(journal) -> int:
    """The first seq the journal still holds (1 for a journal that was never trimmed)."""
    first_command_seq = getattr(journal, "first_command_seq", None)
    if first_command_seq is not None:
        return first_command_seq()
    segments = getattr(journal, "segments", ())
    return segments[0].first_seq if segments else 1


def recover(
    journal: FileJournal,
    snapshots: SnapshotStore | None,
    on_batch: Callable[[int, int], None] | None = None,
    replicated=None,
) -> Recovered:
    """`replicated`: an engine.cluster.snapshot_store.ReplicatedSnapshots (cluster mode)."""
    started = time.perf_counter()
    loaded = snapshots.load_newest_valid(max_seq=journal.last_seq) if snapshots else None
    source = "local" if loaded is not None else ""
    first = first_seq(journal)
    local_seq = loaded.seq if loaded is not None else 0
    if local_seq + 1 < first and replicated is not None:
        fetched = replicated.load_newest_valid(max_seq=journal.last_seq)
        if fetched is not None and fetched.seq > local_seq:
            loaded, source = fetched, "replicated"
            if snapshots is not None:  # the next start needs no download
                snapshots.write(fetched.engine)
    if loaded is not None:
        engine = loaded.engine
        log.info("recovery: %s snapshot %s at seq %d verified", source, loaded.path, loaded.seq)
    else:
        engine = MatchingEngine([])
    if engine.last_seq + 1 < first:
        raise RecoveryGapError(
            str(journal.directory),
            engine.last_seq + 1,
            first,
            f"journal starts at seq {first} but the state needs it from {engine.last_seq + 1} "
            f"({_snapshot_report(local_seq, replicated)}){_archive_hint(journal, first)}",
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
        "recovery: seq %d, %d commands replayed after the snapshot, state hash %s, %.2f s",
        engine.last_seq,
        commands,
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
        snapshot_source=source,
    )


def _snapshot_report(local_seq: int, replicated) -> str:
    local = f"newest local snapshot at seq {local_seq}" if local_seq else "no local snapshot"
    if replicated is None:
        return local
    newest = replicated.newest
    remote = f"newest replicated one at seq {newest.seq}" if newest else "no replicated snapshot"
    if replicated.load_failures:
        remote += f", {replicated.load_failures} failed verification"
    return f"{local}, {remote}"


def _archive_hint(journal, first: int) -> str:
    """Where the missing commands may still be: segments journal retention archived."""
    directory = getattr(journal, "directory", None)
    if directory is None or getattr(journal, "remote", False):
        return ""
    from engine.journal.retention import archived_first_seq

    archived = archived_first_seq(directory)
    if archived is None or archived >= first:
        return "; the earlier segments were deleted (journal_retention = delete) or removed by hand"
    return (
        f"; journal/archive/ holds segments from seq {archived}: move those needed back into "
        f"{directory} to replay from them"
    )
