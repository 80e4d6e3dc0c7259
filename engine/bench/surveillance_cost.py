"""The cost of surveillance per order, on the same 200,000-order deep workload
(engine/bench/workload.py, seed 1, batches of 64): what the commit loop pays (the desk's
append), what the worker pays off the order path (the drain: scores, wash trades, spoofing,
layering, the anomaly model), and one publication (what every reader is served from).
Five runs, median. `python -m engine.bench.surveillance_cost [--orders N]`."""

from __future__ import annotations

import argparse
import statistics
import time

from engine.bench.workload import generate, make_engine
from engine.core.batch_events import BatchEvents
from engine.surveillance_desk import SurveillanceDesk


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    w = generate(args.orders, seed=1)
    eng = make_engine()
    ts = 1_700_000_000_000_000_000
    results = []
    for i, c in enumerate(w.commands):
        c.seq, c.ts = i + 1, ts + i * 1000
        results.append(eng.apply(c))
    n, size = len(w.commands), 64
    batches = [(results[i : i + size], BatchEvents(results[i : i + size])) for i in range(0, n, size)]
    append, drain, publish = [], [], []
    for _ in range(args.runs):
        desk = SurveillanceDesk()
        t = time.perf_counter()
        for r, split in batches:
            desk.on_events([], r, split)
        append.append((time.perf_counter() - t) / n * 1e9)
        t = time.perf_counter()
        desk.drain()
        drain.append((time.perf_counter() - t) / n * 1e9)
        t = time.perf_counter()
        desk.publish(ts + n * 1000)
        publish.append((time.perf_counter() - t) * 1e3)
    found = desk.report()["findings"]
    print(f"{n} orders in batches of {size}, median of {args.runs}:")
    print(f"  commit loop, the desk's append:     {statistics.median(append):,.0f} ns/order")
    print(f"  worker, the drain (every detector): {statistics.median(drain):,.0f} ns/order")
    print(f"  worker, one publication:            {statistics.median(publish):,.1f} ms")
    print("  findings:", {kind: f["total"] for kind, f in found.items()})


if __name__ == "__main__":
    main()
