"""`loom bench paths`: the two users of the one match loop side by side, in one run.

`MatchingEngine.apply` (the live path) passes an event sink and gets the events;
`MatchingEngine.replay` (recovery, through `SilentReplayer`) passes none and counts them.
Each round runs every path once, interleaved, each into a fresh engine over the same
command objects, so that this VM's drift hits all paths alike; the median round is
reported. Every pass must end on the generator's state hash, and replay must count as many
events as `apply` emitted.

The commands are decoded from a journal record first, as a node and a replay see them
(fresh strings, plain ints). Replay runs twice: over whole commands (a journal backend
without replay decoding) and over the replay prefixes (`ReplayNewOrder`, `ReplayCancel`)
that `decode_for_replay` yields, recovery's own input from a file journal.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable

import msgspec

from engine import progress
from engine.bench.workload import generate, make_engine
from engine.core.matcher import MatchingEngine
from engine.core.replay import SilentReplayer
from engine.core.state import state_hash
from engine.journal.format import BatchMeta, decode_for_replay, decode_record


def _apply_all(engine: MatchingEngine, commands: list) -> int:
    apply = engine.apply
    events = 0
    for cmd in commands:
        events += len(apply(cmd))
    return events


def _replay(engine: MatchingEngine, commands: list) -> int:
    return SilentReplayer(engine).apply(commands)


# name -> (the loop, whether it reads replay prefixes rather than whole commands)
PATHS: dict[str, tuple[Callable[[MatchingEngine, list], int], bool]] = {
    "apply": (_apply_all, False),
    "replay": (_replay, False),
    "replay_prefixes": (_replay, True),
}


def _timed_pass(run: Callable[[MatchingEngine, list], int], commands: list) -> tuple[int, int, str]:
    engine = make_engine()
    gc.collect()
    gc.freeze()  # as `loom bench engine` and `loom run` do
    start = time.perf_counter_ns()
    events = run(engine, commands)
    elapsed = time.perf_counter_ns() - start
    gc.unfreeze()
    return elapsed, events, state_hash(engine)


def run_paths_bench(ops: int = 1_000_000, seed: int = 1, mode: str = "deep", repeat: int = 3) -> dict:
    workload = generate(ops, seed, mode)
    payload = msgspec.msgpack.encode((BatchMeta(), workload.commands))
    inputs = {False: decode_record(payload)[1], True: decode_for_replay(payload)}
    del payload
    n = len(inputs[False])
    progress.phase(f"paths bench ({mode}): {repeat} rounds of {len(PATHS)} paths over {n:,} ops", repeat)
    elapsed: dict[str, list[int]] = {name: [] for name in PATHS}
    events: dict[str, set[int]] = {name: set() for name in PATHS}
    hashes: set[str] = set()
    for _ in range(repeat):
        for name, (run, prefixes) in PATHS.items():
            ns, count, digest = _timed_pass(run, inputs[prefixes])
            elapsed[name].append(ns)
            events[name].add(count)
            hashes.add(digest)
        progress.advance()
    rates = {name: [n / (ns / 1e9) for ns in runs] for name, runs in elapsed.items()}
    median = {name: round(statistics.median(r)) for name, r in rates.items()}
    return {
        "bench": "paths",
        "mode": mode,
        "seed": seed,
        "ops": n,
        "ops_per_s": median,
        "ops_per_s_runs": {name: [round(x) for x in r] for name, r in rates.items()},
        # Per round, so that a slow moment of the VM hits both sides of each ratio.
        "ratio_to_apply": {
            name: round(statistics.median(a / b for a, b in zip(r, rates["apply"], strict=True)), 2)
            for name, r in rates.items()
        },
        "events": sorted(events["apply"]),
        "events_agree": len({c for counts in events.values() for c in counts}) == 1,
        "state_hash": workload.state_hash,
        "deterministic": hashes == {workload.state_hash},
    }


def format_paths_bench(r: dict) -> str:
    lines = [f"paths bench ({r['mode']}, seed {r['seed']}): {r['ops']:,} ops, median of interleaved rounds"]
    for name, rate in r["ops_per_s"].items():
        runs = ", ".join(f"{x:,}" for x in r["ops_per_s_runs"][name])
        lines.append(f"  {name:18} {rate:>10,} ops/s  ×{r['ratio_to_apply'][name]:<5} ({runs})")
    lines.append(
        f"  events: {r['events']} (all paths agree: {r['events_agree']}); "
        f"every pass matches the generator's state hash: {r['deterministic']}"
    )
    return "\n".join(lines)
