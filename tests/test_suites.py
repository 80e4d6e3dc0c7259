"""`loom suite concurrency|stress|soak|dr`, reduced in size: real `loom run` processes (and a
local NATS cluster for dr); each run's JSON must account for every order and agree with
the journal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from waiting import wait_until

from engine.gc_policy import YOUNG_PASS_S
from engine.load.runner import LoadRun
from engine.suite.load_suites import bounded_order
from engine.suite.mixed import client_accounts, client_sessions, mixed_driver, split_sessions

REPO = Path(__file__).resolve().parents[1]


def suite(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "suite", *args, "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.stdout, done.stderr
    result = json.loads(done.stdout)
    assert done.returncode == (0 if result["passed"] else 1), done.stderr
    return result


def _every_order_accounted(r: dict) -> None:
    assert r["unanswered"] == 0 and r["contradictions"] == 0, r["contradiction_examples"]
    assert r["acked"] + r["rejected"] + r["refused_overloaded"] == r["sent"]
    checked = r["journal_checked"]
    assert checked["ops"] == r["sent"] and checked["unknown"] == 0
    assert checked["ok"] == r["acked"] == checked["journal_orders"]  # every ack journaled, once
    assert checked["failed"] == r["rejected"] + r["refused_overloaded"]
    assert 0 < r["p50_us"] <= r["p99_us"] <= r["p999_us"] <= r["max_us"]


def test_concurrency_answers_every_order_over_every_protocol_and_matches_the_journal():
    r = suite("concurrency", "--orders", "2000", "--sessions", "40", "--rate", "500")
    assert r["sent"] == 2000 and r["sessions"] == {"rest": 10, "ws": 10, "fix": 10, "binary": 10}
    assert r["accounts"] == 40
    assert r["answered_by_protocol"] == {"rest": 500, "ws": 500, "fix": 500, "binary": 500}
    _every_order_accounted(r)
    assert r["acked"] > 0 and r["passed"] is True


def test_stress_burst_accounts_for_every_order_as_acked_or_refused():
    r = suite("stress", "--orders", "5000", "--sessions", "8")
    assert r["sent"] == 5000 and r["throughput_per_s"] > 0
    _every_order_accounted(r)
    assert r["passed"] is True


def test_soak_reports_windows_rss_gc_and_drift_with_a_bounded_book():
    r = suite("soak", "--minutes", "0.2", "--window", "4", "--probe-seconds", "1")
    # The maximum is a rate the node sustained, held three steps' time on the warm node (the
    # probe's last step), not a burst's throughput (session 7: soaked at half of it, 24% refused).
    steps = r["probe_steps"]
    assert len(steps) >= 3 and sum(s["sent"] for s in steps) == r["probe_orders"]
    if r["max_rate"]:
        assert steps[-1]["sustained"] and steps[-1]["offered_rate"] == r["max_rate"]
        assert steps[-1]["duration_s"] >= 2.5 and abs(r["rate"] - r["max_rate"] / 2) <= 1
    else:  # a machine too loaded to hold even the probe's floor: said, and not a pass
        assert not steps[-1]["sustained"] and r["passed"] is False
    assert r["sent"] == r["probe_orders"] + r["orders"]  # the probe's orders are checked too
    _every_order_accounted(r)
    assert len(r["windows"]) == 3 and all(w["acks"] > 0 and w["rss_mb"] > 0 for w in r["windows"])
    # Node CPU per ack and the load average per window: what tells a node doing more work per
    # order as the run goes on from a machine giving it less of a core.
    assert all(w["node_cpu_us_per_ack"] > 0 and w["load_avg_1m"] >= 0 for w in r["windows"])
    # The node's events per window, from its /metrics differenced: the journal's fdatasyncs
    # (the disk), its young collections (on a 0.1 s clock: engine/gc_policy.py, half of them
    # at least on a loaded machine) and its loop's lag, each with its p99 and slowest bucket.
    for w in r["windows"]:
        assert w["node_fsync_n"] > 0 and 0 < w["node_fsync_p99_ms"] <= w["node_fsync_slowest_ms"], w
        assert w["node_loop_lag_p99_ms"] <= w["node_loop_lag_slowest_ms"], w
    assert all(w["node_gc_young_n"] >= 0.5 * 4 / YOUNG_PASS_S for w in r["windows"][:-1]), r["windows"]
    # The client's own collector pauses per window: a client stall is not the node's latency.
    assert all(w["client_gc_pause_max_ms"] >= 0 for w in r["windows"])
    # The generator writes at most once a tick (it spun, one write per order, on the node's
    # core: session 9), over the soak's orders/rate seconds.
    assert r["client_tick_ms"] == 1.0 and 0 < r["client_sends"] <= r["orders"] / r["rate"] * 1000 + 2, r
    assert r["rss_growth_mb"] == round(r["windows"][-1]["rss_mb"] - r["windows"][0]["rss_mb"], 1)
    assert r["rss_target_met"] == (r["rss_growth_mb"] < 50)
    # The drift from the windows' own p99s, unrounded: the report's percentage is rounded to
    # 0.1, so a drift of 19.96% reads 20.0 while its target is met (a loaded machine's drift
    # lands anywhere; the test checks the verdict, never the figure).
    first, last = r["windows"][0]["ack_p99_us"], r["windows"][-1]["ack_p99_us"]
    drift = (last - first) / first
    assert r["ack_p99_drift_pct"] == round(drift * 100, 1) and r["drift_target_met"] == (drift < 0.20), r
    # The flow nets to nothing in any interleaving of its two sessions: what rests at the end
    # is exactly what the acked orders leave (all of them acked: nothing), at one price.
    book = r["book_at_end"]
    assert book["qty"] == book["net_acked_qty"] and book["levels"] == (1 if book["qty"] else 0), book


def test_dr_rebuilds_a_destroyed_standby_from_the_replicated_snapshot_and_takes_over():
    r = suite("dr", "--orders-after", "50")
    assert r["rebuilt_from_replicated_snapshot"] is True
    assert r["contradictions"] == 0, r["contradiction_examples"]
    c = r["counts"]
    assert c["ok"] > 2000 and c["unknown"] == c["unknown_present"] + c["unknown_absent"]
    assert r["state_hash_matches"] is True and r["new_leader"] == "b"
    assert r["rebuild_s"] > 0 and r["takeover_s"] > 0 and r["passed"] is True


def test_sessions_are_spread_over_the_protocols():
    assert split_sessions(1000) == [("rest", 250), ("ws", 250), ("fix", 250), ("binary", 250)]
    assert split_sessions(6) == [("rest", 2), ("ws", 2), ("fix", 1), ("binary", 1)]
    with pytest.raises(ValueError, match="cannot cover"):
        split_sessions(3)


def test_each_client_session_has_an_account_of_its_own():
    """The full-size concurrency run failed (30 journaled orders/s, REST answers lost) with 1,000
    sessions on two accounts: the node reports every event of an account to each of its
    sessions, so each order made ~250 FIX execution reports. Clients are independent now."""
    clients = client_sessions(split_sessions(10))
    assert clients == [(p, 1) for p in ("rest", "ws", "fix", "binary")] * 2 + [("rest", 1), ("ws", 1)]
    accounts = client_accounts(len(clients))
    driver, who = mixed_driver(
        "127.0.0.1", {"http": 1, "fix": 2, "binary": 3}, clients, LoadRun.new(), accounts
    )
    assert len(driver.drivers) == 10 and len({account for _, account in who}) == 10
    assert [protocol for protocol, _ in who] == [p for p, _ in clients]


def test_the_soak_flow_nets_to_nothing_in_any_interleaving_of_its_sessions():
    """Each pair's buy and sell (two sessions, two accounts) cross at one price: whichever
    session the node reads first, at most their lag rests, and nothing once both are in.
    (The IOC-sell flow left every buy sequenced after the last sell: 13,250 lots under load.)"""
    import random

    run = LoadRun.new().prefix
    orders = [bounded_order(run, i) for i in range(2_000)]
    buys, sells = orders[0::2], orders[1::2]
    assert {(o.side, o.tif) for o in buys} == {("buy", "gtc")}
    assert {(o.side, o.tif) for o in sells} == {("sell", "gtc")}
    assert len({o.price for o in orders}) == 1
    assert [o.qty for o in buys] == [o.qty for o in sells]
    in_order = [o for pair in zip(buys, sells, strict=True) for o in pair]
    sells_first = sells + buys
    rng = random.Random(7)
    shuffled = []
    left, right = list(buys), list(sells)
    while left or right:  # a random merge: each session's own order kept, as the node reads them
        shuffled.append((left if left and (not right or rng.random() < 0.5) else right).pop(0))
    for flow in (in_order, sells_first, shuffled):
        resting = 0  # > 0: buys rest; < 0: sells rest (one price: they never both rest)
        for o in flow:
            resting += o.qty if o.side == "buy" else -o.qty
            if flow is in_order:
                assert abs(resting) <= 50
        assert resting == 0


def test_the_soak_sampler_outlives_a_metrics_scrape_that_fails():
    """A /metrics scrape that timed out on a saturated node killed the sampler thread: the
    later windows read RSS 0 and the soak reported a negative growth as the target met."""
    import os
    import socket

    from engine.suite.load_suites import _bucket_p99_ms, _Sampler

    with socket.socket() as s:  # a port nothing listens on: every scrape fails
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sampler = _Sampler(os.getpid(), f"http://127.0.0.1:{port}", window_s=1.0)
    sampler.start()
    # Three seconds' samples, however late a loaded machine runs the thread (a fixed 3.5 s
    # sleep left no margin for that).
    wait_until("three RSS samples", lambda: len(sampler.rss) >= 3, timeout=60)
    sampler.stop.set()
    sampler.join()
    assert sampler.is_alive() is False and sampler.scrape_failures >= 3
    assert len(sampler.rss) >= 3 and all(mb > 0 for _, mb in sampler.rss)
    assert all(gc == {} for gc in sampler.gc) and _bucket_p99_ms({}, {}) is None
    # CPU time and load are read from /proc and the kernel, not /metrics: still sampled.
    assert len(sampler.cpu) == len(sampler.gc) == len(sampler.load) >= 3
    assert sampler.cpu == sorted(sampler.cpu) and sampler.cpu[-1] > 0


def test_the_soak_probe_fails_a_step_whose_queue_grows_and_passes_a_steady_loaded_p99():
    """The probe's maximum is a sustained rate: a step passes when no queue grows through it
    (the median, first quarter to last) and its p99 stays under a cap, not when its p99 is
    under 50 ms (on a loaded machine the p99 was 14-570 ms at 62-2,000/s, in no order of the
    rate: an absolute bound found 109/s)."""
    from engine.suite.load_suites import step_held

    at = [i / 1000 for i in range(4000)]  # 4 s, one answer a millisecond
    ms = 1_000_000
    growing = [(5 + i // 20) * ms for i in range(4000)]  # 5 ms rising to 205 ms: a queue
    steady = [(300 if i % 50 == 0 else 20) * ms for i in range(4000)]  # 300 ms p99 throughout
    assert step_held(growing, at, 4.0) is False
    assert step_held(steady, at, 4.0) is True
    assert step_held([600 * ms] * 4000, at, 4.0) is False  # over the cap, steady or not
    assert step_held([2 * ms] * 2000 + [8 * ms] * 2000, at, 4.0) is True  # under the floor
    assert step_held(steady[:2000], at[:2000], 4.0) is False  # no answer in the last quarter


def test_the_soak_client_does_not_walk_its_records_while_it_measures():
    """The soak's client keeps every answer and each probe step's history for the journal
    check; its full collections walked them all and stalled it ~1 s in the last window of
    the 3-minute soak (ack p99 825 ms against 17-46 ms before, the node idle meanwhile)."""
    import gc

    from engine.suite.load_suites import ClientGcPauses, client_collector_paused

    records = [[i] for i in range(50_000)]  # tracked objects, alive through the run
    frozen_before = gc.get_freeze_count()
    try:
        with client_collector_paused(), ClientGcPauses() as pauses:
            assert gc.isenabled() is False
            assert gc.get_freeze_count() >= frozen_before + len(records)
            young = [[] for _ in range(200_000)]  # ~280 young collections' worth of allocations
            assert pauses.pauses == [] and len(young) == 200_000  # none ran while it measured
            gc.collect(0)  # an explicit collection is still seen (and timed)
        assert gc.isenabled() is True
        assert len(pauses.pauses) == 1 and pauses.max_ms(0, float("inf")) >= 0
        assert pauses.max_ms(1e9, float("inf")) == 0.0  # a window with no pause
    finally:
        gc.unfreeze()
    assert records[-1] == [49_999]


def test_the_soak_reads_the_nodes_full_collections_from_its_metrics():
    """Per window, the node's full (generation 2) collections and their summed pause: the GC
    histogram's p99 over every generation (thousands of young collections) hid them."""
    import gc
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from prometheus_client import CollectorRegistry, generate_latest

    from engine.suite.load_suites import _full_passes, _metrics_page, _parse_page
    from telemetry.runtime import GcPauses

    pauses = GcPauses().install()
    try:
        gc.collect(0)
        gc.collect()
        gc.collect()
    finally:
        pauses.remove()
    registry = CollectorRegistry()
    registry.register(pauses)
    body = generate_latest(registry)  # the node's own exposition of loom_gc_pause_seconds

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        buckets, full, _node = _parse_page(_metrics_page(f"http://127.0.0.1:{server.server_port}"))
    finally:
        server.shutdown()
        server.server_close()
    assert full[0] == 2 and 0 < full[1] == pauses.sums[2], full  # the two full passes
    assert buckets[float("inf")] == 3  # the histogram over every generation, as before
    count, seconds = _full_passes([(1.0, 0.25), (3.0, 0.75)])
    assert count == 2 and seconds == 0.5
    assert _full_passes([None, full]) is None and _full_passes([full]) is None  # a failed scrape
