"""What the batch listeners cost per order, in-process: the 200k-order deep workload applied
batch by batch (512 commands), each batch handed to the listeners right after matching (as
the service does, so the events are fresh in cache), only the listeners timed; best of 5.

    python scripts/listener_cost.py            # this tree
    PYTHONPATH=/path/to/other/tree python scripts/listener_cost.py   # another, to compare

A tree without the shared walk (engine/core/batch_events.py) is measured through each
listener's own `on_batch`. Timing in-process and best-of keeps the figure usable on a
machine that other work shares, where end-to-end benches swing by 2x.
"""

from __future__ import annotations

import time

from engine.bench.workload import SYMBOL, generate, make_engine
from engine.core.order_store import OrderStore
from engine.market_data import MarketData
from telemetry.metrics import ExchangeMetrics

if hasattr(OrderStore, "on_events"):
    from engine.core.batch_events import BatchEvents
else:  # a tree from before the shared walk
    BatchEvents = None

BATCH = 512


def cost(commands: list, which: str, feed: bool, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        engine = make_engine()
        store, market, metrics = OrderStore(), MarketData(engine), ExchangeMetrics(process=False)
        if feed:
            market.feed(SYMBOL)  # a subscriber: market data compares and publishes
        fresh = [c.__copy__() for c in commands]
        for seq, cmd in enumerate(fresh, start=2):
            cmd.seq, cmd.ts = seq, seq
        total = 0.0
        for i in range(0, len(fresh), BATCH):
            batch = fresh[i : i + BATCH]
            results = [engine.apply(c) for c in batch]
            started = time.perf_counter()
            if BatchEvents is not None:
                split = BatchEvents(results)
                if which != "read models":
                    metrics.on_events(batch, results, split)
                if which != "metrics":
                    store.on_events(batch, results, split)
                    market.on_events(batch, results, split)
            else:
                if which != "read models":
                    metrics.on_batch(batch, results)
                if which != "metrics":
                    store.on_batch(batch, results)
                    market.on_batch(batch, results)
            total += time.perf_counter() - started
        best = min(best, total)
    return best * 1e9 / len(commands)


def main() -> None:
    commands = generate(200_000, 1, "deep").commands
    tree = "shared walk" if BatchEvents is not None else "a walk per listener"
    for which, feed in (("metrics", False), ("read models", False), ("all", False), ("all", True)):
        label = {"metrics": "metrics only", "read models": "order store + market data"}.get(
            which, "order store + market data + metrics"
        )
        label += ", a book subscriber" if feed else ""
        print(f"{tree}: {label}: {cost(commands, which, feed):,.0f} ns/order", flush=True)


if __name__ == "__main__":
    main()
