"""The node's file-descriptor budget: how many connections it may hold without starving
its own files.

A node out of descriptors cannot open its next journal segment, fork a snapshot child,
reconnect to NATS or answer a scrape (issue 13: 1,100 idle binary connections under
`ulimit -n 1024` did all of that, silently). At start-up the node raises its soft
RLIMIT_NOFILE to the hard limit when it may, keeps `reserve` descriptors (plus those already
open) for itself, and shares the rest between its listeners; the connection caps default to
those shares, so admission refuses a flood while the journal still has room.
"""

from __future__ import annotations

import logging
import os
import resource
from dataclasses import dataclass

log = logging.getLogger("loom.fdbudget")

# How the connection descriptors are shared when every listener is on: REST and WebSocket
# clients are the many, binary and FIX sessions the few (one or two per trading firm).
SHARES = {"http": 0.5, "binary": 0.25, "fix": 0.25}
MIN_PER_LISTENER = 16  # below this a listener is useless: the limit is too low to run at all
# One address may hold an eighth of a listener's connections, and at least 256 (a client
# machine or a NAT in front of many), but never more than the listener's cap.
PER_IP_FLOOR = 256
PER_IP_SHARE = 8


@dataclass(frozen=True)
class FdBudget:
    soft: int  # RLIMIT_NOFILE after raising
    hard: int
    raised_from: int | None  # the soft limit before, when it was raised
    in_use: int  # descriptors open at start-up (logs, data dir, the listeners' sockets)
    reserve: int
    caps: dict[str, int]  # listener -> connection cap

    @property
    def connections(self) -> int:
        return sum(self.caps.values())


def open_descriptors() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc (not Linux): assume a small start-up set
        return 32


def raise_soft_limit() -> tuple[int, int, int | None]:
    """(soft, hard, soft before or None): the soft limit raised to the hard one when allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target, hard, soft
        except (ValueError, OSError) as exc:
            log.warning("could not raise the descriptor limit from %d to %d: %s", soft, target, exc)
    return soft, hard, None


def compute_budget(
    listeners: list[str], reserve: int, max_connections: int = 0, raise_limit: bool = True
) -> FdBudget:
    """The budget and each listener's cap (`max_connections` > 0 overrides the derived one,
    but never beyond what the descriptors allow)."""
    if raise_limit:
        soft, hard, before = raise_soft_limit()
    else:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        before = None
    in_use = open_descriptors()
    spare = max(0, soft - in_use - reserve)
    total_share = sum(SHARES[name] for name in listeners) or 1.0
    caps = {}
    for name in listeners:
        share = max(MIN_PER_LISTENER, int(spare * SHARES[name] / total_share))
        caps[name] = min(max_connections, share) if max_connections > 0 else share
    return FdBudget(soft, hard, before, in_use, reserve, caps)


def per_ip_cap(configured: int, cap: int) -> int:
    return configured if configured > 0 else min(cap, max(PER_IP_FLOOR, cap // PER_IP_SHARE))


def describe(budget: FdBudget) -> str:
    raised = f" (raised from {budget.raised_from})" if budget.raised_from is not None else ""
    caps = ", ".join(f"{name} {cap}" for name, cap in budget.caps.items())
    return (
        f"descriptor limit {budget.soft}{raised}, hard {budget.hard}; {budget.in_use} open at start, "
        f"{budget.reserve} reserved for the journal, snapshots, NATS, lookups and metrics; "
        f"connection caps: {caps}"
    )
