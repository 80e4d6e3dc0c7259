"""Cost of the loom_gc_pause_seconds callback (telemetry/runtime.py): generation-0 collections
with and without it. Run from the repository: PYTHONPATH=. python scripts/gc_callback_cost.py"""

from __future__ import annotations

import gc
import statistics
import time

from telemetry.runtime import GcPauses


def per_collection_us(n: int = 20_000) -> float:
    started = time.perf_counter()
    for _ in range(n):
        gc.collect(0)
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    heap = [[i] for i in range(200_000)]  # a heap like a running node's, frozen as `loom run` does
    gc.collect()
    gc.freeze()
    pauses = GcPauses()
    runs: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(5):
        runs["off"].append(per_collection_us())
        pauses.install()
        runs["on"].append(per_collection_us())
        pauses.remove()
    for name, values in runs.items():
        each = ", ".join(f"{v:.2f}" for v in values)
        print(f"{name}: one gen-0 collection {statistics.median(values):.2f} µs median (runs {each})")
    del heap


if __name__ == "__main__":
    main()
