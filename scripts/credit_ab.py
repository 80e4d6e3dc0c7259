"""The credit path's cost, this tree against another commit, in one process: the plain and
the credit engines of both trees apply the same `loom bench engine` workload (deep, seed 1),
timed with time.process_time, and each tree's credit/plain ratio is reported per round, as
the ratio of the medians and as the ratio of the best passes. On a shared VM two separate
runs differ by up to 2x; within one process both trees see the same machine.

    python scripts/credit_ab.py --base 767a8a8 --ops 300000 --rounds 8            # whole passes
    python scripts/credit_ab.py --base 767a8a8 --ops 300000 --rounds 6 --batch 1000  # interleaved

Run from the tree measured: its `engine` package is imported (not the venv's). The base commit's `engine`
package is extracted with `git archive` into a temporary directory as `engine_base`. Whole
passes (the default) are what `loom bench engine --credit` times: each a fresh engine, the
collector frozen, the order of the four passes rotated per round. With `--batch N` the four
engines instead apply the commands N at a time in turn (the order reversed every other
round: which engine ran just before moves a batch's time by up to 25%, so read the rounds
in pairs). Every engine must end on its tree twin's state hash.
"""

from __future__ import annotations

import argparse
import gc
import io
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import msgspec

KEYS = [("base", False), ("base", True), ("tree", False), ("tree", True)]


def extract_base(rev: str, into: Path) -> None:
    """`engine` at `rev` as the package `engine_base` under `into`, its imports renamed."""
    data = subprocess.run(["git", "archive", rev, "engine"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    (into / "engine").rename(into / "engine_base")
    pattern = re.compile(r"^(\s*)(from|import) engine(?=[. ]|$)", re.MULTILINE)
    for path in (into / "engine_base").rglob("*.py"):
        text = path.read_text()
        path.write_text(pattern.sub(r"\1\2 engine_base", text))


def label(key: tuple[str, bool]) -> str:
    return key[0] + ("+credit" if key[1] else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the commit to compare against (e.g. main's)")
    ap.add_argument("--ops", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--batch", type=int, default=0, help="interleave the engines N commands at a time")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="credit_ab_"))
    extract_base(args.base, tmp)
    sys.path[:0] = [str(tmp), str(Path(__file__).resolve().parents[1])]  # this tree's engine, not the venv's
    import engine_base.bench.workload as base_workload  # type: ignore[import-not-found]
    import engine_base.core.state as base_state  # type: ignore[import-not-found]

    import engine.bench.workload as tree_workload
    import engine.core.commands as tree_commands
    import engine.core.state as tree_state

    print(f"tree: {Path(tree_workload.__file__).parents[2]}, base: {args.base}", flush=True)
    work = base_workload.generate(args.ops, 1, "deep", first_seq=len(base_workload.credit_setup()) + 1)
    raw = msgspec.msgpack.encode(work.commands)
    commands = {"base": work.commands, "tree": msgspec.msgpack.decode(raw, type=list[tree_commands.Command])}
    mods = {"base": (base_workload, base_state), "tree": (tree_workload, tree_state)}
    rates: dict[tuple[str, bool], list[float]] = {k: [] for k in KEYS}
    hashes: dict[tuple[str, bool], set[str]] = {k: set() for k in KEYS}
    for r in range(args.rounds):
        engines = {k: mods[k[0]][0].make_engine(k[1]) for k in KEYS}
        spent = dict.fromkeys(KEYS, 0.0)
        if args.batch:
            order = KEYS if r % 2 == 0 else KEYS[::-1]
            gc.collect()
            gc.freeze()
            n = len(commands["base"])
            for i in range(0, n, args.batch):
                for k in order:
                    apply = engines[k].apply
                    batch = commands[k[0]][i : i + args.batch]
                    t = time.process_time()
                    for cmd in batch:
                        apply(cmd)
                    spent[k] += time.process_time() - t
            gc.unfreeze()
        else:
            order = KEYS[r % 4 :] + KEYS[: r % 4]
            if r % 2:
                order = order[::-1]
            for k in order:
                apply = engines[k].apply
                gc.collect()
                gc.freeze()
                t = time.process_time()
                for cmd in commands[k[0]]:
                    apply(cmd)
                spent[k] = time.process_time() - t
                gc.unfreeze()
        for k in KEYS:
            rates[k].append(args.ops / spent[k])
            hashes[k].add(mods[k[0]][1].state_hash(engines[k]))
        print(
            f"round {r}: "
            + "  ".join(f"{label(k)} {rates[k][-1]:,.0f}" for k in KEYS)
            + f"  credit/plain base {spent[KEYS[0]] / spent[KEYS[1]]:.3f}"
            + f" tree {spent[KEYS[2]] / spent[KEYS[3]]:.3f}",
            flush=True,
        )
    same = all(len(h) == 1 for h in hashes.values()) and all(
        hashes[("base", c)] == hashes[("tree", c)] for c in (False, True)
    )
    # The median, and the best pass (the one the shared machine disturbed least) of each.
    for name, pick in (("median", statistics.median), ("best", max)):
        fig = {k: pick(v) for k, v in rates.items()}
        print(
            f"{name} ops/s "
            + ", ".join(f"{label(k)} {v:,.0f}" for k, v in fig.items())
            + f"; credit/plain base {fig[KEYS[1]] / fig[KEYS[0]]:.3f}, tree {fig[KEYS[3]] / fig[KEYS[2]]:.3f}"
        )
    print(f"same state hashes: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
