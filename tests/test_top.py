"""`loom top` (issue 14): a live view of a running node, built from its /metrics and
/v1/trades. Checked on a real demo node with --once --json (two samples apart), the quantile
arithmetic on its own, and a node that is not there (exit 2, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from loomproc import loom_run

from engine.top import quantile

REPO = Path(__file__).resolve().parents[1]
INF = float("inf")


def loom_top(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "engine.cli", "top", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)


def test_top_shows_the_flow_latency_and_books_of_a_running_demo(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    args = ["--demo", "--rate", "500", "--data-dir", str(tmp_path / "data"), "--http-port", "0"]
    with loom_run([*args, "--fix-port", "-1", "--binary-port", "-1"], env) as base:
        done = loom_top("--url", base, "--once", "--json", "--interval", "1")
        assert done.returncode == 0, done.stderr
        frame = json.loads(done.stdout)
        assert frame["ready"] and frame["seq"] > 0
        assert frame["orders_per_s"] > 0 and frame["commands_per_s"] >= frame["orders_per_s"]
        assert 0 < frame["ack_p50_us"] <= frame["ack_p99_us"]
        assert frame["commit_backlog"] >= 0
        assert set(frame["symbols"]) == {"BTC-USD", "ETH-USD", "LOOM-USD"}
        btc = frame["symbols"]["BTC-USD"]
        assert btc["bid"] < btc["ask"] and btc["open_orders"] > 0
        assert all(t["symbol"] == "BTC-USD" for t in btc["trades"])
        text = loom_top("--url", base, "--once", "--interval", "0.5")
        assert text.returncode == 0, text.stderr
        assert "orders/s" in text.stdout and "ack p50" in text.stdout and "LOOM-USD" in text.stdout


def test_quantiles_come_from_the_buckets_observed_between_two_scrapes():
    before = {0.001: 5.0, 0.002: 5.0, 0.005: 5.0, INF: 5.0}
    after = {0.001: 15.0, 0.002: 25.0, 0.005: 105.0, INF: 105.0}  # 10, 10, 80 new, in three buckets
    assert quantile(0.1, before, after) == pytest.approx(0.001)
    assert quantile(0.5, before, after) == pytest.approx(0.002 + 0.003 * (50 - 20) / 80)
    assert quantile(0.99, before, after) == pytest.approx(0.002 + 0.003 * (99 - 20) / 80)
    assert quantile(0.5, after, after) is None  # nothing observed in between


def test_a_node_that_does_not_answer_is_a_clear_error():
    done = loom_top("--url", "http://127.0.0.1:9", "--once", "--interval", "0.1")
    assert done.returncode == 2 and "no node answers at http://127.0.0.1:9" in done.stderr
    assert "Traceback" not in done.stderr
