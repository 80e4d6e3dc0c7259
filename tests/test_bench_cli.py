"""The `loom bench` commands that print the figures of BENCHMARKS.md run, and their JSON
carries the keys the issues name (a small run each: the figures are not asserted, only
that the run is whole and self-consistent)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from engine.bench.workload import generate, make_engine
from engine.core.invariants import check_engine
from engine.core.replay import SilentReplayer
from engine.core.state import state_hash


def bench(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "bench", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard only: a loaded machine runs the larger benches for minutes
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
    assert r["replay_events_per_s"] > 0 and len(r["replay_s_runs"]) == 3


@pytest.mark.parametrize("mode", ["deep", "bounded"])
def test_bench_engine_runs_each_workload(mode: str):
    r = bench("engine", "--mode", mode, "--ops", "5000", "--repeat", "1")
    assert r["ops"] == 5000 and r["mode"] == mode and r["seed"] == 1
    assert r["ops_per_s"] > 0 and r["timed_ops_per_s"] > 0 and all(rate > 0 for rate in r["ops_per_s_runs"])
    assert 0 < r["p50_us"] <= r["p99_us"] <= r["max_us"]
    assert r["trades"] > 0 and r["deterministic"] is True
    # The bench's engine ends where the journal's replay path ends on the same seed's
    # commands, in this process: the same state hash and the same number of events.
    workload = generate(5000, seed=1, mode=mode)
    engine = make_engine()
    events = SilentReplayer(engine).apply(workload.commands)
    assert r["state_hash"] == state_hash(engine) == workload.state_hash
    assert r["events"] == events


def test_bench_engine_with_an_open_notional_limit_ends_on_one_hash_with_the_limit():
    plain = bench("engine", "--ops", "5000", "--repeat", "1")
    limited = bench("engine", "--ops", "5000", "--repeat", "2", "--max-open-notional", str(10**15))
    assert limited["deterministic"] is True and limited["max_open_notional"] == 10**15
    # Refusing nothing, it trades as without the limit; the hash covers the limit itself.
    assert (limited["trades"], limited["events"]) == (plain["trades"], plain["events"])
    assert limited["state_hash"] != plain["state_hash"]


def test_bench_engine_with_credit_runs_the_same_trades_on_a_funded_venue():
    r = bench("engine", "--credit", "--ops", "5000", "--repeat", "1")
    assert r["credit_ops_per_s"] > 0 and r["ops_per_s"] > 0
    assert r["credit_trades"] == r["trades"] > 0  # funds never bind: the same matching
    assert r["credit_fees"]["USD"] > 0 and r["credit_money_problems"] == []
    assert r["credit_deterministic"] is True and r["deterministic"] is True
    # Replayed into a funded engine, the journal ends where every credit pass ended.
    engine = make_engine(credit=True)
    SilentReplayer(engine).apply(generate(5000, seed=1, first_seq=engine.last_seq + 1).commands)
    assert engine.ledger.fees == r["credit_fees"] and check_engine(engine) == []


def test_bench_engine_spreads_its_orders_over_the_accounts_asked_for_funded_within_64_bits():
    r = bench("engine", "--credit", "--accounts", "10000", "--ops", "3000", "--repeat", "1")
    assert r["accounts"] == 10000 and r["deterministic"] is True
    # Each account funded with the default's per-account sum refused every deposit past the
    # asset's 64-bit supply: orders were refused for want of funds and the trades differed.
    assert r["credit_trades"] == r["trades"] > 0 and r["credit_money_problems"] == []
    owners = {c.account for c in generate(3000, seed=1, accounts=10000).commands}
    assert len(owners) > 1000


def test_bench_durable_fsyncs_every_batch():
    r = bench("durable", "--orders", "5000", "--batch", "500")
    assert r["orders"] == 5000
    assert r["batches"] == 10
    assert r["fsyncs"] >= r["batches"]


def test_bench_snapshot_stall_runs_with_and_without_snapshots():
    # 8 s per run: every 8 s window holds a 5 s snapshot tick, so each "with" run takes one at least.
    # Both writers: the snapshotter's figures are the *_with keys, the forked child's *_with_fork.
    r = bench(
        "snapshot-stall",
        "--resting",
        "20000",
        "--rate",
        "500",
        "--duration",
        "8",
        "--rounds",
        "2",
        "--writer",
        "both",
    )
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
    assert r["overloaded_with"] == r["overloaded_without"] == 0
    assert r["rounds"] == 2 and len(r["p99_ratio_by_round"]) == 2
    assert r["snapshots_taken"] >= 2 and r["snapshots_taken_without"] == 0 and r["snapshot_failures"] == 0
    assert r["snapshot_bytes"] > 20_000 * 20  # every resting order is in it
    assert r["capture_mean_ms"] > 0 and 0 < r["capture_fork_ms"] <= r["capture_fork_max_ms"]
    assert 0 < r["p99_ms_with"] <= r["max_ms_with"] and 0 < r["p99_ms_without"] <= r["max_ms_without"]
    assert r["writer"] == "follower" and r["acked_with_fork"] == 2 * 500 * 8
    assert r["snapshots_taken_fork"] >= 2 and r["snapshot_failures_fork"] == 0
    assert 0 < r["p99_ms_with_fork"] <= r["max_ms_with_fork"] and len(r["p99_ratio_by_round_fork"]) == 2


def test_snapshot_stall_counts_a_snapshot_still_being_written_when_the_load_ends(tmp_path, monkeypatch):
    """A run's closing scrape waits for the snapshots the run started: one whose write is
    still going on (here held by the snapshot writers' test hook) is counted once written,
    not lost. (Scraped when the load ended, a loaded machine's snapshots, written by a
    snapshotter that runs only on CPU left idle, counted 0 or 1 of 2.)"""
    import threading
    import urllib.request

    from engine.bench.snapshot_stall import _config_text, _scrape, _settled_scrape
    from engine.load.spawn import LOAD_ADMIN_KEY, spawned_exchange
    from engine.snapshot_child import HOLD_ENV

    hold = tmp_path / "hold"
    hold.touch()
    monkeypatch.setenv(HOLD_ENV, str(hold))
    with spawned_exchange(config_text=_config_text(0, "follower")) as info:
        host, port = info["host"], info["http"]
        before = _scrape(host, port)
        asked = urllib.request.Request(
            f"http://{host}:{port}/v1/admin/snapshot", method="POST", headers={"X-API-Key": LOAD_ADMIN_KEY}
        )
        answered = threading.Thread(target=lambda: urllib.request.urlopen(asked, timeout=120).close())
        answered.start()
        deadline = time.monotonic() + 60
        while not list((info["data_dir"] / "snapshots").glob("*.snap.tmp")):
            assert time.monotonic() < deadline, "the snapshot write was never held"
            time.sleep(0.02)
        scraped: list[dict] = []
        closing = threading.Thread(target=lambda: scraped.append(_settled_scrape(host, port, before)))
        closing.start()
        closing.join(timeout=1.0)
        assert closing.is_alive(), "the closing scrape did not wait for the snapshot being written"
        hold.unlink()
        closing.join()
        answered.join()
    taken = scraped[0]["loom_snapshot_duration_seconds_count"] - before.get(
        "loom_snapshot_duration_seconds_count", 0
    )
    assert taken == 1, scraped


def test_bench_marketdata_reports_fan_out_encode_once_and_conflation():
    r = bench("marketdata", "--subscribers", "50", "--updates", "300", "--max-rate", "5")
    assert r["subscribers"] == 50 and r["updates"] == 300  # every order changed the book
    assert r["unconflated_frames"] == 50 * 300  # every update reached every subscriber
    assert 0 < r["conflated_frames"] < r["unconflated_frames"]
    assert r["conflated_frames"] % 50 == 0  # a conflated update goes to the whole group
    assert r["encode_once_us"] > 0 and r["per_subscriber_us"] > 0 and r["updates_per_s"] > 0


@pytest.mark.parametrize("marketdata", [0, 1])
def test_bench_fanout_reports_every_subscriber_its_frames_and_lag(marketdata: int):
    """`loom bench fanout`, reduced: 100 WebSocket book subscribers at 10 Hz on a real node
    (and, with --marketdata 1, half of them on a `loom marketdata` process fed over NATS)."""
    args = ["--subscribers", "100", "--duration", "2", "--processes", "2", "--marketdata", str(marketdata)]
    r = bench("fanout", *args)
    assert {"subscribers", "updates_per_s", "frames_per_s", "lag_p50_ms", "lag_p99_ms"} <= r.keys()
    assert r["subscribers"] == 100 and r["connections_lost"] == 0 and r["client_errors"] == [], r
    assert r["marketdata_processes"] == marketdata and len(r["rss_mb_by_server"]) == 1 + marketdata, r
    assert r["updates_per_s"] > 0 and r["slow_disconnects"] == 0 and r["rss_mb"] > 0, r
    # Conflated to 10 Hz: never more than 10 frames a second per subscriber (+1 at the edges).
    assert 0 < r["frames_per_s"] <= 100 * 10 * (1 + 1 / r["seconds"]), r
    assert 0 < r["lag_p50_ms"] <= r["lag_p99_ms"], r
    # Where the CPU went over the window: each server's share (the node's, taking the orders,
    # is above the 10 ms tick of /proc's counters; 50 subscribers' may not be), and the
    # subscribers' processes.
    cores = r["server_cpu_cores"]
    assert len(cores) == 1 + marketdata and cores[0] > 0 and min(cores) >= 0, r
    assert r["client_cpu_cores"] >= 0 and r["load_average_1m"] > 0 and r["server_rate_limited"] == 0, r


def test_bench_connections_authenticated_holds_logged_on_sessions_and_measures_their_memory():
    """`loom bench connections --authenticated`, reduced: 300 idle logged-on binary and
    WebSocket sessions held while orders flow; RSS per 1,000 sessions and the p99 ratio."""
    r = bench("connections", "--idle", "300", "--authenticated", "--seconds", "1", "--processes", "1")
    assert r["authenticated"] is True
    assert r["idle_held"] == 300 and r["idle_held_by_node"] == 300, r
    assert r["sessions_logged_on"] >= 300, r  # logged on, not merely connected
    assert r["refused"] == 0 and r["flood_connect_errors"] == 0, r
    per_1k = (r["rss_mb_during"] - r["rss_mb_before"]) / 0.3  # from the rounded MB: within 0.34
    assert r["rss_mb_during"] > 0 and abs(r["rss_mb_per_1k_sessions"] - per_1k) < 0.34, r
    assert r["orders_unanswered"] == 0 and r["orders_acked_during"] == 1000, r
    # The bench divides the unrounded p99s; these are rounded to 3 decimals: within 0.01.
    assert r["p99_ms_before"] > 0 and abs(r["p99_ratio"] - r["p99_ms_during"] / r["p99_ms_before"]) <= 0.01
