"""The sequencer: the one place that reads a clock and assigns sequence numbers.

Everything after it (risk, matching) is a pure function of the stamped commands, which is
what makes replay reproduce the live state exactly. Group commit (batching for the
journal) builds on this in the persistence layer.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Sequencer:
    def __init__(self, last_seq: int = 0, clock: Callable[[], int] = time.time_ns, last_ts: int = 0) -> None:
        self.last_seq = last_seq
        self._clock = clock
        self._last_ts = last_ts  # the journal's last timestamp: time never runs backwards

    @property
    def last_ts(self) -> int:
        return self._last_ts

    def stamp(self, cmd):
        """Give `cmd` the next sequence number and a timestamp that never goes backwards
        (a wall clock may step back; event time must not)."""
        self.last_seq += 1
        ts = self._clock()
        if ts < self._last_ts:
            ts = self._last_ts
        self._last_ts = ts
        cmd.seq = self.last_seq
        cmd.ts = ts
        return cmd

    def rewind(self, last_seq: int) -> None:
        """Give back the numbers of a batch that never became durable, so the journal
        stays gap-free."""
        if last_seq > self.last_seq:
            raise ValueError(f"cannot rewind forward from {self.last_seq} to {last_seq}")
        self.last_seq = last_seq
