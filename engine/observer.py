"""The node's one telemetry seam: what the commit loop and the gateways report, and nothing
else. The commit loop hands each finished batch (its commands, answers and perf_counter
stamps) to `batch_committed`; the gateways report decode times, unreadable input, rate
limits and slow market-data readers. Telemetry implements it (telemetry/observer.py for the
metrics, telemetry/order_traces.py for the order traces); `Observer` itself is the null
implementation, so a node without telemetry calls it without a None check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.core.batch_events import BatchEvents


@dataclass(frozen=True, slots=True)
class CommittedBatch:
    """One group-commit batch, as the commit loop saw it.

    `stamps` are perf_counter seconds: (taken from the queue, sequenced, durable, applied,
    answered). `submissions` are the queued submissions in order (each with `commands`,
    `protocol`, `queued_at`). `error` is the journal's refusal (every command then answered
    by a rejection) or None. `risk_ns`/`risk_timed`: the new orders' pre-trade check times
    of a sampled batch (empty on others)."""

    submissions: list
    commands: list
    results: list[list]
    stamps: tuple[float, float, float, float, float]
    error: BaseException | None
    split: BatchEvents | None  # the events by type, when some listener needed the walk
    risk_ns: list[int]
    risk_timed: dict[int, tuple[int, int]]
    written_bytes: int
    fsync_s: float | None  # this batch's fdatasync, None when the journal does not sync
    trace_id_of: Callable[[Any], str]


class Observer:
    """The null observer: every report is ignored. Subclasses override what they record."""

    # Whether the node should time pre-trade checks on a sample of batches (risk_ns).
    times_risk = False
    # Whether `batch_committed` reads `split` (the commit loop then builds it).
    wants_events = False

    def batch_committed(self, batch: CommittedBatch) -> None:
        """A batch was journaled (or refused) and answered."""

    def commands_resolved(self, n: int) -> None:
        """n commands of a batch with an unknown outcome were found durable and applied."""

    def overload_refused(self, protocol: str, n: int) -> None:
        """n commands refused for overload, before sequencing."""

    def snapshot_captured(self, seconds: float) -> None:
        """A snapshot's capture (the fork) paused the order path this long."""

    def snapshot_written(self, seconds: float) -> None:
        """A snapshot's background write took this long."""

    def snapshot_failed(self, n: int) -> None:
        """n more snapshots failed."""

    def decoded(self, seconds: float) -> None:
        """A gateway decoded a request or one read of requests in this long."""

    def decode_error(self, protocol: str, code: str, n: int = 1) -> None:
        """n requests that could not be read (code: why)."""

    def rate_limited(self, protocol: str, n: int = 1) -> None:
        """n requests refused by a rate limit."""

    def slow_consumer_dropped(self) -> None:
        """A market-data reader fell too far behind and was cut off."""

    def fanout_lag(self, seconds: float) -> None:
        """Market data reached a reader's socket this long after its batch became durable."""

    def md_published(self, deliveries: int) -> None:
        """One market data message was encoded and queued to `deliveries` subscribers."""

    def md_conflated(self, n: int) -> None:
        """n book updates were folded into a later one instead of sent (summed over readers)."""

    def md_gap_recovery(self, channel: str) -> None:
        """A reader asked for a fresh snapshot after a gap (op resync)."""

    def md_feed_resync(self, reason: str) -> None:
        """A marketdata process went back to the leader's state (reason: gap or leader)."""


NULL_OBSERVER = Observer()
