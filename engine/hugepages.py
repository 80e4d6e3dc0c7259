"""Huge pages for the heap, so that a snapshot's fork stays a pause of a few milliseconds.

fork() copies the process's page tables: one entry per 4 KiB page, so its cost grows with
the heap (measured: ~12-20 ms for a 770 MB heap of small objects). A snapshot forks at a
batch boundary (engine/snapshot_child.py), so that pause is the order path's. Mapped with
2 MiB pages the same heap has 512 times fewer entries to copy (measured: ~2 ms).

CPython's allocators never ask for huge pages, and Debian's THP setting is "madvise", so
a keeper thread asks: MADV_HUGEPAGE on the process's anonymous mappings (later page faults
there get huge pages) and MADV_COLLAPSE (Linux 6.1+) to turn what is already mapped into
huge pages. While a snapshot child runs, every page the node writes is copied for it, and
that splits the huge page around it back into 4 KiB entries; so the keeper runs again each
time a child has ended, never while one runs (collapsing shared pages would only copy
them). It works 2 MiB per call, at nice 19 on its own thread (madvise releases the GIL),
and stops a pass as soon as a new snapshot starts. Where the kernel cannot (THP "never",
an older kernel, not Linux) it does nothing and says so once.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator

log = logging.getLogger("loom.hugepages")

HUGE = 1 << 21  # 2 MiB, the x86-64 and arm64 (4 KiB granule) PMD size
MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = THP_SETTING) -> str:
    """The kernel's THP setting: "always", "madvise" or "never" ("" when unknown)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ""
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else ""


def anonymous_ranges(maps: str = "/proc/self/maps") -> Iterator[tuple[int, int]]:
    """The 2 MiB-aligned (start, end) inside each private read-write anonymous mapping (the
    heap and the allocators' arenas) that holds at least one whole huge page."""
    with open(maps) as f:
        for line in f:
            parts = line.split()
            if parts[1] != "rw-p" or (len(parts) > 5 and parts[5] != "[heap]"):
                continue  # files, stacks, shared and read-only mappings
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            start, end = (lo + HUGE - 1) & ~(HUGE - 1), hi & ~(HUGE - 1)
            if end > start:
                yield start, end


class HugePageKeeper:
    """Keeps the heap on huge pages: a pass at start and after each snapshot (`request`).
    `busy()`: whether a snapshot child is running (a pass then waits, or stops)."""

    def __init__(self, busy: Callable[[], bool] = lambda: False) -> None:
        self.busy = busy
        self.passes = 0
        self.collapsed_bytes = 0  # by the last pass: 2 MiB ranges now on a huge page
        self._wanted = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._madvise = None
        mode = thp_mode()
        if not sys.platform.startswith("linux") or mode not in ("always", "madvise"):
            self.reason = f"transparent huge pages are {mode or 'unavailable'}"
            return
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self._madvise = libc.madvise
        self.reason = ""

    @property
    def enabled(self) -> bool:
        return self._madvise is not None

    def start(self) -> None:
        if not self.enabled:
            log.info("heap huge pages off: %s (a snapshot's fork copies 4 KiB page tables)", self.reason)
            return
        self._thread = threading.Thread(target=self._run, name="hugepages", daemon=True)
        self._thread.start()
        self.request()

    def request(self) -> None:
        """Run a pass soon (a snapshot child has ended)."""
        self._wanted.set()

    def stop(self) -> None:
        self._stopping = True
        self._wanted.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._stopping:
                return
            while self.busy() and not self._stopping:
                time.sleep(0.05)
            try:
                collapsed = self.run_pass()
                if self.passes == 1:
                    log.info("heap huge pages on: %d MB of the heap on 2 MiB pages", collapsed >> 20)
            except Exception:  # the keeper must never take the node down
                log.exception("heap huge pages: a pass failed")

    def run_pass(self) -> int:
        """Advise and collapse every anonymous range once; the bytes now on huge pages."""
        madvise = self._madvise
        if madvise is None:
            return 0
        collapsed = 0
        for start, end in list(anonymous_ranges()):
            madvise(start, end - start, MADV_HUGEPAGE)
            addr = start
            while addr < end:
                if self._stopping or self.busy():
                    return collapsed  # a snapshot started: the next pass does the rest
                if madvise(addr, HUGE, MADV_COLLAPSE) == 0:
                    collapsed += HUGE
                elif ctypes.get_errno() == errno.EINVAL:
                    # This mapping cannot (some can't, e.g. a library's special ones), or the
                    # kernel has no MADV_COLLAPSE (before 6.1): the next mapping may.
                    break
                addr += HUGE
        self.passes += 1
        self.collapsed_bytes = collapsed
        return collapsed
