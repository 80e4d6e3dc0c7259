"""The snapshotter (engine/snapshotter.py): a process following the node's journal with its
own engine writes the snapshots; the node only asks (snapshot_writer = "follower").

Real processes throughout: the node starts `python -m engine.snapshotter`; tests kill it by
pid, hold it inside its write (LOOM_TEST_SNAPSHOT_HOLD) and compare its snapshots' state
hashes with the live engine's at the same seq.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path

from test_app_run import NO_LISTENERS, READY_RE, Loom, clean_env
from test_snapshot_child import (
    ADMIN_KEY,
    _node_config,
    _place,
    _post,
    _sample,
    alive,
    hold,  # noqa: F401 (a fixture)
    open_files,
    orders,
    snapshotter_pid,
)
from waiting import wait_until

from engine.bench.workload import INSTRUMENT, generate
from engine.core.state import state_hash
from engine.exchange import ExchangeNode, NodeConfig
from engine.service import ExchangeService
from engine.snapshots import SnapshotStore, decode_snapshot
from telemetry.metrics import ExchangeMetrics
from telemetry.observer import MetricsObserver


def follower_node(tmp_path: Path, **kw) -> ExchangeNode:
    kw.setdefault("snapshot_every_commands", 0)
    kw.setdefault("snapshot_every_s", 0)
    return ExchangeNode(NodeConfig(tmp_path / "data", (INSTRUMENT,), snapshot_writer="follower", **kw))


def test_the_snapshotters_snapshot_at_seq_n_has_the_live_state_hash_at_n(tmp_path):
    """A varied workload (fills, cancels, amends, rejects) over many small segments, with
    retention deleting the segments behind each snapshot as the snapshotter goes on."""
    commands = generate(3000, seed=7).commands
    node = follower_node(tmp_path, segment_bytes=16_384, journal_retention="delete")
    jobs = []
    node.snapshot_observer = jobs.append
    try:
        assert node.snapshotter is not None and alive(node.snapshotter.pid)
        written = []
        for first in range(0, len(commands), 50):
            batch = [
                type(c)(**{f: getattr(c, f) for f in c.__struct_fields__ if f not in ("seq", "ts")})
                for c in commands[first : first + 50]
            ]
            node.submit(batch)
            node.poll_snapshot()  # tells the snapshotter the durable seq, as the service's timer does
            if first % 600 == 0:
                snap = node.take_snapshot()
                assert (snap.seq, snap.state_hash) == (node.engine.last_seq, state_hash(node.engine))
                written.append(snap)
        assert len(written) == 5 and len(node.journal.segments) > 1
        assert node.retention.deleted_segments > 0  # segments it had read were deleted meanwhile
        assert {j.writer for j in jobs} == {"follower"} and node.snapshot_failures == 0
        # The node's side is one write to a pipe; the write itself happened in the snapshotter.
        assert all(j.pid == node.snapshotter.pid != os.getpid() for j in jobs)
        loaded = decode_snapshot(written[-1].path.read_bytes())
        assert loaded.state_hash == written[-1].state_hash
    finally:
        node.close()
    assert node.snapshotter.proc is None  # stopped with the node


def test_a_killed_snapshotter_is_started_again_and_the_next_snapshot_succeeds(tmp_path):
    node = follower_node(tmp_path)
    try:
        for i in range(0, 100, 10):
            node.submit(orders(i, 10))
        first = node.take_snapshot()
        pid = node.snapshotter.pid
        os.kill(pid, signal.SIGKILL)
        wait_until("the snapshotter to die", lambda: not alive(pid), timeout=30)
        node.submit(orders(100, 10))
        node.poll_snapshot()  # finds it gone: starts another
        assert node.snapshotter.restarts == 1 and node.snapshotter.pid != pid
        written = node.take_snapshot()
        assert written.seq == node.engine.last_seq > first.seq
        assert written.state_hash == state_hash(node.engine)
        assert node.snapshot_failures == 0
    finally:
        node.close()


def test_a_snapshotter_killed_mid_snapshot_fails_that_one_and_the_previous_stands(tmp_path, hold):  # noqa: F811
    node = follower_node(tmp_path, snapshot_every_commands=60)
    for i in range(0, 50, 10):
        node.submit(orders(i, 10))
    previous = node.take_snapshot()
    metrics = ExchangeMetrics()
    service = ExchangeService(node, observer=MetricsObserver(metrics))
    hold.touch()

    async def scenario() -> None:
        service.start()
        try:
            for i in range(50, 120, 10):  # a scheduled snapshot is asked for on the way
                await service.submit(orders(i, 10))
            job = node._snapshot_job
            assert job is not None and job.writer == "follower"
            tmp = node.snapshots.directory / f"snapshot-{job.seq:020d}.snap.tmp"
            wait_until("the snapshotter to create its temporary file", tmp.exists, timeout=30)
            for i in range(120, 160, 10):  # acknowledged while it is held in its write
                assert all(await service.submit(orders(i, 10)))
            os.kill(job.pid, signal.SIGKILL)
            while node.snapshot_in_flight:  # reaped by the service's timer
                await asyncio.sleep(0.01)
            assert node.snapshot_failures == 1 and "SIGKILL" in node.last_snapshot_error
            while _sample(metrics.snapshot_failures, "_total") != 1:
                await asyncio.sleep(0.01)
            assert node.last_snapshot == previous
            hold.unlink()
            written = await node.take_snapshot_async()  # a new snapshotter writes it
            assert (written.seq, written.state_hash) == (node.engine.last_seq, state_hash(node.engine))
            assert node.snapshotter.restarts == 1
        finally:
            await service.stop()

    asyncio.run(asyncio.wait_for(scenario(), 120))
    node.close()
    store = SnapshotStore(tmp_path / "data" / "snapshots")
    assert [s.seq for s in store.list()] == [previous.seq, node.last_snapshot.seq]
    assert not list(store.directory.glob("*.tmp"))


def test_the_drain_snapshot_falls_back_to_a_fork_when_the_snapshotter_dies(tmp_path, hold):  # noqa: F811
    node = follower_node(tmp_path)
    jobs = []
    node.snapshot_observer = jobs.append
    try:
        for i in range(0, 60, 10):
            node.submit(orders(i, 10))
        hold.touch()
        result = {}
        taking = threading.Thread(target=lambda: result.update(w=node.take_snapshot()))
        taking.start()
        tmp = node.snapshots.directory / f"snapshot-{node.engine.last_seq:020d}.snap.tmp"
        wait_until("the snapshotter to create its temporary file", tmp.exists, timeout=30)
        os.kill(node.snapshotter.pid, signal.SIGKILL)
        # follower start, follower end, fork start
        wait_until("the fallback fork to start", lambda: len(jobs) >= 3, timeout=30)
        hold.unlink()
        taking.join(60)
        written = result["w"]
        assert (written.seq, written.state_hash) == (node.engine.last_seq, state_hash(node.engine))
        assert [j.writer for j in {id(j): j for j in jobs}.values()] == ["follower", "fork"]
        assert node.snapshot_failures == 1  # the snapshotter's attempt, counted as any failure
    finally:
        node.close()


def test_loom_run_uses_the_snapshotter_which_takes_no_lock_and_comes_back_after_a_kill(tmp_path):
    data = tmp_path / "data"
    args = ["--config", str(_node_config(tmp_path, "follower")), "--data-dir", str(data), *NO_LISTENERS]
    node = Loom(args, tmp_path / "node.log", clean_env())
    try:
        base = f"http://127.0.0.1:{node.wait_line(READY_RE).group(2)}"
        pid = wait_until("the snapshotter to start", lambda: snapshotter_pid(node.proc.pid), timeout=30)
        # Read-only beside the node: it holds no descriptor of the data dir's LOCK (the node does).
        lock = str(data / "LOCK")
        assert lock in open_files(node.proc.pid) and lock not in open_files(pid)
        for i in range(10):
            _place(base, i)
        status, snap = _post(f"{base}/v1/admin/snapshot", None, ADMIN_KEY)
        assert status == 200 and snap["seq"] > 0, snap
        assert lock not in open_files(pid)  # nor once it has read the data dir and written
        os.kill(pid, signal.SIGKILL)
        _place(base, 10)
        again = wait_until(
            "another snapshotter to start",
            lambda: (p := snapshotter_pid(node.proc.pid)) != pid and p,
            timeout=30,
        )
        status, after = _post(f"{base}/v1/admin/snapshot", None, ADMIN_KEY)
        assert status == 200 and after["seq"] == snap["seq"] + 1, after
        assert alive(again)
        node.proc.send_signal(signal.SIGTERM)
        assert node.wait_exit() == 0
        wait_until("the snapshotter to stop with the node", lambda: not alive(again), timeout=30)
        assert "Traceback" not in node.log()
        assert "snapshot at seq" in node.log() and "by the snapshotter" in node.log()
    finally:
        node.close()
