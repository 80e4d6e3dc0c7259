"""Logging of bad input from clients (malformed HTTP, unreadable frames): one WARNING line
for the first in a window, then at most one summary line per `every_s` while it goes on.

A client sending garbage must not be able to flood the log: 1,000 malformed HTTP requests
wrote 568 KB of ERROR lines and tracebacks in 1.1 s. Each one is counted exactly in
`loom_decode_errors{protocol,code}`; the log says that it happens, from where and what,
in a bounded number of lines (engine/summarised_log.py). Never a traceback:
bad input is the client's mistake, not the server's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from engine.summarised_log import SummarisedLog, Window

SUMMARY_EVERY_S = 10.0


class BadInputLog:
    def __init__(
        self,
        log: logging.Logger,
        every_s: float = SUMMARY_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        # A run ends after a quiet window: the next bad input is named in full again.
        self._runs = SummarisedLog(self._summary, every_s, clock, quiet_s=every_s)

    @property
    def total(self) -> int:
        """Every bad input noted, for tests and the summary."""
        return self._runs.total

    def note(self, protocol: str, remote: str | None, what: str) -> None:
        """One bad input: `what` is a short description (never the client's bytes)."""
        remote = remote or "?"
        if self._runs.note(f"{protocol}: {what}", remote):
            self.log.warning(
                "bad %s input from %s: %s (further bad input is summarised every %g s)",
                protocol,
                remote,
                what,
                self._runs.every_s,
            )

    def flush(self, now: float | None = None) -> None:
        """The summary of what was held back, if anything; the next bad input is named in full."""
        self._runs.end(now)

    def _summary(self, window: Window, now: float) -> None:
        self.log.warning(
            "%d more bad inputs in the last %.1f s (%s; from %s); %d in all",
            window.events,
            now - window.start,
            SummarisedLog.top(window.kinds),
            SummarisedLog.top(window.sources),
            self.total,
        )


# One per process: every gateway notes its bad input here, so one flood makes one story.
BAD_INPUT = BadInputLog(logging.getLogger("loom.bad_input"))
