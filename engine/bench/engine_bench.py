"""`loom bench engine`: replay a generated workload into a fresh engine, timing every
command. Events are produced and counted as in production: they are the product."""

from __future__ import annotations

import gc
import time

from engine.bench.stats import percentile_us
from engine.bench.workload import generate, make_engine
from engine.events import Trade
from engine.state import state_hash


def run_engine_bench(ops: int = 1_000_000, seed: int = 1, mode: str = "deep") -> dict:
    workload = generate(ops, seed, mode)
    commands = workload.commands
    engine = make_engine()
    apply = engine.apply
    clock = time.perf_counter_ns
    latencies = [0] * len(commands)
    trades = 0
    traded_qty = 0
    events = 0
    # Long-lived start-up objects leave the collector's view, as `loom run` does.
    gc.collect()
    gc.freeze()
    start = clock()
    for i, cmd in enumerate(commands):
        t0 = clock()
        out = apply(cmd)
        latencies[i] = clock() - t0
        events += len(out)
        if len(out) > 1:
            for ev in out:
                if type(ev) is Trade:
                    trades += 1
                    traded_qty += ev.qty
    elapsed = clock() - start
    gc.unfreeze()
    final_hash = state_hash(engine)
    latencies.sort()
    resting = sum(len(a.open) for a in engine.accounts.values())
    return {
        "bench": "engine",
        "mode": mode,
        "seed": seed,
        "ops": len(commands),
        "ops_per_s": round(len(commands) / (elapsed / 1e9)),
        "p50_us": percentile_us(latencies, 50),
        "p99_us": percentile_us(latencies, 99),
        "p999_us": percentile_us(latencies, 99.9),
        "max_us": round(latencies[-1] / 1000, 2) if latencies else 0.0,
        "trades": trades,
        "traded_qty": traded_qty,
        "events": events,
        "resting_orders": resting,
        "state_hash": final_hash,
        "deterministic": final_hash == workload.state_hash,
    }


def format_engine_bench(r: dict) -> str:
    return (
        f"engine bench ({r['mode']}, seed {r['seed']}): {r['ops']:,} ops at {r['ops_per_s']:,} ops/s\n"
        f"  latency per op: p50 {r['p50_us']} µs  p99 {r['p99_us']} µs  "
        f"p99.9 {r['p999_us']} µs  max {r['max_us']} µs\n"
        f"  {r['events']:,} events, {r['trades']:,} trades, traded qty {r['traded_qty']:,}, "
        f"{r['resting_orders']:,} orders resting at the end\n"
        f"  state hash {r['state_hash'][:16]}… replay matches generator: {r['deterministic']}"
    )
