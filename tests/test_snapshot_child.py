"""Snapshots off the order path: a forked child writes the snapshot while the node goes on.

The child is held (LOOM_TEST_SNAPSHOT_HOLD names a file it waits on while it exists), so
"the order path goes on while a snapshot is written" is shown without timing: submissions
complete while the child is provably still inside its write. A failed child (killed, or an
OSError it reports) is counted and the previous snapshot stands; a node killed mid-snapshot
takes its child with it and restarts from the previous snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_app_run import NO_LISTENERS, READY_RE, RECOVERED_RE, Loom, clean_env, get_json
from waiting import wait_until

from engine.bench.workload import INSTRUMENT, generate
from engine.core.state import state_hash
from engine.exchange import DataDirLocked, ExchangeNode, NodeConfig
from engine.service import ExchangeService
from engine.snapshot_child import HOLD_ENV, SnapshotWriteError
from engine.snapshots import SnapshotStore, decode_snapshot
from engine.stack.procs import alive  # running: a zombie not yet reaped is not
from telemetry.metrics import ExchangeMetrics
from telemetry.observer import MetricsObserver

WORKLOAD = generate(400, seed=21).commands


def orders(first: int, n: int) -> list:
    """Unstamped copies of workload commands (a node stamps what it is given)."""
    return [
        type(c)(**{f: getattr(c, f) for f in c.__struct_fields__ if f not in ("seq", "ts")})
        for c in WORKLOAD[first : first + n]
    ]


def config(tmp_path: Path, **kw) -> NodeConfig:
    kw.setdefault("snapshot_every_commands", 0)
    kw.setdefault("snapshot_every_s", 0)
    return NodeConfig(tmp_path / "data", (INSTRUMENT,), **kw)


def filled_node(tmp_path: Path, n: int = 100, **kw) -> ExchangeNode:
    node = ExchangeNode(config(tmp_path, **kw))
    for i in range(0, n, 10):
        node.submit(orders(i, 10))
    return node


@pytest.fixture
def hold(tmp_path, monkeypatch) -> Path:
    """While this file exists (the test creates it), a snapshot child waits after creating
    its temporary file."""
    path = tmp_path / "hold"
    monkeypatch.setenv(HOLD_ENV, str(path))
    return path


def held_child(node: ExchangeNode) -> tuple[int, Path]:
    """The pid of the snapshot child in flight and its temporary file, once it is held."""
    job = node._snapshot_job
    assert job is not None, "no snapshot in flight"
    tmp = node.snapshots.directory / f"snapshot-{job.seq:020d}.snap.tmp"
    wait_until("the snapshot child to create its temporary file", tmp.exists, timeout=30)
    return job.pid, tmp


def test_forked_snapshot_loads_and_verifies_with_the_live_state_hash(tmp_path):
    node = filled_node(tmp_path, 120)
    try:
        written = node.take_snapshot()
        assert written.seq == node.engine.last_seq
        assert written.state_hash == state_hash(node.engine)
        loaded = decode_snapshot(written.path.read_bytes(), str(written.path))
        assert (loaded.seq, loaded.state_hash) == (written.seq, written.state_hash)
        assert written.size == written.path.stat().st_size
        assert node.snapshot_captures == 1 and node.last_capture_s > 0
        assert node.last_snapshot == written and not node.snapshot_in_flight
        assert list(node.snapshots.directory.glob("*.tmp")) == []
        # The child closed its copy of the data dir's LOCK fd: the node still holds the lock.
        with pytest.raises(DataDirLocked):
            ExchangeNode(config(tmp_path))
    finally:
        node.close()


def test_the_order_path_goes_on_while_the_child_writes(tmp_path, hold):
    """A scheduled snapshot held inside its write while batches are acknowledged; an
    on-demand one waits its turn without blocking the loop; both hold their capture's state."""
    node = filled_node(tmp_path, 50, snapshot_every_commands=60)
    metrics = ExchangeMetrics()
    service = ExchangeService(node, observer=MetricsObserver(metrics))
    hold.touch()

    async def scenario() -> tuple[int, int]:
        service.start()
        try:
            await service.submit(orders(50, 10))  # makes a snapshot due: started, not awaited
            captured = node.engine.last_seq
            pid, tmp = held_child(node)
            for i in range(60, 200, 10):  # acknowledged while the child is held in its write
                results = await service.submit(orders(i, 10))
                assert len(results) == 10 and all(results)
            assert alive(pid) and tmp.exists() and node.snapshot_in_flight
            # It runs only on CPU the order path leaves idle (engine.procutil).
            assert os.sched_getscheduler(pid) == os.SCHED_IDLE
            assert node.last_snapshot is None
            assert node.engine.last_seq == captured + 140
            assert node.snapshot_captures == 1  # snapshots due meanwhile wait for this one

            demand = asyncio.create_task(node.take_snapshot_async())
            await asyncio.sleep(0.05)  # the task runs and waits: the loop goes on
            assert not demand.done() and node.snapshot_captures == 1
            assert (await service.submit(orders(200, 10)))[0]
            hold.unlink()  # releases the held child and lets the next one through
            written = await asyncio.wait_for(demand, 60)
            assert written.seq == node.engine.last_seq == captured + 150
            assert node.snapshot_captures == 2

            assert _sample(metrics.snapshot_duration, "_count") == 2
            return captured, written.seq
        finally:
            await service.stop()

    captured, demanded = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert _sample(metrics.snapshot_capture, "_count") == 2
    assert _sample(metrics.snapshot_failures, "_total") == 0
    store = node.snapshots
    assert [s.seq for s in store.list()] == [captured, demanded]
    for info in store.list():
        assert store.verify(info).seq == info.seq
    node.close()


@pytest.mark.parametrize("waiter", ["take_snapshot", "a bare node's submit"])
def test_a_child_the_node_waits_for_keeps_the_nodes_priority(tmp_path, hold, waiter):
    """A SCHED_IDLE child the node blocks on is a priority inversion: on a busy machine every
    other process ran first, ~1 s a snapshot (the crash drill's driver, a bare node taking one
    every 3 orders, outlived its 60 s guard). A child no one waits for still yields."""
    node = filled_node(tmp_path, 50, snapshot_every_commands=60)
    hold.touch()
    wait = node.take_snapshot if waiter == "take_snapshot" else lambda: node.submit(orders(50, 10))
    waiting = threading.Thread(target=wait)
    waiting.start()
    try:
        wait_until("the snapshot to start", lambda: node.snapshot_in_flight, timeout=30)
        pid, _tmp = held_child(node)  # past its choice of policy: in its write
        assert os.sched_getscheduler(pid) == os.SCHED_OTHER
    finally:
        hold.unlink()
        waiting.join(60)
    assert not waiting.is_alive() and node.last_snapshot.seq == node.engine.last_seq
    node.close()


def test_a_killed_child_is_counted_and_the_previous_snapshot_stands(tmp_path, hold):
    node = filled_node(tmp_path, 50, snapshot_every_commands=60)
    previous = node.take_snapshot()
    metrics = ExchangeMetrics()
    service = ExchangeService(node, observer=MetricsObserver(metrics))
    hold.touch()

    async def scenario() -> None:
        service.start()
        try:
            for i in range(50, 120, 10):
                await service.submit(orders(i, 10))  # a scheduled snapshot starts on the way
            pid, tmp = held_child(node)
            os.kill(pid, signal.SIGKILL)
            while node.snapshot_in_flight:  # reaped by the service's timer
                await asyncio.sleep(0.01)
            assert not tmp.exists()
            assert node.snapshot_failures == 1 and "SIGKILL" in node.last_snapshot_error
            while _sample(metrics.snapshot_failures, "_total") != 1:
                await asyncio.sleep(0.01)
            # The node goes on; the next snapshot is written.
            hold.unlink()
            await service.submit(orders(120, 10))
            written = await node.take_snapshot_async()
            assert written.seq == node.engine.last_seq
        finally:
            await service.stop()

    asyncio.run(asyncio.wait_for(scenario(), 120))
    assert node.last_snapshot.seq > previous.seq
    node.close()
    # The previous snapshot stood throughout: the failed one left nothing behind.
    store = SnapshotStore(tmp_path / "data" / "snapshots")
    assert [s.seq for s in store.list()] == [previous.seq, node.last_snapshot.seq]


def test_a_child_that_cannot_write_reports_why_and_nothing_else_changes(tmp_path):
    node = filled_node(tmp_path, 50)
    try:
        previous = node.take_snapshot()
        node.submit(orders(50, 10))
        blocker = node.snapshots.directory / f"snapshot-{node.engine.last_seq:020d}.snap.tmp"
        blocker.mkdir()  # the child's open() of its temporary file fails
        with pytest.raises(SnapshotWriteError, match="IsADirectoryError"):
            node.take_snapshot()
        assert node.snapshot_failures == 1 and node.snapshots.write_failures == 1
        assert node.last_snapshot == previous
        loaded = node.snapshots.load_newest_valid()
        assert (loaded.seq, loaded.state_hash) == (previous.seq, previous.state_hash)
        node.submit(orders(60, 10))  # a new seq, a new temporary file: written
        assert node.take_snapshot().seq == node.engine.last_seq
    finally:
        node.close()


# -- a real node killed mid-snapshot -------------------------------------------------------

TRADER_KEY = "snap-trader-key-00000"
ADMIN_KEY = "snap-admin-key-000000"


def _node_config(tmp_path: Path, writer: str = "fork") -> Path:
    path = tmp_path / "loom.toml"
    path.write_text(
        f'admin_key = "{ADMIN_KEY}"\n'
        f'[snapshots]\nevery_commands = 0\nevery_seconds = 0\nwriter = "{writer}"\n'
        f'[[accounts]]\nname = "snap"\napi_key = "{TRADER_KEY}"\n'
        f'[[instruments]]\nsymbol = "{INSTRUMENT.symbol}"\n'
    )
    return path


def _post(url: str, body: dict | None, key: str) -> tuple[int, dict]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body or {}).encode(),
        headers={"X-API-Key": key, "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _place(base: str, i: int) -> int:
    status, body = _post(
        f"{base}/v1/orders",
        {"symbol": INSTRUMENT.symbol, "side": "buy", "qty": 1, "price": 1000 + i, "client_order_id": f"o{i}"},
        TRADER_KEY,
    )
    assert status == 201, body
    return body["order"]["order_id"]


def _post_expecting_the_kill(url: str) -> None:
    with contextlib.suppress(ConnectionError, urllib.error.URLError):
        _post(url, None, ADMIN_KEY)


def _children(pid: int) -> set[int]:
    out = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        # A thread can end between the listing and the read (a CI run failed so).
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            out |= {int(c) for c in (task / "children").read_text().split()}
    return out


def open_files(pid: int) -> set[str]:
    """What the process's descriptors point at. A descriptor can close between the listing and
    its readlink (a starting interpreter opens and closes its modules' files)."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return out


def snapshotter_pid(node: int) -> int | None:
    """The node's snapshotter process (engine/snapshotter.py), once started."""
    for pid in _children(node):
        try:
            if b"engine.snapshotter" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except (FileNotFoundError, ProcessLookupError):  # ended after the listing
            continue
    return None


@pytest.mark.parametrize("writer", ["fork", "follower"])
def test_sigkill_of_the_node_mid_snapshot_takes_the_child_along_and_recovers(tmp_path, hold, writer):
    """Either writer: the forked child, or the snapshotter process (held in its write)."""
    data = tmp_path / "data"
    args = ["--config", str(_node_config(tmp_path, writer)), "--data-dir", str(data), *NO_LISTENERS]
    first = Loom(args, tmp_path / "first.log", clean_env(**{HOLD_ENV: str(hold)}))
    try:
        base = f"http://127.0.0.1:{first.wait_line(READY_RE).group(2)}"
        placed = [_place(base, i) for i in range(20)]
        status, snap = _post(f"{base}/v1/admin/snapshot", None, ADMIN_KEY)
        assert status == 200, snap
        placed.append(_place(base, 20))
        before = _children(first.proc.pid)
        hold.touch()
        # On demand, held in its write: the admin request waits (the kill answers it with a
        # dropped connection), the node does not.
        pending = threading.Thread(target=_post_expecting_the_kill, args=(f"{base}/v1/admin/snapshot",))
        pending.start()
        tmp = data / "snapshots" / f"snapshot-{snap['seq'] + 1:020d}.snap.tmp"
        wait_until("the snapshot child's temporary file", lambda: tmp.exists() or None, timeout=30)
        child = (
            (_children(first.proc.pid) - before).pop()
            if writer == "fork"
            else snapshotter_pid(first.proc.pid)
        )
        assert alive(child)
        placed += [_place(base, i) for i in range(21, 26)]  # answered while the child is held
        assert get_json(f"{base}/readyz")[0] == 200
        helpers = _children(first.proc.pid) - {child}  # the order lookup's worker, if started
        first.proc.kill()
        first.wait_exit()
        wait_until("the snapshot child to die with its parent", lambda: not alive(child), timeout=30)
        # FIX: the lookup worker (a spawned process) outlived a SIGKILLed node, holding its
        # stdout open (this test then hung reading it) and reading the data directory.
        wait_until(
            "the node's helper processes to die with it",
            lambda: not any(alive(p) for p in helpers),
            timeout=30,
        )
        pending.join(60)
    finally:
        first.close()
    assert tmp.exists()  # what the kill left behind: a partial snapshot, never renamed

    hold.unlink()
    second = Loom(args, tmp_path / "second.log", clean_env())
    try:
        base = f"http://127.0.0.1:{second.wait_line(READY_RE).group(2)}"
        recovered = RECOVERED_RE.search(second.log())
        assert recovered, second.output()
        assert int(recovered.group(3)) == snap["seq"]  # the previous snapshot
        assert int(recovered.group(4)) == 6  # the orders acknowledged after it, replayed
        for oid in placed:
            status, body = get_json(f"{base}/v1/orders/{oid}", {"X-API-Key": TRADER_KEY})
            assert status == 200 and body["status"] in ("new", "open"), body
        status, again = _post(f"{base}/v1/admin/snapshot", None, ADMIN_KEY)
        assert status == 200 and again["seq"] == snap["seq"] + 6
        assert not tmp.exists()  # cleaned up after the next snapshot
        assert "Traceback" not in second.log()
        helpers = _children(second.proc.pid)
        second.proc.kill()
        second.wait_exit()
        wait_until(
            "the node's helper processes to die with it",
            lambda: not any(alive(p) for p in helpers),
            timeout=30,
        )
    finally:
        second.close()


def _sample(metric, suffix: str) -> float:
    for family in metric.collect():
        for s in family.samples:
            if s.name.endswith(suffix):
                return s.value
    raise AssertionError(f"no {suffix} sample")
