"""Following a live journal from another process, read-only (the snapshotter).

The node appends records and fdatasyncs them; a reader beside it may see bytes that are not
durable yet (a record written but not synced, or one a failed fdatasync is about to cut
off). So the reader is told how far the journal is durable (`upto`: the node's applied
seq, which it applied only after the fsync) and never decodes a record past it: every
record it reads is whole, synced and acknowledged, and can no longer change.

Segments are read in order by name; one that journal retention archived meanwhile is read
from journal/archive/ (open_segment), one already open stays readable even if deleted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from engine.journal import JournalCorruptError, RecoveryGapError
from engine.journal.format import RECORD_HEADER, decode_for_replay, decode_segment_header, parse_record
from engine.journal.segments import SEGMENT_HEADER, SEGMENT_RE, archive_dir, open_segment, segment_name

READ_CHUNK = 1 << 20


class JournalTail:
    """Replay-decoded batches of the journal in `directory` from `next_seq` on, read as
    the node makes them durable."""

    def __init__(self, directory: str | os.PathLike, next_seq: int) -> None:
        self.directory = Path(directory)
        self.next_seq = next_seq  # the first seq not yet handed out
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._version = 0
        self._offset = 0  # file offset of the next record
        self._buf = b""  # bytes read from _offset on, not yet parsed
        self._finished: Path | None = None  # the segment read to its end last

    def batches(self, upto: int) -> Iterator[list]:
        """Every batch up to seq `upto` (durable: the caller knows), each trimmed to start
        at next_seq. Stops at `upto`; a batch never straddles it (the node's applied seq is
        a batch boundary)."""
        while self.next_seq <= upto:
            if self._file is None:
                self._open_segment_of(self.next_seq)
            rec = self._next_record()
            if rec is None:  # this segment ends here: the next one begins at next_seq
                self._finished = self._path
                self._close()
                continue
            payload, first, count = rec
            last = first + count - 1
            if last < self.next_seq:
                continue  # before where we start
            if first > self.next_seq:
                raise RecoveryGapError(
                    str(self.directory),
                    self.next_seq,
                    first,
                    f"record at seq {first} after {self.next_seq - 1}",
                )
            if last > upto:
                raise JournalCorruptError(
                    str(self._path), self._offset, first, f"record {first}..{last} runs past seq {upto}"
                )
            commands = decode_for_replay(payload, self._version)
            if first < self.next_seq:
                commands = commands[self.next_seq - first :]
            self.next_seq = last + 1
            yield commands

    def _next_record(self) -> tuple[bytes, int, int] | None:
        """The next whole record of the open segment, or None at its end (no bytes left:
        only asked for while a durable seq is still to come, so it is in a later segment)."""
        while True:
            rec = parse_record(memoryview(self._buf), 0)
            if not isinstance(rec, str):
                payload = bytes(rec.payload)
                self._buf = self._buf[rec.end :]
                self._offset += rec.end
                return payload, rec.first_seq, rec.count
            need = RECORD_HEADER.size
            if len(self._buf) >= RECORD_HEADER.size and rec == "record runs past the end of the file":
                need += RECORD_HEADER.unpack_from(self._buf)[1]
            elif len(self._buf) >= RECORD_HEADER.size:
                raise JournalCorruptError(str(self._path), self._offset, self.next_seq, rec)
            assert self._file is not None  # opened at the top of the loop
            more = self._file.read(max(READ_CHUNK, need - len(self._buf)))
            if not more:
                if self._buf:
                    if self._later_segment_exists():  # only a torn tail ends a segment early
                        raise JournalCorruptError(str(self._path), self._offset, self.next_seq, rec)
                    raise JournalCorruptError(
                        str(self._path), self._offset, self.next_seq, f"seq {self.next_seq} is not whole yet"
                    )
                return None
            self._buf += more

    def _later_segment_exists(self) -> bool:
        current = self._path.name if self._path is not None else ""
        return any(p.name > current for p in self._segment_files())

    def _segment_files(self) -> list[Path]:
        found = {}
        for d in (archive_dir(self.directory), self.directory):
            if d.is_dir():
                found.update({p.name: p for p in d.iterdir() if SEGMENT_RE.match(p.name)})
        return [found[name] for name in sorted(found)]

    def _open_segment_of(self, seq: int) -> None:
        """Open the segment holding `seq`: the last one whose first seq is at or before it."""
        exact = self.directory / segment_name(seq)
        candidates = [p for p in self._segment_files() if _first_seq(p) <= seq]
        if not candidates:
            raise RecoveryGapError(str(self.directory), seq, seq, f"no journal segment holds seq {seq}")
        path = exact if exact.exists() else candidates[-1]
        if path == self._finished:  # read to its end, and no segment begins at seq
            raise RecoveryGapError(str(self.directory), seq, seq, f"no journal segment holds seq {seq}")
        f = open_segment(path)
        header = decode_segment_header(f.read(SEGMENT_HEADER.size))
        if header is None:
            f.close()
            raise JournalCorruptError(str(path), 0, seq, "damaged segment header")
        self._file, self._path, self._version = f, path, header[0]
        self._offset, self._buf = SEGMENT_HEADER.size, b""

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None
        self._path = None

    def close(self) -> None:
        self._close()


def _first_seq(path: Path) -> int:
    """The first seq of a segment file (its name, which _segment_files matched)."""
    match = SEGMENT_RE.match(path.name)
    assert match is not None
    return int(match.group(1))
