"""Reference counts and memory of the compiled replay loop (engine/_replay.c) over repetitions.

The C loop takes and drops some sixty references by hand. A reference it keeps too many is
an object that never dies (a leak); one it drops too many frees an object still in use. Both
show up as a count that moves with the number of times a workload runs: the same workload is
replayed into a fresh engine again and again, and after a warm-up the counts taken after N
more repetitions and after 2N more must be equal - exactly, no threshold and no timing. A
leak of one reference per repetition moves them by N.

What is counted, after `gc.collect()`:
- the reference count of the shared objects every repetition touches: the engine's slotted
  types and the command types (each live instance holds its type), the symbol strings,
  the CancelReason the loop hands to self-trade cancels, and the small ints of quantities;
- the number of objects the collector tracks and the number of memory blocks allocated;
- the memory traced by tracemalloc.

The workload covers the loop's paths: resting, crossing and sweeping orders, cancels by id,
every self-trade prevention mode, and commands it hands to `apply` (rejections, fill-or-kill,
amends, cancels by client id), in batches, and a batch that ends in a `SequenceError`.

The measurement runs in a child process of its own: nothing else in it allocates meanwhile.
"""

from __future__ import annotations

import gc
import json
import os
import random
import subprocess
import sys
import tracemalloc
from pathlib import Path

import msgspec

from engine.bench.workload import INSTRUMENT, generate
from engine.core.book import BookSide, Level, RestingOrder
from engine.core.commands import Amend, Cancel, CancelAll, NewOrder, ReplayCancel, ReplayNewOrder
from engine.core.domain import CancelReason, Instrument
from engine.core.matcher import AccountOrders, MatchingEngine, SequenceError
from engine.core.replay import COMPILED, SilentReplayer
from engine.core.state import state_hash
from engine.journal.format import BatchMeta, decode_for_replay

REPO = Path(__file__).resolve().parent.parent
INSTRUMENTS = [INSTRUMENT, Instrument("STP-USD", tick_size=5, lot_size=10)]
WARM_UP = 3
N = 4


def workload() -> list[bytes]:
    """Journal payloads (one batch each): the benchmark's order flow on LOOM-USD, then a
    mixed stream of three accounts trading with each other on STP-USD."""
    commands = generate(2_000, seed=5).commands
    rng = random.Random(7)
    reference = MatchingEngine(INSTRUMENTS)
    for cmd in commands:
        reference.apply(cmd)
    seq = len(commands)
    accounts = ("acct-a", "acct-b", "acct-c")
    mixed = []
    for i in range(1_500):
        account = rng.choice(accounts)
        r = rng.random()
        live = [oid for acct in reference.accounts.values() for oid in acct.open if oid > 2_000]
        if r < 0.2 and live:
            cmd = Cancel(account, rng.choice(live))  # another account's order: rejected
        elif r < 0.25:
            cmd = Cancel(account, 0, f"m{rng.randrange(i + 1)}")
        elif r < 0.3 and live:
            cmd = Amend(account, rng.choice(live), new_qty=rng.choice([10, 40, 200]))
        elif r < 0.31:
            cmd = CancelAll(account)
        else:
            order_type = 1 if rng.random() < 0.1 else 2
            cmd = NewOrder(
                account,
                f"m{i}" if rng.random() < 0.9 else "m0",  # some duplicates
                "STP-USD",
                rng.choice([1, 2]),
                order_type,
                rng.choice([90, 95, 100, 105, 110]) if order_type == 2 else 0,
                rng.choice([10, 20, 30, 50, 15]),  # 15: off the lot
                rng.choice([1, 1, 1, 3, 4]),  # GTC, IOC, FOK
                rng.random() < 0.1,
                rng.choice([0, 1, 2, 3]),
            )
        seq += 1
        cmd.seq = seq
        reference.apply(cmd)
        mixed.append(cmd)
    stream = commands + mixed
    return [msgspec.msgpack.encode((BatchMeta(), stream[lo : lo + 250])) for lo in range(0, len(stream), 250)]


def measure(reps: int, snapshots_at: list[int]) -> None:
    """Replay the workload `reps` times; print the counts after each repetition in
    `snapshots_at` (one JSON line each), then the event count and state hash."""
    instruments = INSTRUMENTS
    payloads = workload()
    shared = {
        "RestingOrder": RestingOrder,
        "Level": Level,
        "BookSide": BookSide,
        "AccountOrders": AccountOrders,
        "ReplayNewOrder": ReplayNewOrder,
        "ReplayCancel": ReplayCancel,
        "NewOrder": NewOrder,
        "symbol LOOM-USD": instruments[0].symbol,
        "symbol STP-USD": instruments[1].symbol,
        "CancelReason.SELF_TRADE": CancelReason.SELF_TRADE,
        **{f"int {n}": n for n in (0, 1, 10, 20, 30, 50, 100)},
    }

    def once() -> tuple[int, str]:
        engine = MatchingEngine(instruments)
        replayer = SilentReplayer(engine, compiled=True)
        events = sum(replayer.apply(decode_for_replay(p)) for p in payloads)
        stale = decode_for_replay(payloads[0])[:3]  # sequence numbers long passed
        try:
            replayer.apply(stale)
        except SequenceError:
            pass
        else:
            raise AssertionError("a stale batch was replayed")
        return events, state_hash(engine)

    first = once()
    tracemalloc.start()
    for rep in range(2, reps + 1):
        if once() != first:
            raise AssertionError(f"repetition {rep} reached another state or event count")
        if rep in snapshots_at:
            gc.collect()
            # Printed at once, kept nowhere: a list of snapshots would itself grow.
            snapshot = {
                "after": rep,
                "refcounts": {name: sys.getrefcount(obj) for name, obj in shared.items()},
                "gc_objects": len(gc.get_objects()),
                "allocated_blocks": sys.getallocatedblocks(),
                "traced_bytes": tracemalloc.get_traced_memory()[0],
            }
            print(json.dumps(snapshot), flush=True)
            del snapshot
    tracemalloc.stop()
    print(json.dumps({"events": first[0], "state_hash": first[1]}), flush=True)


def run_child() -> tuple[list[dict], dict]:
    code = (
        "import sys; sys.path.insert(0, 'tests'); import test_replay_c_leaks as t; "
        f"t.measure({WARM_UP + 2 * N}, [{WARM_UP}, {WARM_UP + N}, {WARM_UP + 2 * N}])"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    *snapshots, result = [json.loads(line) for line in out.stdout.splitlines()]
    return snapshots, result


def test_the_compiled_loop_leaks_nothing_over_repetitions():
    assert COMPILED, "the compiled replay loop (engine.core._replay) is not built"
    snapshots, result = run_child()  # every repetition reached the same state and count
    assert result["events"] > 3_500
    warm, after_n, after_2n = snapshots
    assert (warm["after"], after_n["after"], after_2n["after"]) == (WARM_UP, WARM_UP + N, WARM_UP + 2 * N)
    for key in ("refcounts", "gc_objects", "allocated_blocks", "traced_bytes"):
        assert after_n[key] == after_2n[key], (
            f"{key} grows with repetitions: {after_n[key]} -> {after_2n[key]}"
        )
