"""The cost of surveillance per order, on the same 200,000-order deep workload
(engine/bench/workload.py, seed 1, batches of 64): what the commit loop pays (the desk's
append), what the worker pays off the order path (the drain: scores, wash trades, spoofing,
layering, the anomaly model), and one publication (what every reader is served from).
Five runs, median. `python -m engine.bench.surveillance_cost [--orders N]`.

`--e2e PAIRS`: the order path end to end instead, a durable node and its service at full
speed (engine/bench/telemetry_bench.py, metrics fed and scraped, no trace export) without and
with the surveillance desk and its budgeted worker, PAIRS pairs back to back, the order
swapped every pair (this VM drifts: a pair's ratio is what compares), at `loom run`'s GIL
switch interval."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from engine.bench.workload import generate, make_engine
from engine.core.batch_events import BatchEvents
from engine.surveillance_desk import SurveillanceDesk


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--e2e", type=int, default=0, metavar="PAIRS", help="the order path, off/on pairs")
    args = parser.parse_args(argv)
    if args.e2e:
        end_to_end(args.orders, args.e2e)
        return
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


def end_to_end(orders: int, pairs: int) -> None:
    from engine.app import GIL_SWITCH_INTERVAL_S
    from engine.bench.telemetry_bench import _run

    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    commands = generate(orders, 1, "deep").commands
    off, on, ratios = [], [], []
    desk: dict = {}
    for pair in range(pairs):
        rates = {}
        for watched in (False, True) if pair % 2 == 0 else (True, False):
            rate, extra = asyncio.run(
                _run(commands, telemetry=True, batch=512, sampling="", traces=False, surveillance=watched)
            )
            rates[watched] = rate
            desk = extra or desk
        off.append(rates[False])
        on.append(rates[True])
        ratios.append(rates[True] / rates[False])
        print(f"  pair {pair + 1}: off {rates[False]:,.0f}  on {rates[True]:,.0f} orders/s", flush=True)
    print(f"{len(commands):,} orders through a durable node, batches of 512, {pairs} pairs:")
    print(f"  median orders/s: off {statistics.median(off):,.0f}, on {statistics.median(on):,.0f}")
    print(f"  on/off ratio per pair: median {statistics.median(ratios):.3f}, {[round(r, 3) for r in ratios]}")
    print(f"  the desk in the last run with it: {desk}")


if __name__ == "__main__":
    main()
