"""The node's GC policy (engine/gc_policy.py): full collections rarer once start-up is done.

Session 8: under `loom bench connections --idle 20000` every full pass walked 80,000-156,000
objects, ~80% of them the held connections', freed nothing, and stopped the loop for
30-345 ms on a loaded VM; CPython's default ran one every 6-12 s of a reconnecting flood.
Each case runs in its own interpreter: the policy is process-wide."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

from loomproc import REPO, loom_run_process

from engine.gc_policy import FULL_EVERY, YOUNG_PASS_S, due_generation

# A flood's shape in miniature: 20,000 long-lived "connections" (a few tracked objects each),
# a quarter of them replaced again and again (deadline closes and reconnects), while the
# full passes are counted.
CHURN = """
import gc, json, sys
from engine.gc_policy import settle_after_start_up
if sys.argv[1] == "policy":
    settle_after_start_up()
else:
    gc.collect(); gc.freeze()  # what start-up did before the policy
held = [[object(), [], {}] for _ in range(20_000)]
full = gc.get_stats()[2]["collections"]
for wave in range(40):
    for i in range(wave % 4, len(held), 4):
        held[i] = [object(), [], {}]
    for _ in range(20_000):  # the order path's short-lived garbage (some of it cyclic)
        cycle = [{}]
        cycle.append(cycle)
print(json.dumps({"full": gc.get_stats()[2]["collections"] - full, "threshold": gc.get_threshold()}))
"""


def _run(script: str, *args: str) -> dict:
    """`script`'s JSON line, run in its own interpreter (the policy is process-wide)."""
    out = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_full_collections_are_rarer_under_connection_churn():
    default, policy = _run(CHURN, "default"), _run(CHURN, "policy")
    # CPython's defaults (700, 10, 10) run several full passes over the held "connections";
    # the policy keeps the young thresholds and runs a tenth as many full ones, or none.
    assert default["full"] >= 5, default
    assert policy["threshold"][:2] == default["threshold"][:2], (default, policy)
    assert policy["full"] <= default["full"] // 5, (default, policy)


# A steady state in miniature (session 10's soak): each "order" keeps a new object and evicts
# the oldest of a long-lived window (a cache, the stage-timings ring), and makes short-lived
# garbage, some of it cyclic. Allocations less deallocations stay near zero, so CPython's
# own trigger (threshold0) rarely fires while the young generation fills. "passes": a young
# pass every 1,000 orders (the node's clock, at 10,000 orders/s). Reports the most objects
# generation 0 held when a collection started (or at the end), from the 100,000th order on,
# and how many cyclic garbage objects are still alive at the end.
STEADY = """
import collections, gc, json, sys, weakref
from engine.gc_policy import YoungPasses, settle_after_start_up

class Cyclic:
    pass

settle_after_start_up()
window = collections.deque(([i] for i in range(50_000)), maxlen=50_000)
gc.collect()  # the window is old, as a warm node's caches are
largest, measuring = [0], [False]
def on_gc(phase, info):
    if phase == "start" and measuring[0]:
        largest[0] = max(largest[0], len(gc.get_objects(0)))
gc.callbacks.append(on_gc)
cycles = weakref.WeakSet()
passes = YoungPasses()
for i in range(400_000):
    measuring[0] = i >= 100_000
    window.append([i])  # kept; evicts (frees) the oldest
    answer = [{"order": i}, [i]]  # short-lived: freed at once
    del answer
    if i % 1000 == 0:
        if sys.argv[1] == "passes":
            passes.collect()
        c = Cyclic()
        c.me = c
        cycles.add(c)
        del c  # garbage now: only the collector frees it
largest[0] = max(largest[0], len(gc.get_objects(0)))
gc.callbacks.remove(on_gc)
print(json.dumps({"largest_young": largest[0], "cyclic_alive": len(cycles), "passes": passes.passes}))
"""


def test_young_passes_keep_the_young_generation_small_in_a_steady_state():
    default, timed = _run(STEADY, "default"), _run(STEADY, "passes")
    # CPython's count alone: tens of thousands of young objects wait for a pass (the
    # node: 10,000-160,000), and the cyclic garbage with them.
    assert default["largest_young"] >= 20_000, default
    # On a clock: each pass walks what the last 1,000 orders kept, and frees the cycles.
    assert timed["passes"][0] + timed["passes"][1] == 400, timed
    assert timed["largest_young"] <= default["largest_young"] // 10, (default, timed)
    assert timed["cyclic_alive"] <= default["cyclic_alive"] // 10, (default, timed)


def test_due_generation_follows_cpythons_choice():
    thresholds = (700, 10, FULL_EVERY)
    assert due_generation((5, 3, 7), thresholds, 0, 0) == 0
    assert due_generation((5, 11, 7), thresholds, 0, 0) == 1
    # Generation 2's count is past its threshold: a full pass once it has grown by a quarter
    # of what the last one left, a generation-1 pass otherwise (CPython's rule: no quadratic cost).
    assert due_generation((5, 11, FULL_EVERY + 1), thresholds, 2_600, 10_000) == 2
    assert due_generation((5, 11, FULL_EVERY + 1), thresholds, 2_400, 10_000) == 1
    assert due_generation((5, 2, FULL_EVERY + 1), thresholds, 2_400, 10_000) == 0


def _young_collections(base: str) -> float:
    """The node's generation-0 and generation-1 collections so far (loom_gc_pause_seconds)."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(
            ('loom_gc_pause_seconds_count{generation="0"}', 'loom_gc_pause_seconds_count{generation="1"}')
        )
    )


def test_an_idle_node_collects_its_young_generations_on_a_clock(tmp_path):
    config = tmp_path / "idle.toml"
    config.write_text('[[instruments]]\nsymbol = "IDLE-USD"\ntick_size = 1\nlot_size = 1\n')
    args = ["--config", str(config), "--data-dir", str(tmp_path / "data"), "--http-port", "0"]
    args += ["--fix-port", "-1", "--binary-port", "-1"]
    with loom_run_process(args, dict(os.environ)) as (_proc, ports):
        base = f"http://127.0.0.1:{ports['http']}"
        before, started = _young_collections(base), time.perf_counter()
        time.sleep(2.0)  # the interval measured, not a wait for readiness (the node is up)
        passes = _young_collections(base) - before
        seconds = time.perf_counter() - started
    # A pass every YOUNG_PASS_S however little the node allocates (an idle node's count
    # alone runs almost none): half of them at least, on a loaded machine.
    assert passes >= 0.5 * seconds / YOUNG_PASS_S, (passes, seconds)


# Start-up's survivors (frozen) count as what the last full pass left, as CPython's own
# long_lived_total does: generation 2 growing by a tenth of them runs no full pass, by over
# a quarter runs one. (Counted from an empty generation 2, the first growth ran one.)
FULL_RULE = """
import gc, json
from engine.gc_policy import YoungPasses, settle_after_start_up
start_up = [[i] for i in range(40_000)]
settle_after_start_up()
gc.set_threshold(10**9, *gc.get_threshold()[1:])  # only the passes collect: theirs is the rule seen
passes = YoungPasses()
def grow(n):  # n long-lived objects, promoted to generation 2 by the passes
    kept.extend([i] for i in range(n))
    for _ in range(1_200):  # ~110 generation-1 passes: generation 2's count past FULL_EVERY
        passes.collect()
kept = []
frozen = gc.get_freeze_count()  # start-up's survivors: the interpreter's, the engine's, these
grow(frozen // 10)
small = passes.passes[2]
grow(frozen // 4)
print(json.dumps({"after_small_growth": small, "after_large_growth": passes.passes[2]}))
"""


def test_a_full_pass_waits_for_generation_2_to_grow_by_a_quarter_of_start_ups_survivors():
    got = _run(FULL_RULE)
    assert got == {"after_small_growth": 0, "after_large_growth": 1}, got


def test_passes_never_list_generation_2_until_a_full_pass_is_due(monkeypatch):
    """Generation 2 holds the whole book (a million resting orders: listing it costs ~7 ms):
    a pass counts what moved there from the young generations instead, so only a full pass
    (which walks it anyway) lists it."""
    import gc

    from engine.gc_policy import YoungPasses

    asked: list[int] = []
    listing = gc.get_objects

    def get_objects(generation=None):
        asked.append(generation)
        return listing(generation)

    passes = YoungPasses()
    monkeypatch.setattr(gc, "get_objects", get_objects)
    monkeypatch.setattr(gc, "get_count", lambda: (5, 11, FULL_EVERY + 1))  # generation 2 past its count
    for _ in range(50):
        passes.collect()
    assert passes.passes[2] == 0 and passes.passes[1] == 50, passes.passes
    assert 2 not in asked and None not in asked, asked
