"""An in-memory journal: the reference backend for the journal contract suite
(tests/journal_contract.py) and for tests that need a journal without a disk.

It keeps each batch as the exact bytes `encode_record` produces and decodes them with
`decode_record` on read, so it exercises the same record format as the segment files. It
checks sequence continuity like every backend and offers the same fault injection as
`FileJournal.fail_writes`. Nothing survives the process: it is not a durable backend.
"""

from __future__ import annotations

import errno as errno_mod
import os
from collections.abc import Iterator, Sequence

from engine.core.commands import Command
from engine.journal import JournalCorruptError, JournalError, JournalWriteError
from engine.journal.format import FORMAT_VERSION, BatchMeta, decode_record, encode_record, parse_record

MEMORY_PATH = "<memory>"  # what errors name in place of a file


class MemoryJournal:
    """Append-only list of encoded records; same interface as `FileJournal`."""

    def __init__(self) -> None:
        self._records: list[bytes] = []
        self._last_seq = 0
        self._size = 0
        self._inject_errno: int | None = None
        self._closed = False
        self.write_errors = 0

    # -- the Journal interface -------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def size_bytes(self) -> int:
        return self._size

    def append(self, commands: Sequence[Command], meta: BatchMeta | None = None) -> int:
        if self._closed:
            raise JournalError("journal is closed")
        if not commands:
            return 0
        expected = self._last_seq + 1
        for i, cmd in enumerate(commands):
            if cmd.seq != expected + i:
                raise JournalError(
                    f"batch seq {commands[0].seq}..{commands[-1].seq} ({len(commands)} commands) "
                    f"does not continue the journal at {self._last_seq}: command {i} has seq "
                    f"{cmd.seq}, expected {expected + i}"
                )
        if self._inject_errno is not None:
            self.write_errors += 1
            raise JournalWriteError(
                f"journal write of seq {expected}..{commands[-1].seq} failed: "
                f"{os.strerror(self._inject_errno)}"
            )
        record = encode_record(commands, meta)
        self._records.append(record)
        self._size += len(record)
        self._last_seq = commands[-1].seq
        return len(record)

    def read(self, from_seq: int = 1) -> Iterator[Command]:
        for batch in self.read_batches(from_seq):
            yield from batch

    def read_batches(self, from_seq: int = 1) -> Iterator[list[Command]]:
        """Decoded batches holding seq >= from_seq (the first one trimmed to start there)."""
        for _meta, commands in self.read_records(from_seq):
            yield commands

    def read_records(self, from_seq: int = 1) -> Iterator[tuple[BatchMeta, list[Command]]]:
        """Like read_batches, each batch with the BatchMeta journaled with it."""
        offset = 0
        for record in self._records[:]:  # a snapshot: appends during iteration are not seen
            rec = parse_record(memoryview(record), 0)
            if isinstance(rec, str):  # only if someone mutated the stored bytes
                raise JournalCorruptError(MEMORY_PATH, offset, None, rec)
            offset += len(record)
            if rec.last_seq < from_seq:
                continue
            meta, commands = decode_record(rec.payload, FORMAT_VERSION)
            if rec.first_seq < from_seq:
                commands = commands[from_seq - rec.first_seq :]
            yield meta, commands

    def close(self) -> None:
        self._closed = True

    # -- operations ------------------------------------------------------------------------

    def fail_writes(self, errno: int | None = errno_mod.EIO) -> None:
        """Fault injection: every append fails with `errno` until called again with None."""
        self._inject_errno = errno
