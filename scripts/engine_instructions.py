"""The `loom bench engine` workload applied once, for counting CPU instructions under
valgrind: a figure this shared VM's load does not move (its wall-clock ratios drift ±15%).

    PYTHONPATH=<tree> PYTHONHASHSEED=0 valgrind --tool=cachegrind --cache-sim=no \\
        --cachegrind-out-file=/dev/null python scripts/engine_instructions.py 20000 MODE

("I refs" is the count; PYTHONPATH names the tree measured, this one or another.)

MODE: `plain` (no assets), `credit` (the funded venue, credit checks on), `off` (the same
venue with credit checks off), and `none` / `none-credit` (the same set-up, nothing
applied: subtract it). The apply loop's count is MODE's less its set-up's.

A subtraction of two runs moves ±15 instructions per op at 20,000 ops (the set-up's own
count varies). `--loop` runs the apply loop inside `deque()` instead, so that callgrind
counts that loop alone, no subtraction, with cache misses if asked (`--LL` at the 2 MB L2
size models this machine's L2; cachegrind's default LL is its 480 MB L3):

    PYTHONPATH=<tree> PYTHONHASHSEED=0 setarch x86_64 -R valgrind --tool=callgrind \\
        --collect-atstart=no --toggle-collect=deque_init --cache-sim=yes --LL=2097152,16,64 \\
        --callgrind-out-file=OUT python scripts/engine_instructions.py 20000 MODE --loop

(`grep summary OUT`: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw, over the loop.)
"""

from __future__ import annotations

import gc
import sys
from collections import deque

from engine.bench.workload import credit_setup, generate
from engine.bench.workload import make_engine as make_venue


def main(ops: int, mode: str, loop: bool = False) -> None:
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
    if mode.startswith("none"):
        return
    apply = engine.apply
    if loop:  # callgrind's --toggle-collect=deque_init brackets exactly this loop
        deque(map(apply, commands), maxlen=0)
        return
    for cmd in commands:
        apply(cmd)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], "--loop" in sys.argv[3:])
