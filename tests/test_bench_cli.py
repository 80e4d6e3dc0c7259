"""The `loom bench` commands that print the figures of BENCHMARKS.md run, and their JSON
carries the keys the issues name (a small run each: the figures are not asserted, only
that the run is whole and self-consistent)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def bench(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "bench", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_bench_recovery_reports_restart_and_replay_with_matching_hashes():
    r = bench("recovery", "--orders", "20000")
    assert {"orders", "journal_bytes", "replay_events_per_s", "recovery_s"} <= r.keys()
    assert r["orders"] == 20_000
    assert r["hash_matches"] is True
    assert r["journal_bytes"] > 20_000 * 20  # every order is in the journal
    assert r["recovery_replayed_commands"] == 20_000 + 1 - r["snapshot_seq"]  # the tail after the snapshot
    assert r["replay_loop"] == "compiled"
    assert r["replay_events_per_s"] > 0 and r["replay_events_per_s_python_loop"] > 0


@pytest.mark.parametrize("mode", ["deep", "bounded"])
def test_bench_engine_runs_each_workload(mode: str):
    r = bench("engine", "--mode", mode, "--ops", "5000", "--repeat", "1")
    assert r["ops"] == 5000 and r["mode"] == mode


def test_bench_engine_with_an_open_notional_limit_ends_on_one_hash_with_the_limit():
    plain = bench("engine", "--ops", "5000", "--repeat", "1")
    limited = bench("engine", "--ops", "5000", "--repeat", "2", "--max-open-notional", str(10**15))
    assert limited["deterministic"] is True and limited["max_open_notional"] == 10**15
    # Refusing nothing, it trades as without the limit; the hash covers the limit itself.
    assert (limited["trades"], limited["events"]) == (plain["trades"], plain["events"])
    assert limited["state_hash"] != plain["state_hash"]


def test_bench_durable_fsyncs_every_batch():
    r = bench("durable", "--orders", "5000", "--batch", "500")
    assert r["orders"] == 5000
    assert r["batches"] == 10
    assert r["fsyncs"] >= r["batches"]


def test_bench_snapshot_stall_runs_with_and_without_snapshots():
    # 8 s per run: every 8 s window holds a 5 s snapshot tick, so each "with" run takes one at least.
    r = bench("snapshot-stall", "--resting", "20000", "--rate", "500", "--duration", "8", "--rounds", "2")
    keys = {
        "p99_ms_with",
        "p99_ms_without",
        "max_ms_with",
        "max_ms_without",
        "snapshots_taken",
        "snapshot_bytes",
    }
    assert keys <= r.keys()
    assert r["resting"] == 20_000
    assert r["acked_with"] == r["acked_without"] == 2 * 500 * 8 and r["errors"] == 0
    assert r["rounds"] == 2 and len(r["p99_ratio_by_round"]) == 2
    assert r["snapshots_taken"] >= 2 and r["snapshots_taken_without"] == 0 and r["snapshot_failures"] == 0
    assert r["snapshot_bytes"] > 20_000 * 20  # every resting order is in it
    assert r["capture_mean_ms"] > 0 and 0 < r["capture_fork_ms"] <= r["capture_fork_max_ms"]
    assert 0 < r["p99_ms_with"] <= r["max_ms_with"] and 0 < r["p99_ms_without"] <= r["max_ms_without"]
