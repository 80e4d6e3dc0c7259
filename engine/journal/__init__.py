"""The journal: the durable, append-only record of every sequenced command.

The core is deterministic, so the commands are the source of truth: replaying them into a
fresh engine reproduces every event and the exact state. Backends share one interface and
one contract test suite (tests/journal_contract.py): local segment files here, a
replicated log later.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol


class JournalError(Exception):
    """Base of the journal's errors."""


class JournalWriteError(JournalError):
    """A batch could not be made durable (disk full, I/O error) and is known not to be in
    the journal: the caller rejects its commands (a true "nothing was done") and may retry."""


class OutcomeUnknownError(JournalWriteError):
    """A batch may or may not be in the journal: its PubAck was lost, or its bytes reached
    the file but neither the fdatasync nor the cut back to the batch's start succeeded.
    The journal keeps the batch as unresolved and refuses to append after it until
    `resolve` (or `resolve_async`) says whether it landed. Its commands are answered
    OUTCOME_UNKNOWN, never "nothing was done"."""


class JournalCorruptError(JournalError):
    """Damage that recovery must not skip: a bad checksum or a sequence gap before the
    tail. Names the file, the byte offset and the sequence where it was found."""

    def __init__(self, path: str, offset: int, seq: int | None, problem: str) -> None:
        self.path = path
        self.offset = offset
        self.seq = seq
        self.problem = problem
        where = f"{path} at byte {offset}" + (f" (sequence {seq})" if seq is not None else "")
        super().__init__(
            f"journal damaged: {problem} in {where}; refusing to start. "
            f"Inspect with `loom journal inspect`, repair with `loom journal repair` "
            f"(which truncates the journal at the damage)."
        )


class TailDamageError(JournalCorruptError):
    """The journal's end may hide acknowledged commands: a full-length last record that
    fails its checksum (a crash leaves a record cut short, not a whole one with wrong
    bytes), or a journal that ends before a verified snapshot's seq (the snapshot proves
    those commands were journaled). Not a torn tail: recovery refuses until an operator
    repairs. `claimed_last`: the last seq the damaged record's header names, when it is
    plausible; `snapshot`/`snapshot_seq`: the verified snapshot past the journal's end."""

    def __init__(
        self,
        path: str,
        offset: int,
        seq: int,
        problem: str,
        claimed_last: int | None = None,
        snapshot: str = "",
        snapshot_seq: int = 0,
    ) -> None:
        self.path = path
        self.offset = offset
        self.seq = seq  # the first seq that may be lost (the journal's intact end + 1)
        self.problem = problem
        self.claimed_last = claimed_last
        self.snapshot = snapshot
        self.snapshot_seq = snapshot_seq
        Exception.__init__(self, self._message())

    @property
    def last_known_seq(self) -> int | None:
        """The last seq known to be at stake: from the damaged header or the snapshot."""
        known = max(self.claimed_last or 0, self.snapshot_seq)
        return known if known >= self.seq else None

    def with_snapshot(self, snapshot: str, snapshot_seq: int) -> TailDamageError:
        return TailDamageError(
            self.path, self.offset, self.seq, self.problem, self.claimed_last, snapshot, snapshot_seq
        )

    def _message(self) -> str:
        last = self.last_known_seq
        seqs = f"seq {self.seq}.." + (str(last) if last is not None else " (how far is unknown)")
        if self.snapshot:
            cover = f"verified snapshot {self.snapshot} covers up to seq {self.snapshot_seq}"
        else:
            cover = f"no verified snapshot covers seq {self.seq} or later"
        return (
            f"journal damaged at its end: {self.problem} in {self.path} at byte {self.offset}, "
            f"{seqs}; not a torn tail: acknowledged commands may be lost; {cover}; refusing to start. "
            f"Inspect with `loom journal inspect`; `loom journal repair --yes` truncates there (keeping "
            f"a copy of the cut bytes), `loom journal repair --use-snapshot --yes` rebuilds from the "
            f"covering snapshot."
        )


class RecoveryGapError(JournalCorruptError):
    """Commands the state needs are neither in a snapshot nor in the journal any more (a
    replicated journal purged by retention, or segments removed): recovery refuses rather
    than skip them. Names the first missing seq and where the journal continues."""

    def __init__(self, path: str, needed: int, continues: int, problem: str) -> None:
        self.path = path
        self.offset = 0
        self.seq = needed
        self.continues = continues
        self.problem = problem
        Exception.__init__(
            self,
            f"commands {needed}..{continues - 1} are missing: {problem} in {path}, and no snapshot "
            f"covers seq {continues - 1}; refusing to start rather than skip them. Start from a "
            f"snapshot at seq {continues - 1} or later (a cluster node fetches the newest replicated "
            f"one), or from a journal that still holds seq {needed}.",
        )


class Journal(Protocol):
    """What every journal backend provides."""

    @property
    def last_seq(self) -> int:
        """Sequence of the last durable command (0 when empty)."""
        ...

    def append(self, commands: Sequence, meta=None) -> int:
        """Make a batch durable, with its BatchMeta (timings; engine/journal/format.py)
        when given; return its size in bytes. The commands' `seq` must run on
        from `last_seq + 1` without gaps. Raises JournalWriteError, leaving nothing of the
        batch behind, or OutcomeUnknownError when that cannot be known (resolve it first)."""
        ...

    def read(self, from_seq: int = 1) -> Iterator:
        """Every durable command with seq >= from_seq, in order."""
        ...

    def read_records(self, from_seq: int = 1) -> Iterator:
        """(BatchMeta, commands) for every batch holding seq >= from_seq, the first batch
        trimmed to start there."""
        ...

    def close(self) -> None: ...
