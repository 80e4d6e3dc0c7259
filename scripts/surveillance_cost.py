"""What the surveillance listener costs per order, in-process: the 200k-order deep workload
applied in batches of 16 (a REST-sized group commit), each batch handed to the listener
right after matching, only the listener timed; best of 3.

    python scripts/surveillance_cost.py
"""

from __future__ import annotations

import time

from engine.bench.workload import generate, make_engine
from engine.core.batch_events import BatchEvents
from engine.core.surveillance import Surveillance

BATCH = 16


def cost(commands: list, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        engine, surveillance = make_engine(), Surveillance()
        fresh = [c.__copy__() for c in commands]
        for seq, cmd in enumerate(fresh, start=2):
            cmd.seq, cmd.ts = seq, seq * 1000  # 1 µs apart: the window buckets fill as live
        total = 0.0
        for i in range(0, len(fresh), BATCH):
            batch = fresh[i : i + BATCH]
            results = [engine.apply(c) for c in batch]
            started = time.perf_counter()
            surveillance.on_events(batch, results, BatchEvents(results))
            total += time.perf_counter() - started
        best = min(best, total)
    return best * 1e9 / len(commands)


def main() -> None:
    commands = generate(200_000, 1, "deep").commands
    print(f"surveillance (shared walk included): {cost(commands):,.0f} ns/order")


if __name__ == "__main__":
    main()
