"""Small statistics helpers shared by the benchmarks."""

from __future__ import annotations

import os


def percentile_us(sorted_ns: list[int], pct: float) -> float:
    """Nearest-rank percentile of nanosecond samples (already sorted), in microseconds."""
    if not sorted_ns:
        return 0.0
    rank = max(1, -(-len(sorted_ns) * pct // 100))  # ceil without floats drifting
    return round(sorted_ns[int(rank) - 1] / 1000, 2)


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) a process has used so far (Linux /proc): its
    work, whatever the machine's load."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # the command name may hold ") "
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
