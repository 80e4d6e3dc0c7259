"""Journal retention for the standalone node: after a snapshot, the closed segments that
no kept snapshot needs are archived (moved to journal/archive/) or deleted.

    journal_retention = "keep"     never touch a segment (the default: the journal is the
                                   venue's audit trail)
                        "archive"  rename them into journal/archive/ (same file system)
                        "delete"   remove them

A segment is retired only when every record in it is at or below the seq of the OLDEST
snapshot still kept, so recovery can start from any kept snapshot (the fallback past a
damaged newer one included). The active (last) segment is never retired. Segments go
oldest first, one at a time, each made durable (both directories fsync'd) before the next:
a crash at any point leaves the live journal a contiguous run that every kept snapshot
can still replay from, and each segment either in journal/ or in journal/archive/.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from engine.fsutil import fsync_dir
from engine.journal.segments import SEGMENT_RE, VENUE_FILE, FileJournal, Segment, archive_dir

log = logging.getLogger("loom.journal")

KEEP = "keep"
ARCHIVE = "archive"
DELETE = "delete"
POLICIES = (KEEP, ARCHIVE, DELETE)


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"journal_retention {policy!r} is not one of {', '.join(repr(p) for p in POLICIES)}")
    return policy


@dataclass
class RetentionStats:
    archived_segments: int = 0
    archived_bytes: int = 0
    deleted_segments: int = 0
    deleted_bytes: int = 0
    failures: int = 0


def retirable(journal: FileJournal, upto_seq: int) -> list[Segment]:
    """The closed segments at the head of the journal whose every record is <= upto_seq."""
    out = []
    for seg in journal.segments[:-1]:  # never the active segment
        if seg.last_seq > upto_seq:
            break  # only a head run: the live journal must stay contiguous
        out.append(seg)
    return out


def retire(journal: FileJournal, upto_seq: int, policy: str, stats: RetentionStats) -> list[Segment]:
    """Archive or delete the segments `retirable` names; returns those retired. Stops at
    the first OSError (counted, logged, raised): the rest wait for the next snapshot."""
    if policy == KEEP or journal.read_only:
        return []
    check_policy(policy)
    done = []
    for seg in retirable(journal, upto_seq):
        size = seg.path.stat().st_size
        try:
            if seg.first_seq == 1 and journal.venue_id is None:
                _store_venue(journal)
            if policy == ARCHIVE:
                _archive(journal.directory, seg.path)
                stats.archived_segments += 1
                stats.archived_bytes += size
            else:
                seg.path.unlink()
                fsync_dir(journal.directory)
                stats.deleted_segments += 1
                stats.deleted_bytes += size
        except OSError:
            stats.failures += 1
            raise
        # Only now: a reader that listed it finds it in the archive (open_segment).
        journal.segments.remove(seg)
        done.append(seg)
        log.info(
            "journal retention: %s %s (seq %d..%d, %d bytes; oldest kept snapshot at seq %d)",
            "archived" if policy == ARCHIVE else "deleted",
            seg.path.name,
            seg.first_seq,
            seg.last_seq,
            size,
            upto_seq,
        )
    return done


def _store_venue(journal: FileJournal) -> None:
    """Derived trace ids start with the ts of seq 1 (ExchangeNode.venue_id): keep it
    before the segment that holds it goes, or every derived id would change."""
    store_venue(journal.directory, next(iter(journal.read(1))).ts)


def store_venue(directory: Path, venue: int) -> None:
    """Write journal/VENUE (the ts of seq 1) durably."""
    final = directory / VENUE_FILE
    tmp = final.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(f"{venue}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(directory)


def _archive(directory: Path, path: Path) -> None:
    target_dir = archive_dir(directory)
    if not target_dir.is_dir():
        target_dir.mkdir()
        fsync_dir(directory)
    # rename within one file system is atomic: after a crash the file is in exactly one
    # of the two directories. fsync the new entry first, then the removal of the old one.
    os.rename(path, target_dir / path.name)
    fsync_dir(target_dir)
    fsync_dir(directory)


def archived_first_seq(directory: Path) -> int | None:
    """The first seq of the oldest archived segment (from its name), None without one."""
    target_dir = archive_dir(Path(directory))
    if not target_dir.is_dir():
        return None
    seqs = [int(m.group(1)) for p in target_dir.iterdir() if (m := SEGMENT_RE.match(p.name))]
    return min(seqs) if seqs else None
