"""The `loom bench engine` workload applied once, for counting CPU instructions under
valgrind: a figure this shared VM's load does not move (its wall-clock ratios drift ±15%).

    PYTHONPATH=<tree> PYTHONHASHSEED=0 valgrind --tool=cachegrind --cache-sim=no \\
        --cachegrind-out-file=/dev/null python scripts/engine_instructions.py 20000 MODE

("I refs" is the count; PYTHONPATH names the tree measured, this one or another.)

MODE: `plain` (no assets), `credit` (the funded venue, credit checks on), `off` (the same
venue with credit checks off), and `none` / `none-credit` (the same set-up, nothing
applied: subtract it). The apply loop's count is MODE's less its set-up's.
"""

from __future__ import annotations

import gc
import sys

from engine.bench.workload import credit_setup, generate
from engine.bench.workload import make_engine as make_venue


def main(ops: int, mode: str) -> None:
    commands = generate(ops, 1, "deep", first_seq=len(credit_setup()) + 1).commands
    if mode == "off":
        from engine.core.matcher import MatchingEngine

        engine = MatchingEngine([])
        for cmd in credit_setup()[:-1]:  # all but SetCreditChecks(True): checks stay off
            engine.apply(cmd)
    else:
        engine = make_venue(mode in ("credit", "none-credit"))
    gc.collect()
    gc.freeze()
    if not mode.startswith("none"):
        apply = engine.apply
        for cmd in commands:
            apply(cmd)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
