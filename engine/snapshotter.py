"""The snapshotter: a long-lived process that follows the node's journal with its own engine
and writes snapshots from its own memory, so the order path shares nothing with the write.

A forked child (engine/snapshot_child.py) costs the order path the fork (14-24 ms for an
850 MB node) and, for the child's whole life, memory bandwidth: CPython writes the reference
count of every object the child reads, so nearly every page of the heap is copied
(BENCHMARKS.md, sessions 4 and 5). This process is a fresh interpreter instead (started with
`python -m engine.snapshotter`, never forked from the node's heap):

    node (engine/snapshot_follower.py)          snapshotter (this module)
    spawn at start ──────────────────────────▶  newest valid snapshot, loaded and verified
                                                 dies with the node (PR_SET_PDEATHSIG);
                                                 SCHED_IDLE: the order path keeps the CPU
    {"upto": N} every ~0.2 s ───── stdin ────▶  replay the journal up to N (durable: the
                                                 node applied it after its fsync)
    {"upto": N, "snapshot": true} ───────────▶  replay up to N, write the snapshot at N
                                                 (SnapshotStore.write_file: tmp, fsync,
                                                 rename, fsync dir)
    poll: one JSON line ◀───── stdout ──────── {"path", "seq", "state_hash", "size",
                                                 "duration_s"} or {"seq", "error"}

It never takes the data dir's LOCK, never truncates or renames anything but its own
snapshot's temporary file, and replays through the core's SilentReplayer, as recovery
does: its snapshot at N is the node's state at N (the state hash says so, tests check).
Pruning, journal retention and the on_snapshot hook stay in the node.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import time
from pathlib import Path

import msgspec

from engine.core.matcher import MatchingEngine
from engine.core.replay import SilentReplayer
from engine.journal.tail import JournalTail
from engine.procutil import die_with_parent, yield_cpu_to_the_node
from engine.snapshot_child import hold_if_asked, report_of
from engine.snapshots import SnapshotStore

log = logging.getLogger("loom.snapshotter")


class Request(msgspec.Struct):
    upto: int
    snapshot: bool = False


class Follower:
    """The engine, kept at the journal's durable seq the node last named."""

    def __init__(self, data_dir: Path) -> None:
        self.store = SnapshotStore(data_dir / "snapshots")  # never pruned here: the node prunes
        # Never max_seq here: setting snapshots aside is the node's recovery's job.
        loaded = self.store.load_newest_valid()
        self.engine = loaded.engine if loaded is not None else MatchingEngine([])
        self.tail = JournalTail(data_dir / "journal", self.engine.last_seq + 1)
        self.replayer = SilentReplayer(self.engine)

    def follow(self, upto: int) -> None:
        apply = self.replayer.apply
        for batch in self.tail.batches(upto):
            apply(batch)

    def write(self, seq: int) -> dict:
        if self.engine.last_seq != seq:
            raise RuntimeError(f"the journal ends at seq {self.engine.last_seq}, not {seq}")
        return report_of(self.store.write_file(self.engine, before_write=hold_if_asked))


def _report(out, fields: dict) -> None:
    out.write(msgspec.json.encode(fields) + b"\n")
    out.flush()


def run(data_dir: Path, requests, out) -> int:
    """Follow until stdin closes (the node stopping). A snapshot that cannot be written is
    reported and the process goes on; a journal it cannot follow ends it (reported, if a
    snapshot was asked for): the node starts another one, which loads afresh."""
    started = time.perf_counter()
    follower = Follower(data_dir)
    gc.freeze()  # the loaded state is never garbage: the collector stops walking it
    _report(out, {"ready": follower.engine.last_seq, "load_s": round(time.perf_counter() - started, 3)})
    decode = msgspec.json.Decoder(Request).decode
    for line in requests:
        req = decode(line)
        try:
            follower.follow(req.upto)
        except Exception as exc:
            if req.snapshot:
                _report(out, {"seq": req.upto, "error": f"{type(exc).__name__}: {exc}"})
            raise
        if req.snapshot:
            try:
                report = follower.write(req.upto)
            except Exception as exc:  # the node counts it; the previous snapshot stands
                report = {"seq": req.upto, "error": f"{type(exc).__name__}: {exc}"}
            _report(out, report)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.snapshotter", description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--parent", type=int, required=True, help="the node's pid: die with it")
    args = ap.parse_args(argv)
    die_with_parent(args.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the node drains, then closes our stdin
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    yield_cpu_to_the_node()
    try:
        return run(args.data_dir, sys.stdin.buffer, sys.stdout.buffer)
    except BrokenPipeError:
        # The node is gone (it stopped, or failed to start, before reading us): nobody is
        # left to tell, and nothing was asked that a report could answer. Quiet, and no
        # second complaint when the interpreter flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # the node reads our exit (and logs this line)
        log.error("snapshotter stopped: %s: %s", type(exc).__name__, exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
