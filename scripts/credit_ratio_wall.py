"""The credit pass's wall-clock cost against the plain pass, from many short alternated
passes in one process: on a shared VM a pass's time swings 2x, so a ratio of medians over
3 passes (`loom bench engine --credit`) moves ±15%; the fastest pass of each kind (the
least disturbed) and the median of each round's ratio move less.

    PYTHONPATH=<tree> python scripts/credit_ratio_wall.py OPS ROUNDS

Prints one JSON line: plain and credit ops/s (best pass), their ratio, the median of the
rounds' ratios, and whether every credit pass reached the same state hash.
"""

from __future__ import annotations

import json
import statistics
import sys

from engine.bench.engine_bench import _throughput_pass
from engine.bench.workload import credit_setup, generate


def main(ops: int, rounds: int) -> None:
    plain_cmds = generate(ops, 1, "deep").commands
    credit_cmds = generate(ops, 1, "deep", first_seq=len(credit_setup()) + 1).commands
    plain: list[int] = []
    credit: list[int] = []
    hashes = set()
    for i in range(rounds):
        # Alternate which kind goes first, so a slow spell does not always hit the same one.
        order = (False, True) if i % 2 == 0 else (True, False)
        for with_credit in order:
            elapsed, digest = _throughput_pass(credit_cmds if with_credit else plain_cmds, with_credit)
            (credit if with_credit else plain).append(elapsed)
            if with_credit:
                hashes.add(digest)
    ratios = [p / c for p, c in zip(plain, credit, strict=True)]
    print(
        json.dumps(
            {
                "ops": ops,
                "rounds": rounds,
                "plain_ops_per_s_best": round(ops / (min(plain) / 1e9)),
                "credit_ops_per_s_best": round(ops / (min(credit) / 1e9)),
                "ratio_best": round(min(plain) / min(credit), 3),
                "ratio_median_of_rounds": round(statistics.median(ratios), 3),
                "credit_hash": sorted(hashes)[0][:12] if len(hashes) == 1 else "differs",
            }
        )
    )


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
