"""`loom run` as a real process: start-up (READY line, /readyz), the demo flow moving the
book, SIGTERM (clean exit, final snapshot), a restart that recovers from that snapshot with
nothing to replay, and configuration errors (exit 2 with a message, no traceback).

Nothing sleeps for a fixed time: every wait polls with a deadline. Every process is killed
in a finally block if it is still running.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from waiting import wait_until

from engine.config import DEMO_KEYS
from engine.demo import DEMO_INSTRUMENTS
from engine.journal.segments import scan
from engine.snapshots import SnapshotStore

REPO = Path(__file__).resolve().parents[1]
STARTUP_S = 60.0
READY_RE = re.compile(r"^loom: ready on (\S+) \((?:.*?\b)?http (\d+)\b")
STOPPED_RE = re.compile(r"^loom: stopped at seq (\d+)$", re.M)
RECOVERED_RE = re.compile(
    r"recovered to seq (\d+) \((?P<source>\w+) snapshot (\d+), (\d+) commands replayed, state hash (\w+)"
)
NO_LISTENERS = ["--http-port", "0", "--fix-port", "-1", "--binary-port", "-1"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    env.update(extra)
    return env


class Loom:
    """`python -m engine.cli run ...`: stdout read line by line on a thread (so a wait
    has a deadline), stderr (the log) to a file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "run", *args],
            cwd=REPO,
            env=env or clean_env(),
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_line(self, pattern: re.Pattern, timeout: float = STARTUP_S) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines:
                m = pattern.search(line)
                if m:
                    return m
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern.pattern!r} in {timeout} s:\n{self.output()}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(
                    f"loom exited ({self.proc.wait()}) before {pattern.pattern!r}:\n{self.output()}"
                )
            self.lines.append(line)

    def wait_exit(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(10)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return code

    def stdout(self) -> str:
        return "\n".join(self.lines)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def output(self) -> str:
        return f"--- stdout\n{self.stdout()}\n--- stderr\n{self.log()[-4000:]}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._log.close()
        self._reader.join(10)
        # A reader still blocked means something else holds the pipe open (a helper process
        # that outlived the node): closing would wait for the reader's lock forever.
        if self.proc.stdout is not None and not self._reader.is_alive():
            self.proc.stdout.close()


def get_json(url: str, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_ready(base: str) -> dict:
    def ready():
        try:
            status, body = get_json(f"{base}/readyz")
        except (urllib.error.URLError, ConnectionError):
            return None
        return body if status == 200 else None

    return wait_until("/readyz 200", ready, timeout=STARTUP_S)


def instruments_toml() -> str:
    return "\n".join(
        f'[[instruments]]\nsymbol = "{i.symbol}"\ntick_size = {i.tick_size}\nlot_size = {i.lot_size}\n'
        f"min_qty = {i.min_qty}\nmax_qty = {i.max_qty}\n"
        for i in DEMO_INSTRUMENTS
    )


# -- the demo node: run, stop, recover --------------------------------------------------------


def test_demo_run_sigterm_final_snapshot_and_recovery(tmp_path):
    data = tmp_path / "data"
    first = Loom(["--demo", "--rate", "500", "--data-dir", str(data), *NO_LISTENERS], tmp_path / "first.log")
    try:
        ready = first.wait_line(READY_RE)
        assert re.search(r"event loop: uvloop \d", first.log()), first.output()
        assert ready.group(1) == "127.0.0.1"
        port = int(ready.group(2))
        assert port > 0
        base = f"http://127.0.0.1:{port}"
        first.wait_line(re.compile(r"^loom: demo accounts: .*alice="))
        start_seq = wait_ready(base)["seq"]

        # The demo flow moves the book and the tape.
        def moved():
            status, book = get_json(f"{base}/v1/book/BTC-USD")
            assert status == 200, book
            status, trades = get_json(f"{base}/v1/trades/BTC-USD")
            assert status == 200, trades
            return (book, trades) if book["seq"] > start_seq + 200 and trades["trades"] else None

        book, trades = wait_until("the demo flow to trade", moved)
        assert book["bids"] or book["asks"]
        if book["bids"] and book["asks"]:
            assert book["bids"][0][0] < book["asks"][0][0]  # never crossed
        assert all(t["symbol"] == "BTC-USD" and t["qty"] > 0 for t in trades["trades"])
        # The demo accounts can use the API.
        key = next(k for k, account in DEMO_KEYS.items() if account == "alice")
        assert get_json(f"{base}/v1/orders", {"X-API-Key": key}) == (200, {"orders": []})
        last_seen = get_json(f"{base}/readyz")[1]["seq"]
        assert last_seen > start_seq

        first.proc.send_signal(signal.SIGTERM)
        assert first.wait_exit() == 0, first.output()
        stopped = STOPPED_RE.search(first.stdout())
        assert stopped, first.output()
        final_seq = int(stopped.group(1))
        assert final_seq >= last_seen
        assert "Traceback" not in first.log()
    finally:
        first.close()

    # A final snapshot at exactly that seq; the journal ends there too.
    store = SnapshotStore(data / "snapshots")
    snapshots = store.list()
    assert snapshots and snapshots[-1].seq == final_seq
    final = store.verify(snapshots[-1])
    assert final.seq == final_seq
    expected_book = {
        side: [list(level) for level in getattr(final.engine.books["BTC-USD"], side).depth(20)]
        for side in ("bids", "asks")
    }
    assert expected_book["bids"] or expected_book["asks"]
    assert scan(data / "journal").last_seq == final_seq

    # Restart (without the demo traders, so nothing moves): recovered from the snapshot with
    # nothing to replay, to the same seq and state.
    config = tmp_path / "loom.toml"
    config.write_text(instruments_toml())
    # On asyncio's own event loop this time (the first run had the default, uvloop).
    second = Loom(
        ["--config", str(config), "--data-dir", str(data), "--event-loop", "asyncio", *NO_LISTENERS],
        tmp_path / "second.log",
    )
    try:
        port = int(second.wait_line(READY_RE).group(2))
        base = f"http://127.0.0.1:{port}"
        assert wait_ready(base)["seq"] == final_seq
        recovered = RECOVERED_RE.search(second.log())
        assert recovered, second.output()
        assert int(recovered.group(1)) == final_seq
        assert "event loop: asyncio" in second.log()
        assert recovered["source"] == "local"  # a standalone node's own snapshot directory
        assert int(recovered.group(3)) == final_seq  # from the final snapshot
        assert int(recovered.group(4)) == 0  # no replay needed
        assert final.state_hash.startswith(recovered.group(5))
        # The book served is the book of the final snapshot.
        status, book = get_json(f"{base}/v1/book/BTC-USD?depth=20")
        assert status == 200 and book["seq"] == final_seq
        assert {"bids": book["bids"], "asks": book["asks"]} == expected_book

        second.proc.send_signal(signal.SIGTERM)
        assert second.wait_exit() == 0, second.output()
        assert int(STOPPED_RE.search(second.stdout()).group(1)) == final_seq
    finally:
        second.close()
    # Nothing happened, so no new snapshot was needed.
    assert [s.seq for s in store.list()] == [s.seq for s in snapshots]


def test_sigterm_while_starting_up_or_idle_exits_cleanly(tmp_path):
    """A node with no traffic: SIGTERM right after READY, exit 0, stopped at the seq it
    started with (the instrument listings), snapshot taken because that is past the last one."""
    config = tmp_path / "loom.toml"
    config.write_text(instruments_toml())
    loom = Loom(
        ["--config", str(config), "--data-dir", str(tmp_path / "data"), *NO_LISTENERS], tmp_path / "log"
    )
    try:
        port = int(loom.wait_line(READY_RE).group(2))
        seq = wait_ready(f"http://127.0.0.1:{port}")["seq"]
        # One ListInstrument command each, then the credit switch (credit_checks, default on).
        assert seq == len(DEMO_INSTRUMENTS) + 1
        loom.proc.send_signal(signal.SIGTERM)
        assert loom.wait_exit() == 0, loom.output()
        assert int(STOPPED_RE.search(loom.stdout()).group(1)) == seq
    finally:
        loom.close()
    assert [s.seq for s in SnapshotStore(tmp_path / "data" / "snapshots").list()] == [seq]


# -- configuration errors: exit 2, a message, no traceback -------------------------------------


def run_loom(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "run", *args],
        cwd=REPO,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=STARTUP_S,
    )


def assert_config_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert "loom: ready" not in result.stdout
    assert result.stderr.startswith("loom run: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::"])
def test_a_public_host_needs_loom_allow_public_bind(tmp_path, host):
    result = run_loom(["--demo", "--host", host, "--data-dir", str(tmp_path / "data"), *NO_LISTENERS])
    assert_config_error(result, repr(host), "not a loopback address", "LOOM_ALLOW_PUBLIC_BIND")
    assert not (tmp_path / "data").exists()  # refused before touching anything
    # The same through the environment.
    result = run_loom(
        ["--demo", "--data-dir", str(tmp_path / "data"), *NO_LISTENERS], clean_env(LOOM_HOST=host)
    )
    assert_config_error(result, "LOOM_ALLOW_PUBLIC_BIND")


BAD_CONFIGS = [
    pytest.param('http_port = 80\nhost = "127.0.0.1\n', "is not valid TOML", id="unterminated-string"),
    pytest.param("[[instruments]\nsymbol = 1\n", "is not valid TOML", id="bad-table-header"),
    pytest.param("http_port = = 1\n", "is not valid TOML", id="double-equals"),
    pytest.param("\x00\x01binary", "is not valid TOML", id="binary"),
    pytest.param("colour = 'blue'\n", "unknown setting 'colour'", id="unknown-setting"),
    pytest.param(
        '[[instruments]]\nsymbol = "X"\ntick_size = 0\n', "bad [[instruments]] entry", id="bad-instrument"
    ),
    pytest.param('[[accounts]]\nname = "a"\n', "needs name and api_key", id="account-without-key"),
    pytest.param('http_port = "eighty"\n', "'http_port'", id="port-not-a-number"),
    pytest.param('fsync = "no"\n', "'fsync'", id="fsync-string"),
    pytest.param("snapshots = 5\n", "'snapshots'", id="snapshots-not-a-table"),
    pytest.param('[snapshots]\nkeep = "many"\n', "'snapshots'", id="snapshots-keep-not-a-number"),
    pytest.param("accounts = 5\n", "'accounts'", id="accounts-not-a-list"),
]


@pytest.mark.parametrize(("text", "message"), BAD_CONFIGS)
def test_a_bad_config_file_exits_2_naming_the_file(tmp_path, text, message):
    config = tmp_path / "my-loom.toml"
    config.write_text(text)
    result = run_loom(
        ["--demo", "--config", str(config), "--data-dir", str(tmp_path / "data"), *NO_LISTENERS]
    )
    assert_config_error(result, str(config), message)
    # LOOM_CONFIG names the file the same way.
    result = run_loom(
        ["--demo", "--data-dir", str(tmp_path / "data"), *NO_LISTENERS], clean_env(LOOM_CONFIG=str(config))
    )
    assert_config_error(result, str(config), message)


def test_other_startup_errors_exit_2(tmp_path):
    missing = tmp_path / "nowhere.toml"
    assert_config_error(
        run_loom(["--config", str(missing), "--data-dir", str(tmp_path / "d"), *NO_LISTENERS]),
        "config file not found",
        str(missing),
    )
    assert_config_error(
        run_loom(["--data-dir", str(tmp_path / "d"), *NO_LISTENERS]), "no instruments configured"
    )
    assert_config_error(
        run_loom(["--demo", "--data-dir", str(tmp_path / "d")], clean_env(LOOM_HTTP_PORT="eighty")),
        "LOOM_HTTP_PORT='eighty'",
    )


def test_a_port_in_use_or_a_locked_data_dir_exits_2_with_a_message(tmp_path):
    import socket

    from engine.exchange import lock_data_dir

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_loom(
            ["--demo", "--data-dir", str(tmp_path / "d"), *NO_LISTENERS, "--http-port", str(port)]
        )
    # Recovery already ran (its log lines come first); the refusal is the last word.
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-2:]
    assert last[0].startswith("loom run: cannot listen") and "address already in use" in last[0], last
    assert "--http-port" in last[1]
    # A second writer on the same data directory is refused before it recovers anything.
    held = lock_data_dir(tmp_path / "held")
    try:
        result = run_loom(["--demo", "--data-dir", str(tmp_path / "held"), *NO_LISTENERS, "--http-port", "0"])
        assert_config_error(result, "in use by pid", "another loom")
    finally:
        import os

        os.close(held)
