"""A broken stdout or stderr never stops the drain (issue 11, README "Running it").

A real `loom run --demo` (traders keep orders in flight) whose stdout, stderr or both are
pipes that the reader closes once the node is ready (a log shipper that died). SIGTERM
must still commit what is queued, take the final snapshot and exit 0, with no traceback
and no exit-time flush error (Python exits 120 when it cannot flush stdout at exit).
"""

from __future__ import annotations

import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_app_run import NO_LISTENERS, READY_RE, REPO, STARTUP_S, clean_env, get_json, wait_ready
from waiting import wait_until

from engine.journal.segments import scan
from engine.snapshots import SnapshotStore


def read_until_ready(proc: subprocess.Popen) -> tuple[int, list[str]]:
    """Read stdout lines (with a deadline, not a fixed sleep) up to the readiness line."""
    lines: list[str] = []
    buf = b""
    deadline = time.monotonic() + STARTUP_S
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=deadline - time.monotonic()):
                continue
            chunk = proc.stdout.read1(65536)
            if not chunk:
                raise AssertionError(f"loom run exited ({proc.wait()}) before it was ready: {lines}")
            buf += chunk
            *done, buf = buf.split(b"\n")
            for raw in done:
                line = raw.decode()
                lines.append(line)
                m = READY_RE.search(line)
                if m:
                    return int(m.group(2)), lines
    raise AssertionError(f"no readiness line in {STARTUP_S} s: {lines}")


@pytest.mark.parametrize("closed", ["stdout", "stderr", "both"])
def test_sigterm_drains_with_a_closed_log_pipe(tmp_path: Path, closed: str) -> None:
    data = tmp_path / "data"
    err_file = tmp_path / "stderr.log"
    argv = [sys.executable, "-m", "engine.cli", "run", "--demo", "--rate", "400", "--data-dir", str(data)]
    with open(err_file, "wb") as err_sink:
        proc = subprocess.Popen(
            [*argv, *NO_LISTENERS],
            cwd=REPO,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=err_sink if closed == "stdout" else subprocess.PIPE,
        )
    try:
        port, _ = read_until_ready(proc)
        base = f"http://127.0.0.1:{port}"
        start = wait_ready(base)["seq"]
        # Orders are flowing before the pipe goes.
        wait_until("demo orders", lambda: get_json(f"{base}/readyz")[1]["seq"] > start + 50, timeout=30)
        if closed in ("stdout", "both"):
            proc.stdout.close()
        if closed in ("stderr", "both"):
            proc.stderr.close()
        seen = get_json(f"{base}/readyz")[1]["seq"]
        proc.send_signal(signal.SIGTERM)
        if closed == "stderr":  # stdout still read: the last word is there
            rest = proc.stdout.read().decode()
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert code == 0, (code, err_file.read_text(errors="replace")[-3000:] if closed == "stdout" else "")
    if closed == "stdout":
        log = err_file.read_text(errors="replace")
        assert "Traceback" not in log and "BrokenPipeError" not in log, log[-3000:]
        assert "final snapshot at seq" in log
    if closed == "stderr":
        assert "loom: shutting down" in rest and "loom: stopped at seq" in rest, rest
    # The queued commands were committed and applied, the final snapshot covers all of
    # them, and the journal is whole.
    report = scan(data / "journal")
    assert report.damage is None and report.torn_tail_bytes == 0
    assert report.last_seq >= seen
    store = SnapshotStore(data / "snapshots")
    final = store.list()[-1]
    assert final.seq == report.last_seq
    assert store.verify(final).seq == report.last_seq
