"""The embedded journal: append-only segment files in one directory, group commit with
fdatasync before a batch counts as written, rollover by size, and a startup scan that
truncates a torn tail but refuses to skip damage anywhere else.

What a crash can leave at the end, given how a batch is written (its header and payload
in one pwrite at the end of the file, then fdatasync before anything is acknowledged): a
prefix of the record (a killed process), possibly with zero-filled blocks where a power
loss came before the data reached the disk. So the last record is a torn tail, truncated
on start, when the file ends inside it or when no record header begins there (zeros,
junk). A last record that is whole but fails its checksum, or whose header is wrong in a
way no write makes, may be an acknowledged batch damaged afterwards: TailDamageError.
"""

from __future__ import annotations

import errno as errno_mod
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.fsutil import fsync_dir
from engine.journal import (
    JournalCorruptError,
    JournalError,
    JournalWriteError,
    OutcomeUnknownError,
    TailDamageError,
)
from engine.journal.format import (
    FORMAT_VERSION,
    MAX_PAYLOAD,
    RECORD_HEADER,
    RECORD_MAGIC,
    SEGMENT_HEADER,
    BatchMeta,
    RecordInfo,
    decode_for_replay,
    decode_record,
    decode_segment_header,
    encode_record,
    encode_segment_header,
    next_valid_record,
    parse_record,
    record_crc,
)

log = logging.getLogger("loom.journal")

SEGMENT_RE = re.compile(r"^journal-(\d{20})\.seg$")
ARCHIVE_DIR = "archive"  # journal/archive/: segments retired by journal_retention = "archive"
REPAIRED_DIR = "repaired"  # journal/repaired/<time>/: what `loom journal repair` cut or moved aside
VENUE_FILE = "VENUE"  # the ts of seq 1, kept once retention retires the segment holding it
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
READ_WINDOW = 4 * 1024 * 1024  # bytes read at a time by FileJournal.records
# What parse_record says of a record cut short by the end of its buffer.
_CUT_SHORT = frozenset({"incomplete record header", "record runs past the end of the file"})


def segment_name(first_seq: int) -> str:
    return f"journal-{first_seq:020d}.seg"


@dataclass
class Segment:
    path: Path
    first_seq: int  # from the header: the seq its first record must start at
    version: int = FORMAT_VERSION
    last_seq: int = 0  # last seq held (first_seq - 1 when empty)
    size: int = 0  # bytes of whole, valid records plus the header
    records: int = 0


@dataclass
class ScanReport:
    """What the startup scan found; `loom journal inspect` prints it."""

    segments: list[Segment] = field(default_factory=list)
    directory: str = ""
    torn_tail_bytes: int = 0  # bytes cut from the end of the last segment
    torn_tail_path: str = ""
    damage: JournalCorruptError | None = None

    @property
    def first_seq(self) -> int:
        return self.segments[0].first_seq if self.segments else 1

    @property
    def last_seq(self) -> int:
        return self.segments[-1].last_seq if self.segments else 0

    @property
    def records(self) -> int:
        return sum(s.records for s in self.segments)

    @property
    def bytes(self) -> int:
        return sum(s.size for s in self.segments)


def list_segment_files(directory: Path) -> list[Path]:
    found = [p for p in directory.iterdir() if SEGMENT_RE.match(p.name)]
    return sorted(found, key=lambda p: p.name)


def archive_dir(directory: Path) -> Path:
    """Where journal retention ("archive") moves segments no kept snapshot needs."""
    return directory / ARCHIVE_DIR


def _with_archive(directory: Path, live: list[Path]) -> list[Path]:
    """The archived segments, then the live ones (names sort by first seq). A name in both
    (never expected: segments are moved by rename) is read from the live directory."""
    archived = archive_dir(directory)
    if not archived.is_dir():
        return live
    names = {p.name for p in live}
    return sorted(
        [p for p in list_segment_files(archived) if p.name not in names] + live, key=lambda p: p.name
    )


def open_segment(path: Path):
    """Open a segment for reading; one retention archived meanwhile is read from the
    archive (a reader may run beside the live node)."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        moved = archive_dir(path.parent) / path.name
        if path.parent.name != ARCHIVE_DIR and moved.exists():
            return open(moved, "rb")
        raise


def scan(directory: str | os.PathLike, archive: bool = False) -> ScanReport:
    """Read every segment and check every record: checksums, sequence continuity across
    records and segments. Changes nothing on disk. `archive`: the segments retention moved
    to journal/archive/ come first."""
    directory = Path(directory)
    report = ScanReport(directory=str(directory))
    files = list_segment_files(directory) if directory.exists() else []
    if archive and files:
        files = _with_archive(directory, files)
    expected = None
    for index, path in enumerate(files):
        is_last = index == len(files) - 1
        with open_segment(path) as f:
            data = f.read()
        header = decode_segment_header(data)
        if header is None:
            # A crash while creating the segment leaves it short or zero-filled: nothing in
            # it was ever acknowledged.
            if is_last and (len(data) < SEGMENT_HEADER.size or not data.strip(b"\0")):
                # Crash while creating the segment: nothing in it was ever acknowledged.
                report.torn_tail_bytes = len(data)
                report.torn_tail_path = str(path)
                break
            report.damage = JournalCorruptError(str(path), 0, expected, "damaged segment header")
            return report
        version, first_seq = header
        if expected is not None and first_seq != expected:
            report.damage = JournalCorruptError(
                str(path), 0, expected, f"sequence gap: segment starts at {first_seq}"
            )
            return report
        seg = Segment(path, first_seq, version, first_seq - 1, SEGMENT_HEADER.size)
        report.segments.append(seg)
        buf = memoryview(data)
        offset = SEGMENT_HEADER.size
        while offset < len(buf):
            rec = parse_record(buf, offset)
            if isinstance(rec, str):
                later = next_valid_record(buf, offset)
                if is_last and later is None:
                    damaged = damaged_tail(buf, offset, seg.last_seq + 1)
                    if damaged is not None:
                        problem, claimed_last = damaged
                        report.damage = TailDamageError(
                            str(path), offset, seg.last_seq + 1, problem, claimed_last
                        )
                        return report
                    report.torn_tail_bytes = len(buf) - offset
                    report.torn_tail_path = str(path)
                    break
                report.damage = JournalCorruptError(str(path), offset, seg.last_seq + 1, rec)
                return report
            if rec.first_seq != seg.last_seq + 1:
                report.damage = JournalCorruptError(
                    str(path),
                    offset,
                    seg.last_seq + 1,
                    f"sequence gap: record starts at {rec.first_seq}",
                )
                return report
            seg.last_seq = rec.last_seq
            seg.records += 1
            offset = rec.end
            seg.size = offset
        expected = seg.last_seq + 1
    return report


def damaged_tail(buf: memoryview, offset: int, expected: int) -> tuple[str, int | None] | None:
    """Why the unreadable bytes from `offset` to the end of the journal are damage that may
    hide an acknowledged batch, with the last seq its header names (None when not
    plausible); None when they are a torn tail that a crash can leave (module docstring)."""
    remaining = len(buf) - offset
    if remaining < RECORD_HEADER.size:
        return None  # the file ends inside a record header
    magic, length, first_seq, count, crc = RECORD_HEADER.unpack_from(buf, offset)
    plausible = first_seq == expected and count > 0 and length <= MAX_PAYLOAD
    claimed_last = expected + count - 1 if plausible else None
    whole = RECORD_HEADER.size + length <= remaining
    if magic != RECORD_MAGIC:
        if plausible and whole:  # the header of the batch due here, but for its magic
            return "bad record magic in a full-length record", claimed_last
        return None  # no record begins here (zeros a power loss left, junk)
    if not plausible:  # a write puts down the true header or nothing: this one was changed
        return (
            f"record header names {count} commands from seq {first_seq} in {length} bytes, "
            f"where seq {expected} belongs",
            None,
        )
    if whole:
        return "checksum mismatch in a full-length record", claimed_last
    # The file ends inside the record: a write cut short, unless the bytes present are the
    # whole record (its checksum matches them) and only its length field was changed.
    present = buf[offset + RECORD_HEADER.size :]
    if record_crc(present, first_seq, count) == crc:
        return "damaged length field in a whole record (its checksum matches the bytes present)", claimed_last
    return None


class FileJournal:
    """Append-only segment files. `append` returns only once the batch is on disk."""

    def __init__(
        self,
        directory: str | os.PathLike,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: bool = True,
        read_only: bool = False,
        archive: bool = False,
        guard: Callable[[ScanReport], None] | None = None,
    ) -> None:
        """`read_only` opens for reading alone (another process may be appending): a torn
        tail is left in place, only the whole records before it are read. `archive` (read
        only) reads the archived segments too, before the live ones. `guard` (not read
        only) sees the startup scan before anything is truncated and may refuse by raising
        (engine/recovery.py tail_guard: a verified snapshot beyond the journal's end)."""
        if archive and not read_only:
            raise ValueError(
                "a journal opened with its archive is read-only: archived segments are never appended to"
            )
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.torn_tail_truncations = 0
        self.torn_tail_bytes = 0
        self.write_errors = 0
        self.fsync_ns: deque[int] = deque(maxlen=65_536)  # recent fdatasync durations
        self.last_fsync_ns = 0
        self._inject_errno: int | None = None
        self._inject_at = "write"
        self._inject_cut_errno: int | None = None
        # (first, last) seq of a batch that may be in the active segment past its last whole
        # record (a failed write or fdatasync that could not be cut off): see `resolve`.
        self._unknown: tuple[int, int] | None = None
        self.read_only = read_only
        report = scan(self.directory, archive=archive)
        if guard is not None and not read_only:
            guard(report)
        if report.damage is not None:
            raise report.damage
        if report.torn_tail_path and not read_only:
            self._truncate_torn_tail(report)
        self.segments = report.segments
        self._last_seq = report.last_seq
        self._fd = -1
        if self.segments and not read_only:
            self._fd = os.open(self.segments[-1].path, os.O_WRONLY)
        self._closed = False

    def _truncate_torn_tail(self, report: ScanReport) -> None:
        path, keep = cut_point(report)
        log.warning(
            "journal: torn tail of %d bytes in %s truncated at byte %d (an unacknowledged "
            "batch cut short by a crash)",
            report.torn_tail_bytes,
            path,
            keep,
        )
        if keep:
            with open(path, "r+b") as f:
                f.truncate(keep)
                os.fsync(f.fileno())
        else:
            path.unlink()
            fsync_dir(self.directory)
        self.torn_tail_truncations += 1
        self.torn_tail_bytes += report.torn_tail_bytes

    @property
    def venue_id(self) -> int | None:
        """The ts of seq 1, once retention stored it (before archiving or deleting the
        segment holding it): the prefix of derived trace ids. None: read it from seq 1."""
        try:
            return int((self.directory / VENUE_FILE).read_text().strip())
        except FileNotFoundError:
            return None

    # -- the Journal interface -------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    def append(self, commands: Sequence, meta: BatchMeta | None = None) -> int:
        if self._closed or self.read_only:
            raise JournalError("journal is closed" if self._closed else "journal is open read-only")
        if not commands:
            return 0
        first = commands[0].seq
        last = commands[-1].seq
        expected = self._last_seq + 1
        for cmd in commands:  # every seq, not only the ends: replay would refuse a disorder
            if cmd.seq != expected:
                raise JournalError(
                    f"batch seq {first}..{last} ({len(commands)} commands) does not continue the "
                    f"journal at {self._last_seq}: found seq {cmd.seq} where {expected} belongs"
                )
            expected += 1
        if self._unknown is not None:  # nothing is written: a true refusal
            raise JournalWriteError(
                f"journal write of seq {first}..{last} refused: the outcome of seq "
                f"{self._unknown[0]}..{self._unknown[1]} is not resolved yet"
            )
        record = encode_record(commands, meta)
        try:
            seg = self.segments[-1] if self.segments else None
            # A segment holds records of one format version: an older one is left as it is
            # (its records stay readable through the upcasters) and a new segment begins.
            if (
                seg is None
                or seg.version != FORMAT_VERSION
                or (seg.size + len(record) > self.segment_bytes and seg.records)
            ):
                seg = self._roll(first)
            self._write(seg.size, record)
        except OSError as exc:
            # Some of the record, or all of it, may be in the file: a short write, or a
            # failed fdatasync after a whole one (whose pages the kernel may still write
            # back, or may have dropped: after such a failure the page cache is no witness,
            # and a second fdatasync that succeeds proves nothing). A refusal is true only
            # once the bytes are known gone: cut back to the batch's start and made durable.
            try:
                self._undo_partial_write()
            except OSError as cut:
                self._unknown = (first, last)
                raise OutcomeUnknownError(
                    f"journal write of seq {first}..{last} failed ({exc.strerror or exc}) and could "
                    f"not be cut off ({cut.strerror or cut}): it may be in the journal"
                ) from exc
            self.write_errors += 1
            raise JournalWriteError(
                f"journal write of seq {first}..{last} failed: {exc.strerror or exc}"
            ) from exc
        seg.size += len(record)
        seg.last_seq = last
        seg.records += 1
        self._last_seq = last
        return len(record)

    def _write(self, offset: int, record: bytes) -> None:
        if self._inject_errno is not None and self._inject_at == "write":
            raise OSError(self._inject_errno, os.strerror(self._inject_errno))
        view = memoryview(record)
        while view:
            n = os.pwrite(self._fd, view, offset)
            view = view[n:]
            offset += n
        if self._inject_errno is not None:  # "fsync": the whole record is in the file
            raise OSError(self._inject_errno, os.strerror(self._inject_errno))
        if self.fsync:
            started = time.perf_counter_ns()
            os.fdatasync(self._fd)
            self.last_fsync_ns = time.perf_counter_ns() - started
            self.fsync_ns.append(self.last_fsync_ns)

    def _undo_partial_write(self) -> None:
        """Cut the active segment back to its last whole record, durably (the new size is
        on disk once fsync returns), so a failed batch leaves no bytes behind."""
        if self._inject_cut_errno is not None:
            raise OSError(self._inject_cut_errno, os.strerror(self._inject_cut_errno))
        if self.segments and self._fd >= 0:
            os.ftruncate(self._fd, self.segments[-1].size)
            os.fsync(self._fd)

    @property
    def unresolved(self) -> tuple[int, int] | None:
        """(first, last) seq of a batch that may be in the journal, or None."""
        return self._unknown

    def resolve(self, within: float = 0.0) -> bool:
        """Settle the batch that may be in the journal: cut it off again; once the cut is
        durable it is known absent (False). Never True: after a failed fdatasync no later
        call can prove the bytes durable (the "fsyncgate" problem), so a batch is only
        ever refused here, or found whole by recovery after a restart (which applies it).
        Raises OutcomeUnknownError while the cut fails. `within`: the Journal signature."""
        if self._unknown is None:
            raise JournalError("no append has an unknown outcome")
        first, last = self._unknown
        try:
            self._undo_partial_write()
        except OSError as exc:
            raise OutcomeUnknownError(
                f"journal write of seq {first}..{last} still cannot be cut off: {exc.strerror or exc}"
            ) from exc
        self._unknown = None
        # INFO: the node's refusal log has the one WARNING for an outcome it answered unknown.
        log.info("journal write of seq %d..%d cut off: it is not in the journal", first, last)
        return False

    def _roll(self, first_seq: int) -> Segment:
        path = self.directory / segment_name(first_seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            header = encode_segment_header(first_seq)
            os.pwrite(fd, header, 0)
            if self.fsync:
                os.fdatasync(fd)
                fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        seg = Segment(path, first_seq, FORMAT_VERSION, first_seq - 1, len(header))
        self.segments.append(seg)
        return seg

    def read(self, from_seq: int = 1) -> Iterator:
        for batch in self.read_batches(from_seq):
            yield from batch

    def read_batches(self, from_seq: int = 1) -> Iterator[list]:
        """Decoded batches holding seq >= from_seq (the first one trimmed to start there)."""
        for _meta, commands in self.read_records(from_seq):
            yield commands

    def replay_batches(self, from_seq: int = 1) -> Iterator[list]:
        """Like read_batches, decoded as replay reads them (`decode_for_replay`: new orders
        and cancels without their timestamps and trace ids), for `SilentReplayer`."""
        for rec, version in self.records(from_seq):
            commands = decode_for_replay(rec.payload, version)
            if rec.first_seq < from_seq:
                commands = commands[from_seq - rec.first_seq :]
            yield commands

    def read_records(self, from_seq: int = 1) -> Iterator[tuple[BatchMeta, list]]:
        """Like read_batches, each batch with the BatchMeta journaled with it."""
        for rec, version in self.records(from_seq):
            meta, commands = decode_record(rec.payload, version)
            if rec.first_seq < from_seq:
                commands = commands[from_seq - rec.first_seq :]
            yield meta, commands

    def records(self, from_seq: int = 1) -> Iterator[tuple[RecordInfo, int]]:
        """Raw records (undecoded) that hold any seq >= from_seq, with their segment version."""
        segments = list(self.segments)
        for i, seg in enumerate(segments):
            if seg.last_seq < from_seq or seg.records == 0:
                continue
            if i + 1 < len(segments) and segments[i + 1].first_seq <= from_seq:
                continue
            with open_segment(seg.path) as f:
                # The segment is read in windows (a record's offset is in its window): a
                # buffer of a whole segment would be fresh memory, faulted in page by page,
                # where windows of a few MB reuse the same memory.
                base = SEGMENT_HEADER.size  # the file offset of buf[0]
                f.seek(base)
                buf = memoryview(f.read(min(READ_WINDOW, seg.size - base)))
                offset = 0
                while base + offset < seg.size:
                    rec = parse_record(buf, offset)
                    if isinstance(rec, str):
                        if rec in _CUT_SHORT and base + len(buf) < seg.size:  # the window ends
                            need = RECORD_HEADER.size
                            if len(buf) - offset >= RECORD_HEADER.size:
                                need += RECORD_HEADER.unpack_from(buf, offset)[1]
                            rest = buf[offset:].tobytes()
                            base += offset
                            more = max(READ_WINDOW, need) - len(rest)
                            buf = memoryview(rest + f.read(min(more, seg.size - base - len(rest))))
                            offset = 0
                            continue
                        # changed under us since the scan
                        raise JournalCorruptError(str(seg.path), base + offset, None, rec)
                    offset = rec.end
                    if rec.last_seq >= from_seq:
                        yield rec, seg.version

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._closed = True

    # -- operations ------------------------------------------------------------------------

    def fail_writes(self, errno: int | None = errno_mod.EIO, at: str = "write") -> None:
        """Fault injection for drills and tests, until called again with None: every
        append fails with `errno` `at` "write" (nothing written) or "fsync" (the whole
        record written, then its fdatasync fails)."""
        if at not in ("write", "fsync"):
            raise ValueError(f"fail_writes at {at!r}: expected write or fsync")
        self._inject_errno = errno
        self._inject_at = at

    def fail_cuts(self, errno: int | None = errno_mod.EIO) -> None:
        """Fault injection: cutting a failed batch back off the segment fails with `errno`
        until called again with None (with fail_writes at "fsync": an unknown outcome)."""
        self._inject_cut_errno = errno


def cut_point(report: ScanReport) -> tuple[Path, int] | None:
    """Where a repair cuts the journal the scan describes: (file, byte offset; 0 for the
    whole file) at the first damage or torn tail; None when there is nothing to cut."""
    if report.damage is not None:
        return Path(report.damage.path), report.damage.offset
    if report.torn_tail_path:
        path = Path(report.torn_tail_path)
        last = report.segments[-1] if report.segments else None
        return path, last.size if last is not None and last.path == path else 0
    return None


def repair_dir(directory: str | os.PathLike) -> Path:
    """A new directory, beside the segments, for what one repair cuts or moves aside."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = Path(directory) / REPAIRED_DIR
    path, n = base / stamp, 1
    while path.exists():
        n += 1
        path = base / f"{stamp}-{n}"
    return path


def make_dir(path: Path) -> None:
    """Create `path` and any missing parents, each new entry made durable in its parent
    (what a repair keeps aside must survive a power loss as surely as its cut does)."""
    if path.is_dir():
        return
    make_dir(path.parent)
    path.mkdir()
    fsync_dir(path.parent)


def move_aside(path: Path, aside: Path) -> Path:
    """Rename `path` into `aside` (created), both directories made durable."""
    make_dir(aside)
    target = aside / path.name
    os.replace(path, target)
    fsync_dir(aside)
    fsync_dir(path.parent)
    return target


def repair(directory: str | os.PathLike, aside: Path | None = None) -> ScanReport:
    """The operator's explicit repair: truncate the journal at the first damage or torn
    tail and move every later segment aside. Nothing is destroyed: the cut bytes are
    copied to `aside` (default: a new journal/repaired/<UTC time>/) as
    `<segment>.from-<offset>` before the truncation, and the segments after the damage (or
    one whose header is damaged) are moved there whole. Returns the scan made before
    repairing (what was damaged)."""
    directory = Path(directory)
    report = scan(directory)
    cut = cut_point(report)
    if cut is None:
        return report
    damaged, offset = cut
    aside = aside or repair_dir(directory)
    for path in list_segment_files(directory):
        if path.name > damaged.name:
            log.warning("journal repair: moving %s (after the damage) to %s", path, aside)
            move_aside(path, aside)
    if offset <= 0:
        log.warning("journal repair: moving %s (damaged or torn header) to %s", damaged, aside)
        move_aside(damaged, aside)
        return report
    with open(damaged, "r+b") as f:
        f.seek(offset)
        cut_bytes = f.read()
        make_dir(aside)
        copy = aside / f"{damaged.name}.from-{offset}"
        with open(copy, "wb") as out:
            out.write(cut_bytes)
            out.flush()
            os.fsync(out.fileno())
        fsync_dir(aside)
        log.warning(
            "journal repair: truncating %s at byte %d (%d bytes cut, copied to %s)",
            damaged,
            offset,
            len(cut_bytes),
            copy,
        )
        f.truncate(offset)
        os.fsync(f.fileno())
    return report
