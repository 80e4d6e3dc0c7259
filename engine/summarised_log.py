"""One mechanism for logs that must stay bounded however often their event happens: one
line when a run of events begins, then at most one summary per `every_s` while it goes on,
counted by kind and source. Three logs use it, each with its own words:

- bad input from clients (engine/bad_input_log.py);
- connections refused by a listener's admission (engine/gateways/admission.py);
- journal batches refused during an outage (engine/refusal_log.py).

A run ends after `quiet_s` without an event (the next event begins a new one) or when its
owner says so (`end`). The exact counts belong in metrics; the log tells the story.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_SOURCES = 1000  # distinct sources counted in one window: a flood from many addresses stays bounded


@dataclass
class Window:
    """What was held back since the last line: events after a run's first, by kind and source."""

    start: float = 0.0
    last: float = 0.0  # the newest event
    events: int = 0
    weight: int = 0  # the sum of the events' n (e.g. commands in refused batches)
    kinds: Counter[str] = field(default_factory=Counter)
    sources: Counter[str] = field(default_factory=Counter)


class SummarisedLog:
    """`note` says whether an event begins a run (its owner then writes the first line);
    `summary(window, now)` is called with what was held back once `every_s` has passed."""

    def __init__(
        self,
        summary: Callable[[Window, float], None],
        every_s: float,
        clock: Callable[[], float] = time.monotonic,
        quiet_s: float | None = None,
    ) -> None:
        self.summary = summary
        self.every_s = every_s
        self.clock = clock
        self.quiet_s = quiet_s  # None: a run lasts until `end`
        self.since: float | None = None  # when the current run began (None: no run)
        self.run_events = self.run_weight = 0  # in the current run, its first included
        self.total = 0  # every event noted, over the log's life
        self.window = Window()

    def note(self, kind: str = "", source: str = "", n: int = 1, now: float | None = None) -> bool:
        """Count one event; True when it begins a run."""
        now = self.clock() if now is None else now
        if self.since is not None and self.quiet_s is not None and now - self.window.last > self.quiet_s:
            self.end(now)
        self.total += 1
        self.run_events += 1
        self.run_weight += n
        window = self.window
        if self.since is None:
            self.since = now
            self.window = Window(start=now, last=now)
            return True
        window.last = now
        window.events += 1
        window.weight += n
        window.kinds[kind] += 1
        sources = window.sources
        if source in sources or len(sources) < MAX_SOURCES:
            sources[source] += 1
        if now - window.start >= self.every_s:
            self.flush(now)
        return False

    def flush(self, now: float | None = None) -> None:
        """Summarise what the window holds back, if anything, and open the next window."""
        now = self.clock() if now is None else now
        window = self.window
        if window.events:
            self.summary(window, now)
        self.window = Window(start=now, last=window.last)

    def end(self, now: float | None = None, summarise: bool = True) -> None:
        """The run is over: summarise what is held back (unless the owner's closing line
        gives the run's totals instead); the next event begins a new run."""
        if self.since is None:
            return
        if summarise:
            self.flush(now)
        else:
            self.window = Window()
        self.since = None
        self.run_events = self.run_weight = 0

    @staticmethod
    def top(counts: Counter[str], n: int = 3) -> str:
        """'a x3, b x1': the n most frequent, for a summary line."""
        return ", ".join(f"{k} x{c}" for k, c in counts.most_common(n))
