"""Per-order stage timings for the order lookup, from what each group-commit batch records.

A batch journals a `BatchMeta` (engine/journal/format.py): when it was formed, each
submission's command count and gateway-receive -> formed wait, and the journal, match and
ack durations of the batch before it. From that and the order's command (its `ts` is the
sequencer's stamp), an order's stages are:

    receive -> sequenced   the command's ts minus its submission's receive time
    journal                its batch's write + fdatasync
    match                  its batch's matching (every command of the batch)
    ack                    its batch's answers to the submitters and the listeners

The last three are the batch's: every order of a batch shares them. `RecentBatches` keeps
the same facts in memory for the newest batches, so the order store answers without
reading the journal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class BatchMeta(Protocol):
    """What the stages read of a batch's journaled timings (engine.journal.format.BatchMeta):
    a protocol, so the core does not import the journal's record format."""

    @property
    def stamped_ns(self) -> int: ...
    @property
    def counts(self) -> Sequence[int]: ...
    @property
    def waits_ns(self) -> Sequence[int]: ...


@dataclass(frozen=True, slots=True)
class Durations:
    """One batch's measured stage durations, in nanoseconds."""

    journal_ns: int
    match_ns: int
    ack_ns: int


def received_ns(meta: BatchMeta, first_seq: int, seq: int) -> int:
    """The gateway receive time of the submission holding `seq`, 0 when not recorded."""
    offset = seq - first_seq
    for count, wait in zip(meta.counts, meta.waits_ns, strict=False):
        if offset < count:
            return meta.stamped_ns - wait if meta.stamped_ns else 0
        offset -= count
    return 0


def _us(ns: int | None) -> float | None:
    return None if ns is None else round(ns / 1000, 1)


def stages_json(
    meta: BatchMeta, first_seq: int, count: int, seq: int, ts: int, durations: Durations | None
) -> dict[str, Any]:
    """The lookup's "stages" object for the command `seq` (sequenced at `ts`) of a batch."""
    received = received_ns(meta, first_seq, seq)
    return {
        "received_ns": received or None,
        "sequenced_ns": ts,
        "batch_first_seq": first_seq,
        "batch_commands": count,
        "receive_to_sequenced_us": _us(ts - received) if received else None,
        "journal_us": _us(durations.journal_ns) if durations else None,
        "match_us": _us(durations.match_ns) if durations else None,
        "ack_us": _us(durations.ack_ns) if durations else None,
    }


def duration_text(us: float) -> str:
    """A duration for people: "850 µs", "12.4 ms", "2.10 s" (FIX, issue 14: `loom trace`
    printed every stage in µs and every time in raw nanoseconds)."""
    if us < 1_000:
        return f"{us:,.1f} µs" if us < 100 else f"{us:,.0f} µs"
    if us < 1_000_000:
        return f"{us / 1_000:,.2f} ms"
    return f"{us / 1_000_000:,.2f} s"


def format_stages(stages: dict[str, Any] | None) -> str:
    """One line for `loom trace`: each stage's duration, "?" where not recorded."""
    if not stages:
        return "(not recorded)"
    parts = []
    for label, key in (
        ("receive->sequenced", "receive_to_sequenced_us"),
        ("journal", "journal_us"),
        ("match", "match_us"),
        ("ack", "ack_us"),
    ):
        value = stages.get(key)
        parts.append(f"{label} {'?' if value is None else duration_text(value)}")
    return ", ".join(parts) + f" (batch of {stages.get('batch_commands', 0)})"


class RecentBatches:
    """The newest `size` batches' metas and durations, in a fixed ring (no growth, no
    dict resizes on the commit loop); looked up by seq only when someone asks."""

    def __init__(self, size: int = 8192) -> None:
        self.size = size
        self._ring: list[tuple[int, int, BatchMeta, Durations | None] | None] = [None] * size
        self._next = 0

    def add(self, first_seq: int, count: int, meta: BatchMeta, durations: Durations | None) -> None:
        self._ring[self._next] = (first_seq, count, meta, durations)
        self._next = (self._next + 1) % self.size

    def stages(self, seq: int, ts: int) -> dict[str, Any] | None:
        """The stages of command `seq` (sequenced at `ts`), or None when its batch is no
        longer (or never was) in the ring."""
        for back in range(1, self.size + 1):
            entry = self._ring[(self._next - back) % self.size]
            if entry is None:
                return None
            first_seq, count, meta, durations = entry
            if first_seq <= seq < first_seq + count:
                return stages_json(meta, first_seq, count, seq, ts, durations)
            if first_seq + count <= seq:
                return None  # newer than every batch held: not committed yet
        return None
