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
"""

from __future__ import annotations

import gc

FULL_EVERY = 100  # generation-1 collections per full one (CPython's default: 10)


def settle_after_start_up() -> None:
    """Collect and freeze what start-up built (long-lived: no pass walks it again), and make
    full passes rarer (see the module docstring)."""
    gc.collect()
    gc.freeze()
    young, middle, _full = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_EVERY)
