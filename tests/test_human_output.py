"""Long commands show progress, and times are for people (issue 14): `loom bench ...` and
`loom load` draw a progress bar on a terminal (a real pseudo-terminal here) and never with
--json or into a pipe; `loom trace` prints ISO 8601 UTC times and durations in µs/ms/s,
not raw nanoseconds."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

from engine.bench.workload import INSTRUMENT, generate
from engine.cli import iso_utc
from engine.core.stage_timings import duration_text, format_stages
from engine.exchange import ExchangeNode, NodeConfig

REPO = Path(__file__).resolve().parents[1]
RAW_NS = re.compile(r"\b1\d{18}\b")  # a nanosecond timestamp of this century


def on_a_terminal(*args: str, timeout: float = 120) -> str:
    """Run `loom ARGS` with stdout on a pseudo-terminal; everything it drew there."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", *args], cwd=REPO, stdout=slave, stderr=subprocess.PIPE
    )
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=30) == 0, proc.stderr.read().decode()
    return out.decode(errors="replace")


def piped(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


BENCH = ("bench", "engine", "--ops", "20000", "--repeat", "2")


def test_bench_draws_a_progress_bar_on_a_terminal():
    drawn = on_a_terminal(*BENCH)
    assert "passes over 20,000 ops" in drawn and "━" in drawn  # the bar
    assert "3/3" in drawn  # two throughput passes and the timed one
    assert "engine bench (deep, seed 1): 20,000 ops" in drawn  # and the report after it


def test_no_bar_with_json_or_into_a_pipe():
    assert "━" not in on_a_terminal(*BENCH, "--json")
    json.loads(on_a_terminal(*BENCH, "--json").strip().splitlines()[-1])
    out = piped(*BENCH)
    assert "passes over" not in out and "━" not in out and "\x1b[" not in out


def test_load_draws_a_progress_bar_on_a_terminal():
    drawn = on_a_terminal("load", "--protocol", "binary", "--rate", "200", "--duration", "1")
    assert "binary load: orders sent" in drawn and "━" in drawn
    assert "acked 200" in drawn


def test_durations_and_times_read_as_people_write_them():
    assert duration_text(850) == "850 µs"
    assert duration_text(42.5) == "42.5 µs"
    assert duration_text(12_400) == "12.40 ms"
    assert duration_text(2_100_000) == "2.10 s"
    assert iso_utc(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456Z"
    stages = {"receive_to_sequenced_us": 12.0, "journal_us": 1450.0, "match_us": 3.5, "ack_us": 80.0}
    assert format_stages({**stages, "batch_commands": 7}) == (
        "receive->sequenced 12.0 µs, journal 1.45 ms, match 3.5 µs, ack 80.0 µs (batch of 7)"
    )


def test_trace_prints_iso_times_and_durations_not_nanoseconds(tmp_path):
    node = ExchangeNode(NodeConfig(tmp_path, (INSTRUMENT,), snapshot_every_commands=0, snapshot_every_s=0))
    try:
        commands = generate(200, seed=3).commands
        for i in range(0, len(commands), 20):
            node.submit(commands[i : i + 20])
        order_id = node.engine.next_order_id - 1
    finally:
        node.close()
    out = piped("trace", str(order_id), "--data-dir", str(tmp_path))
    events = [line for line in out.splitlines() if line.startswith("  seq ")]
    assert events, out
    for line in events:
        assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line), line
    assert not RAW_NS.search(out), out
    # --json keeps the raw figures for programs
    raw = json.loads(piped("trace", str(order_id), "--data-dir", str(tmp_path), "--json"))
    assert isinstance(raw["events"][0]["ts"], int)
