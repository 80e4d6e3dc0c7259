"""The node's garbage-collection policy, set once start-up is done.

A full (generation 2) collection walks every tracked object that is not frozen, and stops
the event loop while it does. Start-up objects are frozen (never walked again). What is
left to walk under a connection flood is mostly the held connections: session 8 counted
80,000-156,000 objects in generation 2 during `loom bench connections --idle 20000`, ~80%
of them the flood's (transport, gate, weak reference, bound methods, a list: 5-6 each).
Every full pass in the flood freed nothing (closed connections are freed by their reference
counts, not by the collector), yet took 30-345 ms on a loaded VM (session 7's quiet run had
one slow second, at 25.8 ms). CPython 3.11 runs one after every `threshold2` (10)
collections of generation 1 once a quarter of generation 2 is new, and a reconnecting flood
renews that quarter every deadline cycle: a full pass every 6-12 s in instrumented runs.

With `FULL_EVERY` (100) generation-1 collections per full one, full passes are ~10x rarer
(none after start-up in two instrumented flood runs, against two). Cyclic garbage that
outlives two young collections (a closed aiohttp handler, an exception's traceback) waits up
to 10x longer for its pass: bounded by a count of collections, not by time.

Young passes on a clock (`YoungPasses`). CPython starts a young collection when allocations
less deallocations pass `threshold0` (700). A node in its steady state frees an old object
for each new one it keeps (a cache or window evicting its oldest, the stage-timings ring):
the count hovers near zero while the young generation fills. In the soak at 18,000 orders/s
(session 10) generation 0 held 10,000-160,000 objects when a collection finally started
(tuples, lists, `Durations`), one every ~0.5-10 s, and those passes took 15-46 ms of the
loop's CPU: a stall in the window's ack p99 that no full pass explains. Collecting the young
generations every `YOUNG_PASS_S` instead walks a tenth of a second's survivors each time
(a few thousand objects: well under a millisecond), the same work spread evenly.
"""

from __future__ import annotations

import asyncio
import gc

FULL_EVERY = 100  # generation-1 collections per full one (CPython's default: 10)
YOUNG_PASS_S = 0.1  # the young generations are collected at least this often


def settle_after_start_up() -> None:
    """Collect and freeze what start-up built (long-lived: no pass walks it again), and make
    full passes rarer (see the module docstring)."""
    gc.collect()
    gc.freeze()
    young, middle, _full = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_EVERY)


def due_generation(
    counts: tuple[int, int, int], thresholds: tuple[int, int, int], grown: int, old: int
) -> int:
    """The generation a pass should collect now: CPython's own choice (collect_generations),
    the oldest whose count is past its threshold, generation 0 at least. A full pass also
    waits until `grown` objects have moved to generation 2, more than a quarter of the `old`
    objects the last one left, as CPython's does: what it walks grows with the run, so passes
    at a fixed count would cost quadratic time."""
    if counts[2] > thresholds[2] and grown > old // 4:
        return 2
    return 1 if counts[1] > thresholds[1] else 0


class YoungPasses:
    """Collects the young generations every `interval` s on the event loop (see the module
    docstring), and generation 2 when CPython would (due_generation). The collector's own
    triggers stay on: this only keeps young passes from waiting on a count that hovers."""

    def __init__(self, interval: float = YOUNG_PASS_S) -> None:
        self.interval = interval
        self._after_full()
        self.passes = [0, 0, 0]  # by generation

    def collect(self) -> int:
        """One pass of the due generation (none while the collector is disabled: a test or
        a tool that turned it off); returns the generation, or -1."""
        if not gc.isenabled():
            return -1
        generation = due_generation(gc.get_count(), gc.get_threshold(), self.pending, self.old)
        # What a generation-1 pass moves to generation 2 is what it walks less what it frees:
        # counted from the young generations (a second's survivors), never by listing
        # generation 2, which holds the whole book (a million objects cost milliseconds).
        young = len(gc.get_objects(0)) + len(gc.get_objects(1)) if generation == 1 else 0
        found = gc.collect(generation)
        if generation == 2:
            self._after_full()
        elif generation == 1:
            self.pending += max(0, young - found)
        self.passes[generation] += 1
        return generation

    def _after_full(self) -> None:
        """What the last full pass (or start-up's, at first) left: generation 2, and the old
        objects with start-up's frozen survivors (CPython's own long_lived_total counts them
        too: from generation 2 alone, empty after the freeze, the first full pass came ~100 s
        in, whatever it would find: 13.5 ms in a soak, session 10)."""
        self.pending = 0  # objects the passes moved to generation 2 since (CPython's long_lived_pending)
        self.old = len(gc.get_objects(2)) + gc.get_freeze_count()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.collect()
