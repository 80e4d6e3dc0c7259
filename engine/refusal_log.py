"""Logging of refused journal batches: one line when refusals begin, a summary every
`every_s` while they go on, one line when a write succeeds again.

While a NATS stream elects a new leader (several seconds) the node refuses every batch
quickly, and a client retrying every few ms made one ERROR line per batch (476 in one
outage), burying everything else. The exact count stays in `loom_journal_write_errors`
(the service counts every refused batch); the log tells the story of the outage
(engine/summarised_log.py).

A batch whose outcome is unknown (answered OUTCOME_UNKNOWN) is not a refusal: it may be in
the journal. It gets its own ERROR line, and a WARNING when it is resolved; there is at
most one at a time (nothing is sequenced after it meanwhile), so these never flood.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from engine.summarised_log import SummarisedLog, Window

SUMMARY_EVERY_S = 5.0


class RefusalLog:
    def __init__(
        self,
        log: logging.Logger,
        every_s: float = SUMMARY_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.clock = clock
        self._runs = SummarisedLog(self._summary, every_s, clock)  # a run lasts until a write succeeds
        self._last: Exception | None = None

    @property
    def every_s(self) -> float:
        return self._runs.every_s

    @every_s.setter
    def every_s(self, value: float) -> None:
        self._runs.every_s = value

    @property
    def since(self) -> float | None:
        """When the current run of refusals began (None: writing)."""
        return self._runs.since

    def refused(self, commands: int, error: Exception) -> None:
        self._last = error
        if self._runs.note(type(error).__name__, n=commands):
            self.log.error(
                "journal writes failing: batch of %d commands refused: %s "
                "(further refusals summarised every %g s until a write succeeds)",
                commands,
                error,
                self.every_s,
            )

    def _summary(self, window: Window, now: float) -> None:
        self.log.error(
            "%d batches (%d commands) refused in the last %.1f s (%s), %d in all; last: %s",
            window.events,
            window.weight,
            now - window.start,
            SummarisedLog.top(window.kinds, len(window.kinds)),
            self._runs.run_events,
            self._last,
        )

    def unknown(self, commands: int, error: Exception) -> None:
        """A batch answered OUTCOME_UNKNOWN: it may or may not be in the journal."""
        self.log.error(
            "journal write outcome unknown: batch of %d commands answered OUTCOME_UNKNOWN (it may be "
            "durable; nothing is sequenced after it until it is resolved): %s",
            commands,
            error,
        )

    def resolved(self, seqs: str, how: str) -> None:
        """The unknown batch `seqs` was resolved: `how` says what became of it."""
        self.log.warning("journal write outcome of seq %s resolved: %s", seqs, how)

    def succeeded(self) -> None:
        """A batch was written: ends the run of refusals, if there was one."""
        if self.since is not None:
            self._end("journal writes succeed again")

    def ended(self, why: str) -> None:
        """This node stops writing (a cluster leader demoted): the run ends unresolved."""
        if self.since is not None:
            self._end(f"journal refusals end here ({why})")

    def _end(self, what: str) -> None:
        runs = self._runs
        self.log.warning(
            "%s after %.1f s: %d batches (%d commands) refused in all",
            what,
            self.clock() - runs.since,
            runs.run_events,
            runs.run_weight,
        )
        runs.end(summarise=False)  # the line above gives the run's totals
