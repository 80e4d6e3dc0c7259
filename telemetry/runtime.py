"""Signals of the Python runtime that runs the matcher: event-loop lag, GC pauses, and which
code is running (loom_build_info).

A single-threaded matcher stalls when its event loop does: a long callback, a GC pass, a
fork. The probe and the GC callback cost nothing per order: one timer every 0.1 s per loop,
two clock reads per collection.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import importlib.metadata
import os
import subprocess
import time
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

from telemetry.catalogue import CATALOGUE
from telemetry.collectors import CatalogueCollector

PROBE_INTERVAL_S = 0.1
PACKAGE = "loom-exchange"
REVISION_ENV = "LOOM_BUILD_REVISION"  # set by an image build, where there is no .git
ROOT = Path(__file__).resolve().parent.parent


class LoopLagProbe:
    """Schedules a timer on `loop` every `interval` s and observes how late it ran.

    Runs entirely on the probed loop (start it from any thread with `start()`), so it works
    for the main loop and for a thread's own loop (the cluster's NATS link)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, histogram, interval: float = PROBE_INTERVAL_S
    ) -> None:
        self.loop = loop
        self.observe = histogram.observe
        self.interval = interval
        self._handle: asyncio.TimerHandle | None = None
        self._stopped = False

    def start(self) -> None:
        self.loop.call_soon_threadsafe(self._schedule)

    def stop(self) -> None:
        self._stopped = True
        handle = self._handle
        if handle is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self.loop.call_soon_threadsafe(handle.cancel)

    def _schedule(self) -> None:
        if not self._stopped:
            # perf_counter, not loop.time(): uvloop's clock is cached per loop iteration,
            # so it would not see time spent in the iteration that delayed the timer.
            due = time.perf_counter() + self.interval
            self._handle = self.loop.call_later(self.interval, self._tick, due)

    def _tick(self, due: float) -> None:
        self.observe(max(0.0, time.perf_counter() - due))
        self._schedule()


class GcPauses(CatalogueCollector):
    """Times every collection through `gc.callbacks` and exports loom_gc_pause_seconds.

    The counts are plain lists, not prometheus_client metrics: the callback runs inside an
    allocation anywhere in the process, possibly while a metric's lock is held, so it takes
    no lock. CPython never runs two collections at once, so the callbacks never overlap.
    (A forked snapshot child inherits the callback; it runs with gc disabled, so it never
    fires there.)"""

    METRICS = ("loom_gc_pause_seconds",)
    GENERATIONS = (0, 1, 2)

    def __init__(self) -> None:
        spec = CATALOGUE["loom_gc_pause_seconds"]
        self.spec = spec
        self.bounds = spec.buckets
        n = len(self.bounds) + 1  # the last slot: +Inf
        self.counts = {g: [0] * n for g in self.GENERATIONS}
        self.sums = dict.fromkeys(self.GENERATIONS, 0.0)
        self._started = 0.0
        self._installed = False

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        generation = info.get("generation", 2)
        counts = self.counts.get(generation)
        if counts is None:
            return
        counts[bisect.bisect_left(self.bounds, took)] += 1
        self.sums[generation] += took

    def install(self) -> GcPauses:
        if not self._installed:
            gc.callbacks.append(self)
            self._installed = True
        return self

    def remove(self) -> None:
        if self._installed:
            with contextlib.suppress(ValueError):
                gc.callbacks.remove(self)
            self._installed = False

    def collect(self):
        family = HistogramMetricFamily(self.spec.name, self.spec.help, labels=list(self.spec.labels))
        for generation in self.GENERATIONS:
            counts, total = list(self.counts[generation]), self.sums[generation]
            cumulative, buckets = 0, []
            for bound, n in zip((*map(_le, self.bounds), "+Inf"), counts, strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            family.add_metric([str(generation)], buckets, total)
        yield family


def _le(bound: float) -> str:
    return repr(float(bound))


def package_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def git_revision(root: Path = ROOT) -> str:
    """The commit checked out at `root` (12 hex digits, "+dirty" when files differ), or
    "unknown": not a checkout, or no git. Run once at start, never per scrape."""
    if not (root / ".git").exists():  # a worktree's .git is a file: exists() covers both
        return "unknown"
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+dirty" if head and dirty else head or "unknown"


class BuildInfo(CatalogueCollector):
    """loom_build_info{version, revision} 1, both read once when it is built."""

    METRICS = ("loom_build_info",)

    def __init__(self, version: str | None = None, revision: str | None = None) -> None:
        self.version = version or package_version()
        self.revision = revision or os.environ.get(REVISION_ENV) or git_revision()

    def collect(self):
        spec = CATALOGUE["loom_build_info"]
        family = GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))
        family.add_metric([self.version, self.revision], 1)
        yield family
