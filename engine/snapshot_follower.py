"""The node's side of the snapshotter (engine/snapshotter.py): start it, tell it how far the
journal is durable, ask it for a snapshot at a batch boundary, read its report.

The order path pays one small write to a pipe per request (non-blocking: a snapshotter that
stopped reading fails the request rather than stall the node). A snapshotter that died is
started again, at most once per RESPAWN_EVERY_S; a request it cannot serve (it died, or
reported an error) ends its SnapshotJob with an error, which the node counts and logs as any
failed snapshot: the previous snapshot stands.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import msgspec

import engine
from engine.snapshot_child import SnapshotJob, written_of

log = logging.getLogger("loom.snapshots")

FOLLOW_EVERY_S = 0.2  # how often the snapshotter is told the durable seq between requests
RESPAWN_EVERY_S = 5.0
MAX_LINE = 1 << 16


class SnapshotFollower:
    def __init__(self, data_dir: Path, clock=time.monotonic) -> None:
        self.data_dir = Path(data_dir)
        self._clock = clock
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0  # snapshotters started after the first
        self._started_at = -RESPAWN_EVERY_S
        self._told = 0  # the last durable seq sent
        self._told_at = 0.0
        self._buf = b""
        self._job: SnapshotJob | None = None
        self.ready_seq: int | None = None  # where it started from, once loaded

    # -- the process ---------------------------------------------------------------------------

    def _running(self) -> subprocess.Popen[bytes]:
        """The process started last (callers have started one)."""
        if self.proc is None:
            raise OSError("no snapshotter was started")
        return self.proc

    def _pipes(self) -> tuple[IO[bytes], IO[bytes]]:
        """Its stdin and stdout (both are pipes: see start)."""
        proc = self._running()
        assert proc.stdin is not None and proc.stdout is not None
        return proc.stdin, proc.stdout

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start a snapshotter (a fresh interpreter: nothing of this heap is shared). Raises
        OSError when it cannot be started."""
        if self.proc is not None:
            self.restarts += 1
        self._started_at = self._clock()
        self._told, self._buf, self.ready_seq = 0, b"", None
        pid = str(os.getpid())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine.snapshotter", "--data-dir", str(self.data_dir), "--parent", pid],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,  # not the data dir's LOCK, nor a socket
            env=_same_code_env(),
        )
        for pipe in self._pipes():
            os.set_blocking(pipe.fileno(), False)

    def _ensure(self) -> None:
        """A snapshotter that died is started again (not more often than RESPAWN_EVERY_S)."""
        if self.alive():
            return
        if self.proc is not None:
            code = self.proc.poll()
            self._drop()
            # One that died before it was ready (a crash loop: say an unreadable snapshot)
            # is started again only after a pause; one that had been working, at once.
            if self.ready_seq is None and self._clock() - self._started_at < RESPAWN_EVERY_S:
                raise OSError(f"the snapshotter {how_it_ended_code(code)}; starting again shortly")
            log.warning("the snapshotter %s; starting another", how_it_ended_code(code))
        self.start()

    def _drop(self) -> None:
        for pipe in self._pipes():
            with contextlib.suppress(OSError):
                pipe.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Close its stdin (it exits once done with what it was asked), then wait; killed if
        it does not end in `timeout`."""
        if self.proc is None:
            return
        proc, (stdin, stdout) = self.proc, self._pipes()
        with contextlib.suppress(OSError):
            stdin.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(OSError):
            stdout.close()
        self.proc = None

    # -- requests ------------------------------------------------------------------------------

    def _send(self, fields: dict) -> None:
        line = msgspec.json.encode(fields) + b"\n"
        try:
            sent = os.write(self._pipes()[0].fileno(), line)
        except BlockingIOError:
            sent = 0
        except BrokenPipeError as exc:
            raise OSError(f"the snapshotter is gone ({exc})") from None
        if sent != len(line):  # it stopped reading: never wait on it here
            self._running().kill()
            raise OSError("the snapshotter is not reading its requests; restarting it")

    def follow(self, durable_seq: int) -> None:
        """Tell it how far the journal is durable (throttled; called on the node's timer).
        Starts a snapshotter that died."""
        if self._job is None:
            self._read_report()  # its "ready" line
        if self._job is None and not self.alive():
            try:
                self._ensure()
            except OSError:  # died again within RESPAWN_EVERY_S: tried on a later call
                return
        if durable_seq <= self._told or self._clock() - self._told_at < FOLLOW_EVERY_S:
            return
        try:
            self._send({"upto": durable_seq})
        except OSError as exc:
            log.warning("%s", exc)
            return
        self._told, self._told_at = durable_seq, self._clock()

    def request(self, seq: int) -> SnapshotJob:
        """Ask for a snapshot at `seq` (durable and applied: a batch boundary). Raises OSError
        when the snapshotter cannot be asked."""
        started = time.perf_counter()
        self._ensure()
        self._send({"upto": seq, "snapshot": True})
        self._told = max(self._told, seq)
        pid = self._running().pid
        job = self._job = SnapshotJob(pid, seq, time.perf_counter() - started, writer="follower")
        return job

    def poll(self, job: SnapshotJob, block: bool = False) -> bool:
        """Read its report for `job` (or wait for it, with `block`); True once finished, with
        `written` or `error` set."""
        if job.finished:
            return True
        while True:
            report = self._read_report()
            if report is not None:
                return self._finish(job, report)
            if not self.alive():
                report = self._read_report()  # its last words, if any
                code = self.proc.poll() if self.proc is not None else None
                if report is None:
                    job.unanswered = True
                    report = {"error": f"the snapshotter {how_it_ended_code(code)} without a report"}
                return self._finish(job, report)
            if not block:
                return False
            select.select([self._pipes()[1]], [], [], 0.05)

    def _read_report(self) -> dict | None:
        if self.proc is None:
            return None
        while b"\n" not in self._buf:
            try:
                chunk = os.read(self._pipes()[1].fileno(), MAX_LINE)
            except BlockingIOError:
                return None
            except (OSError, ValueError):
                return None
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            fields = msgspec.json.decode(line)
        except msgspec.DecodeError:
            return {"error": f"unreadable report {line[:80]!r}"}
        if "ready" in fields:
            self.ready_seq = fields["ready"]
            return self._read_report()
        return fields

    def _finish(self, job: SnapshotJob, fields: dict) -> bool:
        job.finished = True
        self._job = None
        if "path" in fields and fields.get("seq") == job.seq:
            job.written = written_of(fields)
        else:
            job.error = fields.get("error") or f"a report for seq {fields.get('seq')}, not {job.seq}"
        return True


def _same_code_env() -> dict[str, str]:
    """The environment with this package's directory first on the path: the snapshotter
    runs the node's code whatever the working directory (a checkout, an install)."""
    root = str(Path(engine.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def how_it_ended_code(code: int | None) -> str:
    """'exited with 1' / 'was killed by SIGKILL' from a Popen returncode."""
    if code is None:
        return "stopped answering"
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with {code}"
