"""Helper processes that never outlive the node.

A node killed with SIGKILL cannot stop its helpers (the snapshot child, the order lookup
worker). One left behind holds the node's stdout and stderr open, so whoever reads them
never sees the end, and it may go on reading or writing the data directory under the next
node. The kernel ends it instead: PR_SET_PDEATHSIG sends it SIGKILL when the thread that
started it exits (the node's main thread, which lives as long as the process).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1
# Resolved at import: a forked child must not import (another thread may hold the import lock).
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent(parent: int) -> None:
    """Call first thing in a helper process started by `parent` (its pid): it is killed when
    the parent dies, and exits at once if the parent died before this was armed."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def yield_cpu_to_the_node() -> str:
    """Run this helper only on CPU the node leaves idle: SCHED_IDLE, else nice 19. Returns
    the policy taken. SCHED_IDLE is the stronger of the two: any waking thread of the node
    preempts it at once, and the scheduler counts a core that runs only SCHED_IDLE work as
    idle when it places a waking thread, so the node is never queued behind the helper
    (a nice-19 task still makes its core look busy: the node's thread may then be placed
    on the other core, behind whatever runs there)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "idle"
    except (AttributeError, OSError):
        pass
    os.nice(19)
    return "nice"
