"""Logging of bad input from clients (malformed HTTP, unreadable frames): one WARNING line
for the first in a window, then at most one summary line per `every_s` while it goes on.

A client sending garbage must not be able to flood the log: 1,000 malformed HTTP requests
wrote 568 KB of ERROR lines and tracebacks in 1.1 s. Each one is counted exactly in
`loom_decode_errors{protocol,code}`; the log says that it happens, from where and what,
in a bounded number of lines (the same pattern as engine/refusal_log.py). Never a traceback:
bad input is the client's mistake, not the server's.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

SUMMARY_EVERY_S = 10.0
_TOP = 3  # the kinds and remotes named in a summary line


class BadInputLog:
    def __init__(
        self,
        log: logging.Logger,
        every_s: float = SUMMARY_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.every_s = every_s
        self.clock = clock
        self.total = 0  # every bad input noted, for tests and the summary
        self._window_start: float | None = None  # None: no window open (the next one is logged)
        self._kinds: Counter[str] = Counter()
        self._remotes: Counter[str] = Counter()

    def note(self, protocol: str, remote: str | None, what: str) -> None:
        """One bad input: `what` is a short description (never the client's bytes)."""
        now = self.clock()
        remote = remote or "?"
        if self._window_start is not None and now - self._window_start < self.every_s:
            self.total += 1
            self._kinds[f"{protocol}: {what}"] += 1
            self._remotes[remote] += 1
            return
        self.flush(now)
        self.total += 1
        self._window_start = now
        self.log.warning(
            "bad %s input from %s: %s (further bad input is summarised every %g s)",
            protocol,
            remote,
            what,
            self.every_s,
        )

    def flush(self, now: float | None = None) -> None:
        """The summary of the window so far, if anything was held back."""
        held = sum(self._kinds.values())
        if held:
            now = self.clock() if now is None else now
            kinds = ", ".join(f"{k} x{n}" for k, n in self._kinds.most_common(_TOP))
            remotes = ", ".join(f"{r} x{n}" for r, n in self._remotes.most_common(_TOP))
            self.log.warning(
                "%d more bad inputs in the last %.1f s (%s; from %s); %d in all",
                held,
                now - (now if self._window_start is None else self._window_start),
                kinds,
                remotes,
                self.total,
            )
        self._kinds.clear()
        self._remotes.clear()
        self._window_start = None


# One per process: every gateway notes its bad input here, so one flood makes one story.
BAD_INPUT = BadInputLog(logging.getLogger("loom.bad_input"))
