"""The audit trail of risk administration: one record per applied change of limits, kill
switches and halts, with who asked (`requested_by`, from the gateway's key), when (the
sequencer's `ts`), the scope and target, and the old and new value.

The records are part of the engine state (hashed, snapshotted), so they survive a restart
however far back the snapshot is; the journal holds the commands that made them, and
their events carry the same fields. The most recent `MAX_RECORDS` are kept (an automation
toggling a switch for years must not grow the state without bound); the journal keeps all.
"""

from __future__ import annotations

import msgspec

from engine.core.domain import RiskLimits

LIMITS = 1
KILL_SWITCH = 2
HALT = 3
KINDS = {LIMITS: "limits", KILL_SWITCH: "kill_switch", HALT: "halt"}
MAX_RECORDS = 50_000
_NONE = RiskLimits()


class AuditRecord(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """`old_on`/`new_on` and the reasons are the switch's or the halt's; the limits fields
    the limits' (all zero: none). A halt's scope is SYMBOL, its target the symbol."""

    seq: int
    ts: int
    requested_by: str
    kind: int  # LIMITS, KILL_SWITCH, HALT
    scope: int  # RiskScope
    target: str
    old_limits: RiskLimits = _NONE
    new_limits: RiskLimits = _NONE
    old_on: bool = False
    new_on: bool = False
    old_reason: str = ""
    new_reason: str = ""


def append(records: list[AuditRecord], record: AuditRecord) -> None:
    records.append(record)
    if len(records) > MAX_RECORDS:
        del records[: len(records) - MAX_RECORDS]


def page(records: list[AuditRecord], after: int, limit: int) -> list[AuditRecord]:
    """The records with seq above `after`, oldest first, at most `limit` (seqs ascend)."""
    lo, hi = 0, len(records)
    while lo < hi:  # the first record past `after`
        mid = (lo + hi) // 2
        if records[mid].seq <= after:
            lo = mid + 1
        else:
            hi = mid
    return records[lo : lo + limit]
