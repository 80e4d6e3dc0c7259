"""Small statistics helpers shared by the benchmarks."""

from __future__ import annotations


def percentile_us(sorted_ns: list[int], pct: float) -> float:
    """Nearest-rank percentile of nanosecond samples (already sorted), in microseconds."""
    if not sorted_ns:
        return 0.0
    rank = max(1, -(-len(sorted_ns) * pct // 100))  # ceil without floats drifting
    return round(sorted_ns[int(rank) - 1] / 1000, 2)
