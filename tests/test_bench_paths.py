"""`loom bench paths` runs apply and replay over one workload: each pass ends on the
generator's state hash, replay counts the events `apply` emitted, and every path
reports a positive rate (the figures themselves are for BENCHMARKS.md, not asserted)."""

from __future__ import annotations

from test_bench_cli import bench

from engine.bench.workload import generate


def test_bench_paths_runs_every_path_to_the_same_state():
    r = bench("paths", "--ops", "5000", "--repeat", "2")
    assert set(r["ops_per_s"]) == {"apply", "replay", "replay_prefixes"}
    assert all(len(runs) == 2 and min(runs) > 0 for runs in r["ops_per_s_runs"].values())
    assert r["ratio_to_apply"]["apply"] == 1.0
    assert r["deterministic"] and r["events_agree"]
    assert r["state_hash"] == generate(5000, 1).state_hash
    assert r["events"][0] > r["ops"]  # every order is accepted, trades add more
