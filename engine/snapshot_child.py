"""Snapshots off the order path: a forked child writes the copy-on-write image of the
engine (as Redis's BGSAVE does), so the order path pays for the fork only.

Measured on an 800k-order book (BENCHMARKS.md): encoding inline takes ~1.1 s, encoding on a
thread holds the GIL about half as long (msgspec encodes in one C call), copying the state
first ~0.7 s; the fork copies the page tables, ~15-25 ms for an 800 MB node (keeping the heap
on huge pages made the fork cheaper but the order path slower: BENCHMARKS.md).

    parent (at a batch boundary)            child (a frozen image of the parent's memory)
    gc.disable(); pipe; fork ────────────▶  dies with the parent (PR_SET_PDEATHSIG)
    back to the order path                   closes every inherited fd but the pipe (the
                                             data dir's LOCK too: closing keeps the
                                             parent's flock, which is per open file)
                                             SCHED_IDLE: the order path keeps the CPU
                                             (unless the node waits for it: then the
                                             node's CPU is the child's)
                                             encode, write tmp, fsync, rename, fsync dir
    poll: waitpid(WNOHANG) ◀── report ────  one JSON line on the pipe; os._exit
    gc.enable(); prune, retention, upload

In the child: no logging (another thread may have held a logging lock at the fork), no
asyncio, no imports (the import lock), no gc (it would write to, and so copy, every page
of the heap). The parent disables its gc while the child runs for the same reason: a full
collection would copy the whole heap, page by page, on the order path.
"""

from __future__ import annotations

import gc
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from engine.core.matcher import MatchingEngine
from engine.procutil import die_with_parent, yield_cpu_to_the_node
from engine.snapshots import SnapshotStore, WrittenSnapshot

# Test hook: while the file this names exists, a snapshot child waits after creating its
# temporary file (deterministic tests of "the order path goes on while a snapshot is written").
HOLD_ENV = "LOOM_TEST_SNAPSHOT_HOLD"
_MAX_FD = os.sysconf("SC_OPEN_MAX")


class SnapshotWriteError(OSError):
    """A snapshot child failed (its error, or how it died). The previous snapshot stands."""


@dataclass
class SnapshotJob:
    """One snapshot being written by another process: a forked child, or the snapshotter
    (engine/snapshot_follower.py)."""

    pid: int
    seq: int
    capture_s: float  # the order path's pause: the fork, or the request to the snapshotter
    _fd: int = field(default=-1, repr=False)  # the fork's report pipe
    _gc_was_enabled: bool = field(default=False, repr=False)
    writer: str = "fork"  # or "follower"
    written: WrittenSnapshot | None = None
    error: str | None = None
    finished: bool = False
    unanswered: bool = False  # the writer ended without a report (killed, crashed)


def fork_snapshot(store: SnapshotStore, engine: MatchingEngine, awaited: bool = False) -> SnapshotJob:
    """Fork a child that writes `engine` as it is now. Call at a batch boundary, from the
    thread that lives as long as the process (the child's death signal is tied to it).

    `awaited`: the caller blocks until the child ends, so the child keeps the caller's
    priority. Yielding then gains the node nothing and makes it wait on CPU that any other
    process can take (a SCHED_IDLE child on a busy machine took ~1 s a snapshot)."""
    read_fd, write_fd = os.pipe()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    parent = os.getpid()
    started = time.perf_counter()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        if gc_was_enabled:
            gc.enable()
        raise
    if pid == 0:  # pragma: no cover (runs in the child, which never returns)
        _child(store, engine, write_fd, parent, awaited)
    capture_s = time.perf_counter() - started
    os.close(write_fd)
    return SnapshotJob(pid, engine.last_seq, capture_s, read_fd, gc_was_enabled)


def poll(job: SnapshotJob, block: bool = False) -> bool:
    """Reap the child if it has ended (or wait for it, with `block`); True once finished,
    with `written` or `error` set."""
    if job.finished:
        return True
    try:
        pid, status = os.waitpid(job.pid, 0 if block else os.WNOHANG)
    except ChildProcessError:  # reaped by someone else: the report still tells
        pid, status = job.pid, None
    if pid == 0:
        return False
    report = _read_all(job._fd)
    os.close(job._fd)
    job.finished = True
    if job._gc_was_enabled:
        gc.enable()
    try:
        fields = msgspec.json.decode(report) if report else {}
    except msgspec.DecodeError:
        fields = {"error": f"unreadable report {report[:80]!r}"}
    if "path" in fields:
        job.written = written_of(fields)
    else:
        job.error = fields.get("error") or f"the snapshot child {how_it_ended(status)} without a report"
        job.unanswered = not fields
    return True


def report_of(written: WrittenSnapshot) -> dict:
    """A written snapshot as its writer reports it (one JSON line); `written_of` reads it."""
    return {
        "path": str(written.path),
        "seq": written.seq,
        "state_hash": written.state_hash,
        "size": written.size,
        "duration_s": written.duration_s,
    }


def written_of(fields: dict) -> WrittenSnapshot:
    return WrittenSnapshot(
        Path(fields["path"]), fields["seq"], fields["state_hash"], fields["size"], fields["duration_s"]
    )


def how_it_ended(status: int | None) -> str:
    if status is None:
        return "ended"
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with {os.waitstatus_to_exitcode(status)}"


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def hold_if_asked(_tmp: Path) -> None:
    """The HOLD_ENV test hook (`before_write` of SnapshotStore.write_file)."""
    path = os.environ.get(HOLD_ENV)
    while path and os.path.exists(path):
        time.sleep(0.005)


def _child(store: SnapshotStore, engine: MatchingEngine, write_fd: int, parent: int, awaited: bool) -> None:
    """Write the snapshot, report on the pipe, and _exit: never returns to the caller."""
    code = 1
    try:
        die_with_parent(parent)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # not the parent's drain
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        os.closerange(3, write_fd)
        os.closerange(write_fd + 1, _MAX_FD)
        if not awaited:
            yield_cpu_to_the_node()
        try:
            written = store.write_file(engine, before_write=hold_if_asked)
            report = report_of(written)
            code = 0
        except BaseException as exc:  # reported, never raised into the parent's code
            report = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write_fd, msgspec.json.encode(report))
    finally:
        os._exit(code)
