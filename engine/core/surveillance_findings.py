"""What the abuse detectors report: a finding (kind, symbol, who, when, why) and the log that
counts them by kind and symbol and keeps the latest few for the admin report.

Pure and deterministic like the detectors: a finding carries the event time (`ts`, the
sequencer's) and the seq of the event that completed the pattern, never a wall clock.
The counts go out as metrics (kind, symbol: never an account); the accounts and owners are
for the admin/ops report only.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

WASH_TRADE = "wash_trade"
SPOOFING = "spoofing"
LAYERING = "layering"
PRICE_MOVE = "price_move"
FINDING_KINDS = (WASH_TRADE, SPOOFING, LAYERING, PRICE_MOVE)


@dataclass(frozen=True)
class Finding:
    kind: str
    symbol: str
    seq: int  # the event that completed the pattern
    ts: int
    owner: str  # the beneficial owner ("" for a symbol's price move)
    accounts: tuple[str, ...]
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "symbol": self.symbol,
            "seq": self.seq,
            "ts": self.ts,
            "owner": self.owner,
            "accounts": list(self.accounts),
            **self.detail,
        }


class FindingLog:
    """Counts by (kind, symbol) since start, and the latest `keep` findings per kind."""

    def __init__(self, keep: int = 100) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.latest: dict[str, deque[Finding]] = {k: deque(maxlen=keep) for k in FINDING_KINDS}

    def add(self, finding: Finding) -> None:
        key = (finding.kind, finding.symbol)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.latest[finding.kind].append(finding)

    def total(self, kind: str) -> int:
        return sum(n for (k, _s), n in self.counts.items() if k == kind)
