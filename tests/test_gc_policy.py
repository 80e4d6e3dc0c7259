"""The node's GC policy (engine/gc_policy.py): full collections rarer once start-up is done.

Session 8: under `loom bench connections --idle 20000` every full pass walked 80,000-156,000
objects, ~80% of them the held connections', freed nothing, and stopped the loop for
30-345 ms on a loaded VM; CPython's default ran one every 6-12 s of a reconnecting flood.
Each case runs in its own interpreter: the policy is process-wide."""

from __future__ import annotations

import json
import subprocess
import sys

from loomproc import REPO

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


def _full_passes(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHURN, mode], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_full_collections_are_rarer_under_connection_churn():
    default, policy = _full_passes("default"), _full_passes("policy")
    # CPython's defaults (700, 10, 10) run several full passes over the held "connections";
    # the policy keeps the young thresholds and runs a tenth as many full ones, or none.
    assert default["full"] >= 5, default
    assert policy["threshold"][:2] == default["threshold"][:2], (default, policy)
    assert policy["full"] <= default["full"] // 5, (default, policy)
