"""POST /v1/admin/snapshot as the tests ask for it: answered once the snapshot is written, by
a writer that yields the CPU to the node (SCHED_IDLE), so a loaded machine takes seconds.
drill.http's 2 s default read such an answer as none (status 0, {}): test_standby_positions
failed so under load."""

from __future__ import annotations

from engine.cluster.drill import ADMIN_KEY, http

SNAPSHOT_ANSWER_S = 60.0


def request_snapshot(base: str, key: str = ADMIN_KEY) -> tuple[int, dict]:
    """(status, body) of the node's on-demand snapshot; (0, {}) only past SNAPSHOT_ANSWER_S."""
    return http("POST", base + "/v1/admin/snapshot", key=key, timeout=SNAPSHOT_ANSWER_S)
