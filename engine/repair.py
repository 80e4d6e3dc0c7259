"""`loom journal repair`: the operator's decision when a node refuses to start because its
journal is damaged, or its end may hide acknowledged commands (TailDamageError).

- truncate (the default): the journal is cut at the first damage and ends at its last
  intact seq. Snapshots beyond that seq are moved aside (they hold a history the journal
  no longer has). The commands after the cut are lost.
- use_snapshot: the newest verified snapshot beyond the journal's intact end is kept as
  the state, and the journal starts afresh at the seq after it: every old segment (and
  journal/archive/) is moved aside, a new segment is created empty, and journal/VENUE
  keeps the ts of seq 1 so derived trace ids do not change. What the old journal held
  after the snapshot's seq (only past damage in its middle) is lost.

Nothing is destroyed: whatever is cut or moved goes to journal/repaired/<UTC time>/, with
REPAIR.txt saying what was dropped and why.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from engine.fsutil import fsync_dir
from engine.journal import TailDamageError
from engine.journal.format import (
    RECORD_HEADER,
    SEGMENT_HEADER,
    decode_record,
    decode_segment_header,
    encode_segment_header,
    parse_record,
)
from engine.journal.retention import store_venue
from engine.journal.segments import (
    SEGMENT_RE,
    VENUE_FILE,
    ScanReport,
    archive_dir,
    cut_point,
    list_segment_files,
    make_dir,
    move_aside,
    repair,
    repair_dir,
    scan,
    segment_name,
)
from engine.recovery import covering_snapshot
from engine.snapshots import LoadedSnapshot, SnapshotInfo, SnapshotStore

REPORT_FILE = "REPAIR.txt"


class RepairRefused(Exception):
    """The repair asked for cannot be done (no snapshot to rebuild from)."""


@dataclass
class RepairPlan:
    """What a repair of one data directory would cut, from a scan and the snapshots."""

    journal_dir: Path
    snapshot_dir: Path
    report: ScanReport
    cut: tuple[Path, int] | None  # (file, byte offset; 0: the whole file)
    cut_bytes: int  # bytes from the cut to the end of that file
    later: list[Path]  # segments after the cut file, dropped whole
    beyond: list[SnapshotInfo]  # snapshots past the intact end
    covering: LoadedSnapshot | None  # the newest of them that verifies
    problem: str = ""
    claimed_last: int | None = None  # the last seq the damaged record's header names

    @property
    def intact_last_seq(self) -> int:
        return self.report.last_seq

    @property
    def needed(self) -> bool:
        return self.cut is not None or bool(self.beyond)

    @property
    def lost_seqs(self) -> str:
        """The seqs after the intact end, as far as anything names them."""
        first = self.intact_last_seq + 1
        known = [self.claimed_last or 0, self.covering.seq if self.covering else 0]
        known += [s.seq for s in self.beyond]
        known += [_first_seq_of(p) - 1 for p in self.later]  # a later segment starts after them
        last = max(known)
        return f"seq {first}..{last}" if last >= first else f"seq {first} onwards (none known)"


def data_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(journal dir, snapshot dir) for a node's data directory or its journal directory."""
    p = Path(path)
    if (p / "journal").is_dir():
        return p / "journal", p / "snapshots"
    return p, p.parent / "snapshots"


def _first_seq_of(path: Path) -> int:
    with open(path, "rb") as f:
        header = decode_segment_header(f.read(SEGMENT_HEADER.size))
    if header is not None:
        return header[1]
    return int(SEGMENT_RE.match(path.name)[1])  # the name says it too


def plan(path: str | os.PathLike) -> RepairPlan:
    journal_dir, snapshot_dir = data_paths(path)
    report = scan(journal_dir)
    cut = cut_point(report)
    later: list[Path] = []
    cut_bytes = 0
    if cut is not None:
        cut_bytes = cut[0].stat().st_size - cut[1]
        later = [p for p in list_segment_files(journal_dir) if p.name > cut[0].name]
    beyond: list[SnapshotInfo] = []
    covering = None
    if snapshot_dir.is_dir():
        store = SnapshotStore(snapshot_dir)
        beyond = [s for s in store.list() if s.seq > report.last_seq]
        covering = covering_snapshot(store, report.last_seq)
    damage = report.damage
    problem, claimed = "", None
    if damage is not None:
        problem = damage.problem
        claimed = damage.claimed_last if isinstance(damage, TailDamageError) else None
    elif report.torn_tail_path:
        problem = f"a torn tail of {report.torn_tail_bytes} bytes"
    elif beyond:
        problem = f"the journal ends at seq {report.last_seq}, before a snapshot's seq"
    return RepairPlan(
        journal_dir, snapshot_dir, report, cut, cut_bytes, later, beyond, covering, problem, claimed
    )


def describe(p: RepairPlan) -> list[str]:
    """What the journal holds, what is wrong, and what each way of repairing keeps."""
    lines = [f"journal {p.journal_dir}: intact through seq {p.intact_last_seq}"]
    if not p.needed:
        return [*lines, "nothing to repair"]
    lines.append(f"problem: {p.problem}{_where(p)}; at stake: {p.lost_seqs}")
    if p.covering is not None:
        lines.append(f"verified snapshot {p.covering.path.name} covers up to seq {p.covering.seq}")
    lines.append("repair (truncate) would drop:")
    lines += ["  " + line for line in _dropped_by_truncate(p)]
    if p.covering is not None:
        lines.append(
            f"repair --use-snapshot would keep the state at seq {p.covering.seq} from {p.covering.path.name} "
            f"and start a fresh journal at seq {p.covering.seq + 1} (old segments moved aside)"
        )
    else:
        lines.append("repair --use-snapshot: no verified snapshot covers seqs beyond the intact end")
    return lines


def _where(p: RepairPlan) -> str:
    return f" in {p.cut[0].name} at byte {p.cut[1]}" if p.cut is not None else ""


def _dropped_by_truncate(p: RepairPlan) -> list[str]:
    out = []
    if p.cut is not None:
        path, offset = p.cut
        what = "the whole file" if offset == 0 else f"{p.cut_bytes:,} bytes from byte {offset}"
        out.append(f"{what} of {path.name}")
        out += [f"segment {s.name} (from seq {_first_seq_of(s)})" for s in p.later]
    out += [f"snapshot {s.path.name} (seq {s.seq}): beyond the journal's new end" for s in p.beyond]
    out.append(f"commands {p.lost_seqs} (acknowledged ones among them: clients resend by client order id)")
    return out


def truncate(p: RepairPlan) -> list[str]:
    """Cut the journal at the damage and move the snapshots beyond its end aside; returns
    what was done, also written to REPAIR.txt in the directory that keeps what was cut."""
    if not p.needed:
        return describe(p)
    aside = repair_dir(p.journal_dir)
    lines = [f"repaired (truncate): {p.problem}{_where(p)}; dropped:", *_dropped_by_truncate(p)]
    if p.cut is not None:
        repair(p.journal_dir, aside)
    for info in p.beyond:
        move_aside(info.path, aside / "snapshots")
    after = scan(p.journal_dir)
    lines.append(f"the journal now holds seq {after.first_seq}..{after.last_seq}")
    return _kept(aside, lines)


def rebuild_from_snapshot(p: RepairPlan) -> list[str]:
    """Keep the covering snapshot's state; a fresh journal continues after its seq."""
    snap = p.covering
    if snap is None:
        raise RepairRefused(
            f"no verified snapshot covers seqs beyond the journal's intact end at seq {p.intact_last_seq}: "
            "nothing to rebuild from (run `loom journal repair --yes` to truncate instead)"
        )
    journal_dir = p.journal_dir
    aside = repair_dir(journal_dir)
    segments = list_segment_files(journal_dir)
    first = _first_seq_of(segments[0]) if segments else 1
    lines = [
        f"repaired (use snapshot): {p.problem}{_where(p)}",
        f"kept: the state at seq {snap.seq} from {snap.path.name} (state hash {snap.state_hash[:16]})",
        f"the journal starts afresh at seq {snap.seq + 1} in {segment_name(snap.seq + 1)}",
        f"the old journal ({len(segments)} segments, intact for seq {first}..{p.intact_last_seq}) was moved "
        f"aside: commands {p.intact_last_seq + 1}..{snap.seq} live on only in the snapshot's state, and a "
        "replay or `loom trace` of anything before the new journal needs the old segments",
    ]
    lines += _keep_venue(journal_dir, segments)
    for path in segments:
        move_aside(path, aside)
    if archive_dir(journal_dir).is_dir():
        move_aside(archive_dir(journal_dir), aside)
        lines.append("journal/archive/ (segments retention had archived) was moved aside with them")
    if p.cut is not None and p.later:
        lines.append(
            f"lost: whatever the old journal held after seq {snap.seq} past its damage ({len(p.later)} later "
            "segments); they are in the directory below"
        )
    for info in p.beyond:
        if info.seq > snap.seq:
            move_aside(info.path, aside / "snapshots")
            lines.append(f"snapshot {info.path.name} (seq {info.seq}, fails verification) moved aside")
    _create_segment(journal_dir, snap.seq + 1)
    return _kept(aside, lines)


def _keep_venue(journal_dir: Path, segments: list[Path]) -> list[str]:
    """journal/VENUE: the ts of seq 1 names the venue in derived trace ids; once seq 1
    leaves the journal it must come from the file."""
    if (journal_dir / VENUE_FILE).exists():
        return []
    venue = None
    if segments and _first_seq_of(segments[0]) == 1:
        with open(segments[0], "rb") as f:
            data = f.read(SEGMENT_HEADER.size + RECORD_HEADER.size)
            if len(data) == SEGMENT_HEADER.size + RECORD_HEADER.size:  # then the first record
                data += f.read(RECORD_HEADER.unpack_from(data, SEGMENT_HEADER.size)[1])
        rec = parse_record(memoryview(data), SEGMENT_HEADER.size)
        header = decode_segment_header(data)
        if not isinstance(rec, str) and header is not None:
            venue = decode_record(rec.payload, header[0])[1][0].ts
    if venue is None:
        venue = time.time_ns()
        store_venue(journal_dir, venue)
        return ["seq 1 is unreadable: a new venue id was stored in journal/VENUE (derived trace ids change)"]
    store_venue(journal_dir, venue)
    return [f"the ts of seq 1 ({venue}) was kept in journal/VENUE (derived trace ids stay the same)"]


def _create_segment(journal_dir: Path, first_seq: int) -> None:
    path = journal_dir / segment_name(first_seq)
    with open(path, "wb") as f:
        f.write(encode_segment_header(first_seq))
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(journal_dir)


def _kept(aside: Path, lines: list[str]) -> list[str]:
    lines.append(f"everything cut or moved is kept in {aside} ({REPORT_FILE} says what)")
    make_dir(aside)
    with open(aside / REPORT_FILE, "w") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(aside)
    return lines
