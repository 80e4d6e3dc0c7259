"""The command-line defects of issue 14, each against the real `loom` (a subprocess):

- a port outside 0..65535 (--http-port 99999 listened on 34463, -5 was a traceback) is a
  clear error, exit 2;
- `loom snapshot take` on a running node's data directory points to POST /v1/admin/snapshot
  (it was a DataDirLocked traceback);
- `loom journal inspect|replay` and `loom trace` of a missing or empty path are an error,
  exit 2 (inspect said "integrity: ok"; replay and trace created the directory);
- `loom journal repair --yes` and `loom journal replay` without --read-only refuse a running
  node's data directory (they truncated its journal under it); inspect and
  `replay --read-only` still read it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from loomproc import loom_run

from engine.config import ConfigError, load_config
from engine.journal.segments import list_segment_files

REPO = Path(__file__).resolve().parents[1]
NO_LISTENERS = ["--http-port", "0", "--fix-port", "-1", "--binary-port", "-1"]
KEY = "cli-defects-trader-key-0"
CONFIG = f"""
[[instruments]]
symbol = "BTC-USD"
tick_size = 1
lot_size = 1
[[accounts]]
name = "trader"
api_key = "{KEY}"
"""


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}


def loom(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_clear_error(done: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 2, no traceback, and a message naming `words` on stderr."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    for word in words:
        assert word in done.stderr, (word, done.stderr)


# ---- ports ----


@pytest.mark.parametrize(
    "overrides",
    [
        {"http_port": 99999},
        {"http_port": 65536},
        {"http_port": -5},
        {"http_port": -1},  # -1 turns off FIX and binary only: REST is the node's health endpoint
        {"fix_port": 70000},
        {"fix_port": -2},
        {"binary_port": 65536},
    ],
)
def test_a_port_outside_0_to_65535_is_a_configuration_error(overrides):
    (name, value) = next(iter(overrides.items()))
    with pytest.raises(ConfigError, match=rf"{name} {value} .* is not a port: use 0\.\.65535"):
        load_config(None, env={}, **overrides)


def test_ports_within_range_and_off_are_accepted():
    cfg = load_config(None, env={}, http_port=65535, fix_port=-1, binary_port=0)
    assert (cfg.http_port, cfg.fix_port, cfg.binary_port) == (65535, -1, 0)


def test_a_port_from_the_environment_or_the_file_is_checked_too(tmp_path):
    with pytest.raises(ConfigError, match="fix_port 70000"):
        load_config(None, env={"LOOM_FIX_PORT": "70000"})
    config = tmp_path / "loom.toml"
    config.write_text("binary_port = 99999\n")
    with pytest.raises(ConfigError, match="binary_port 99999"):
        load_config(str(config), env={})


@pytest.mark.parametrize(
    "args",
    [
        ["--http-port", "99999"],  # listened on 34463
        ["--http-port", "-5"],  # a traceback
        ["--http-port", "99999", "--event-loop", "asyncio"],  # an OverflowError traceback
        ["--http-port", "0", "--fix-port", "70000"],  # listened on 4464
    ],
)
def test_loom_run_with_a_port_out_of_range_exits_2_naming_it(tmp_path, args):
    done = loom(
        "run", "--demo", "--data-dir", str(tmp_path / "data"), "--binary-port", "-1", *args, timeout=30
    )
    assert_clear_error(done, "is not a port", "0..65535")


# ---- a missing or empty path ----


@pytest.mark.parametrize(
    "command",
    [
        ["journal", "inspect", "{path}"],
        ["journal", "inspect", "{path}", "--json"],
        ["journal", "replay", "{path}"],
        ["journal", "replay", "{path}", "--read-only"],
        ["journal", "repair", "{path}", "--yes"],
        ["snapshot", "take", "{path}"],
        ["trace", "1", "--data-dir", "{path}"],
    ],
)
@pytest.mark.parametrize("kind", ["missing", "empty", "empty journal dir"])
def test_a_path_without_a_journal_is_an_error_and_is_left_as_it_was(tmp_path, command, kind):
    path = tmp_path / "data"
    if kind != "missing":
        path.mkdir()
    if kind == "empty journal dir":
        (path / "journal").mkdir()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    done = loom(*(part.format(path=path) for part in command))
    assert_clear_error(done, "no journal at", str(path))
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing created


# ---- a running node's data directory ----


@pytest.fixture
def running_node(tmp_path):
    """A real `loom run` with one order journaled; yields (data dir, base URL)."""
    config = tmp_path / "loom.toml"
    config.write_text(CONFIG)
    data = tmp_path / "data"
    env = clean_env()
    args = ["--config", str(config), "--data-dir", str(data), *NO_LISTENERS]
    with loom_run(args, env) as base:
        order = {"symbol": "BTC-USD", "side": "buy", "qty": 1, "price": 100, "client_order_id": "a"}
        body = json.dumps(order)
        request = urllib.request.Request(
            base + "/v1/orders",
            data=body.encode(),
            method="POST",
            headers={"X-API-Key": KEY, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status in (200, 201)
        yield data, base


def segment_bytes(data: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in list_segment_files(data / "journal")}


def test_snapshot_take_on_a_running_node_points_to_the_admin_api(running_node):
    data, _base = running_node
    snapshots = sorted((data / "snapshots").iterdir())
    done = loom("snapshot", "take", str(data))
    assert_clear_error(done, "in use by pid", "POST /v1/admin/snapshot")
    assert sorted((data / "snapshots").iterdir()) == snapshots


def test_repair_and_replay_refuse_a_running_node_while_inspect_reads_it(running_node):
    data, _base = running_node
    # What a scan sees while the node is in the middle of a write: a partial record at the
    # end of the active segment. A repair or a writable replay would cut it.
    active = list_segment_files(data / "journal")[-1]
    with open(active, "ab") as f:
        f.write(b"\x4c\x4f\x4f\x4d partial batch")
    before = segment_bytes(data)

    repair = loom("journal", "repair", str(data), "--yes")
    assert_clear_error(repair, "in use by pid", "stop the node to repair its journal")
    replay = loom("journal", "replay", str(data))
    assert_clear_error(replay, "in use by pid", "--read-only")
    assert segment_bytes(data) == before  # not a byte changed under the node

    inspect = loom("journal", "inspect", str(data), "--json")
    assert inspect.returncode == 0, inspect.stderr
    assert "torn tail" in json.loads(inspect.stdout)["verdict"]
    read_only = loom("journal", "replay", str(data), "--read-only", "--json")
    assert read_only.returncode == 0, read_only.stderr
    assert json.loads(read_only.stdout)["commands"] >= 1
    repair_plan = loom("journal", "repair", str(data))  # without --yes: only says what it would do
    assert repair_plan.returncode == 1, repair_plan.stdout
    assert segment_bytes(data) == before


def test_repair_and_replay_take_the_lock_of_a_stopped_node(tmp_path):
    """Offline, repair and replay still work: they hold the lock a node would take, and
    release it when done."""
    config = tmp_path / "loom.toml"
    config.write_text(CONFIG)
    data = tmp_path / "data"
    with loom_run(["--config", str(config), "--data-dir", str(data), *NO_LISTENERS], clean_env()):
        pass
    replay = loom("journal", "replay", str(data), "--json")
    assert replay.returncode == 0, replay.stderr
    take = loom("snapshot", "take", str(data))
    assert take.returncode == 0, take.stderr
    assert "snapshot" in take.stdout
