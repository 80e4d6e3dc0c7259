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

`--loop --kind KIND` counts one path alone: only the commands of KIND (`cancel`, `rest-buy`,
`rest-sell`: a GTC limit that rests untouched, `aggr`: one that trades or does not rest)
run inside `deque()`, one call each, the rest outside it; the kinds are those of a probe
run of the credit venue (the matching is the same in every mode). Divide by the kind's
count, printed on stderr: per-path cost, plain against credit (BENCHMARKS.md, session 12).
"""

from __future__ import annotations

import gc
import sys
from collections import deque

from engine.bench.workload import credit_setup, generate
from engine.bench.workload import make_engine as make_venue
from engine.core.commands import Cancel
from engine.core.domain import TimeInForce

KINDS = ("cancel", "rest-buy", "rest-sell", "aggr")


def command_kinds(commands: list) -> list[str]:
    """Each command's path, from a probe run of the credit venue."""
    probe = make_venue(True)
    gtc = int(TimeInForce.GTC)
    kinds = []
    for cmd in commands:
        events = probe.apply(cmd)
        if type(cmd) is Cancel:
            kinds.append("cancel")
        elif cmd.tif == gtc and len(events) == 1:  # accepted and resting, nothing traded
            kinds.append("rest-buy" if cmd.side == 1 else "rest-sell")
        else:
            kinds.append("aggr")
    return kinds


def main(ops: int, mode: str, loop: bool = False, kind: str = "") -> None:
    commands = generate(ops, 1, "deep", first_seq=len(credit_setup()) + 1).commands
    kinds = command_kinds(commands) if kind else []
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
    if kind:  # only KIND's commands inside deque_init, one call each (the same in every mode)
        for cmd, k in zip(commands, kinds, strict=True):
            if k == kind:
                deque(map(apply, (cmd,)), maxlen=0)
            else:
                apply(cmd)
        print(f"{kinds.count(kind)} {kind} commands", file=sys.stderr)
        return
    if loop:  # callgrind's --toggle-collect=deque_init brackets exactly this loop
        deque(map(apply, commands), maxlen=0)
        return
    for cmd in commands:
        apply(cmd)


if __name__ == "__main__":
    args = sys.argv[3:]
    chosen = args[args.index("--kind") + 1] if "--kind" in args else ""
    if chosen and chosen not in KINDS:
        raise SystemExit(f"--kind: one of {', '.join(KINDS)}")
    main(int(sys.argv[1]), sys.argv[2], "--loop" in args, chosen)
