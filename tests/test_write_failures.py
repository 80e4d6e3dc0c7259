"""A journal that cannot write: the node refuses the whole batch with JOURNAL_WRITE_FAILED,
leaves the engine untouched, gives the sequence numbers back, and accepts again once writes
succeed; nothing partial is ever left on disk.

Injected failures (`FileJournal.fail_writes`), a real partial write, and a real full disk:
a small tmpfs mounted for the test (needs root / CAP_SYS_ADMIN; skipped, saying so, when
mount is not permitted).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from journal_contract import encoded, make_commands

import engine.journal.segments as segments_mod
from engine.bench.workload import INSTRUMENT, SYMBOL, generate
from engine.core.commands import Amend, Cancel, CancelAll, ListInstrument, NewOrder
from engine.core.domain import Instrument, OrderType, RejectReason, RequestKind, Side
from engine.core.events import OrderAccepted, OrderRejected
from engine.core.matcher import MatchingEngine
from engine.core.state import state_hash
from engine.exchange import ExchangeNode, NodeConfig
from engine.journal import JournalWriteError, OutcomeUnknownError
from engine.journal.segments import FileJournal, scan

FAILED = int(RejectReason.JOURNAL_WRITE_FAILED)
REQUEST_KIND = {
    NewOrder: RequestKind.NEW,
    Cancel: RequestKind.CANCEL,
    Amend: RequestKind.AMEND,
    CancelAll: RequestKind.CANCEL_ALL,
    ListInstrument: RequestKind.LIST_INSTRUMENT,
}


def node_config(data_dir: Path, **kw) -> NodeConfig:
    kw.setdefault("snapshot_every_commands", 0)
    kw.setdefault("snapshot_every_s", 0)
    return NodeConfig(data_dir, instruments=(INSTRUMENT,), **kw)


def is_journal_rejection(events: list) -> bool:
    return len(events) == 1 and type(events[0]) is OrderRejected and events[0].reason == FAILED


def full_replay_hash(journal: FileJournal) -> str:
    engine = MatchingEngine([])
    for cmd in journal.read(1):
        engine.apply(cmd)
    return state_hash(engine)


def journal_seqs(journal: FileJournal) -> list[int]:
    return [c.seq for c in journal.read()]


def mixed_batch(account: str, resting_id: int) -> list:
    """One command of every kind; none of them would be refused by the engine itself."""
    return [
        NewOrder("alice", "a-1", SYMBOL, int(Side.BUY), int(OrderType.LIMIT), 99_990, 5),
        Cancel(account, order_id=resting_id),
        Amend("bob", client_order_id="b-1", new_qty=3),
        CancelAll("carol", SYMBOL),
        ListInstrument(Instrument("NEW-USD")),
    ]


# -- injected failures ---------------------------------------------------------------------


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC], ids=["EIO", "ENOSPC"])
def test_injected_write_failure_refuses_the_whole_batch(tmp_path, err):
    config = node_config(tmp_path)
    node = ExchangeNode(config)
    try:
        node.submit(generate(100, seed=1).commands)
        node.submit([NewOrder("bob", "b-1", SYMBOL, int(Side.SELL), int(OrderType.LIMIT), 100_020, 9)])
        account, orders = next((a, o) for a, o in node.engine.accounts.items() if o.open and a != "bob")
        resting = next(iter(orders.open))
        before_hash = state_hash(node.engine)
        before_seq = node.sequencer.last_seq
        assert before_seq == node.journal.last_seq == node.engine.last_seq == 102

        node.journal.fail_writes(err)
        batch = mixed_batch(account, resting)
        for attempt in (1, 2):  # still refused when retried while writes fail
            results = node.submit(batch)
            assert len(results) == len(batch)
            for cmd, events in zip(batch, results, strict=True):
                assert is_journal_rejection(events), events
                (rej,) = events
                assert rej.seq == 0  # the seq was given back: no event may claim it
                assert rej.request == int(REQUEST_KIND[type(cmd)])
                assert rej.account == getattr(cmd, "account", "")
                assert rej.client_order_id == getattr(cmd, "client_order_id", "")
                assert rej.symbol == getattr(cmd, "symbol", "")
                assert rej.order_id == getattr(cmd, "order_id", 0)
            assert state_hash(node.engine) == before_hash
            assert node.engine.last_seq == node.journal.last_seq == before_seq
            assert node.sequencer.last_seq == before_seq  # rewound
            assert node.rejected_batches == attempt
            assert node.journal.write_errors == attempt
            assert "NEW-USD" not in node.engine.instruments

        node.journal.fail_writes(None)
        results = node.submit(batch)  # the very same commands, resent
        assert [c.seq for c in batch] == list(range(before_seq + 1, before_seq + 6))  # no gap
        assert not any(is_journal_rejection(ev) for ev in results)
        assert type(results[0][0]) is OrderAccepted
        assert "NEW-USD" in node.engine.instruments
        more = generate(20, seed=2).commands
        node.submit(more)
        assert more[0].seq == before_seq + 6
        assert journal_seqs(node.journal) == list(range(1, node.engine.last_seq + 1))
        live_hash = state_hash(node.engine)
        assert live_hash != before_hash
    finally:
        node.close()

    node = ExchangeNode(config)
    try:
        assert node.recovered.torn_tail_truncations == 0
        assert node.recovered.state_hash == live_hash == full_replay_hash(node.journal)
    finally:
        node.close()


def test_failure_on_the_listing_batch_at_startup(tmp_path):
    """Even the node's first batch (listing its instruments) is refused cleanly."""
    node = ExchangeNode(node_config(tmp_path))
    try:
        node.journal.fail_writes(errno.EIO)
        results = node.submit([ListInstrument(Instrument("X-USD")), ListInstrument(Instrument("Y-USD"))])
        assert all(is_journal_rejection(ev) for ev in results)
        assert set(node.engine.instruments) == {SYMBOL}
        node.journal.fail_writes(None)
        node.submit([ListInstrument(Instrument("X-USD"))])
        assert set(node.engine.instruments) == {SYMBOL, "X-USD"}
        assert journal_seqs(node.journal) == [1, 2]
    finally:
        node.close()


class _RefusesAtFirst(FileJournal):
    """A journal that refuses its first `refusals` appends (true refusals: nothing written),
    as a replicated stream just created does before the server routes its subject."""

    refusals = 2

    def append(self, commands, meta=None):
        if self.refusals:
            self.refusals -= 1
            raise JournalWriteError("nats: no responders available for request (injected)")
        return super().append(commands, meta)


def test_a_start_lists_its_instruments_once_a_refusing_journal_takes_them(tmp_path):
    """FIX: the first listing's refusal ended the start ("cannot list X: reason 502"): a
    cluster test failed so under load, on a stream created a moment before."""
    journal = _RefusesAtFirst(tmp_path / "journal")
    node = ExchangeNode(node_config(tmp_path), journal=journal)
    try:
        assert journal.refusals == 0
        assert set(node.engine.instruments) == {SYMBOL}
        assert journal_seqs(node.journal) == [1]  # listed once
    finally:
        node.close()


def test_a_start_gives_up_on_a_journal_that_keeps_refusing(tmp_path, monkeypatch):
    import engine.exchange as exchange_mod

    monkeypatch.setattr(exchange_mod, "LISTING_RETRY_S", 0.0)
    journal = _RefusesAtFirst(tmp_path / "journal")
    journal.refusals = 1_000
    with pytest.raises(RuntimeError, match=r"the journal refused for 0 s \(JOURNAL_WRITE_FAILED\)"):
        ExchangeNode(node_config(tmp_path), journal=journal)


class _PartialWrites:
    """Stands in for the `os` module inside engine.journal.segments: after `tear()` the next
    pwrite writes half its bytes and the one after it fails with ENOSPC (a disk filling up
    mid-record); ftruncate fails while `truncate_fails` is set."""

    def __init__(self) -> None:
        self._state = ""  # "" | "half" | "fail"
        self.truncate_fails = False

    def __getattr__(self, name):
        return getattr(os, name)

    def tear(self) -> None:
        self._state = "half"

    def pwrite(self, fd, data, offset):
        if self._state == "half":
            self._state = "fail"
            return os.pwrite(fd, bytes(data[: len(data) // 2]), offset)
        if self._state == "fail":
            self._state = ""
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.pwrite(fd, data, offset)

    def ftruncate(self, fd, length):
        if self.truncate_fails:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return os.ftruncate(fd, length)


def test_a_real_partial_write_is_cut_off(tmp_path, monkeypatch):
    shim = _PartialWrites()
    monkeypatch.setattr(segments_mod, "os", shim)
    journal = FileJournal(tmp_path, fsync=True)
    good = make_commands(5)
    journal.append(good)
    (seg,) = journal.segments
    size = seg.path.stat().st_size

    shim.tear()
    with pytest.raises(JournalWriteError, match=r"6\.\.13"):
        journal.append(make_commands(8, 6))
    assert seg.path.stat().st_size == size  # the half record was cut off at once
    assert journal.last_seq == 5

    # When even the cut fails, the half record stays: the outcome is unknown (for a half
    # record recovery would cut it, but nothing may be appended after it meanwhile).
    shim.tear()
    shim.truncate_fails = True
    with pytest.raises(OutcomeUnknownError):
        journal.append(make_commands(8, 6))
    assert seg.path.stat().st_size > size
    assert journal.unresolved == (6, 13)
    with pytest.raises(JournalWriteError, match="not resolved yet"):
        journal.append(make_commands(8, 6))
    with pytest.raises(OutcomeUnknownError):
        journal.resolve()
    shim.truncate_fails = False
    assert journal.resolve() is False  # cut off: known absent
    assert seg.path.stat().st_size == size and journal.unresolved is None
    retry = make_commands(8, 6)
    journal.append(retry)
    journal.close()

    monkeypatch.undo()
    reopened = FileJournal(tmp_path)
    try:
        assert reopened.torn_tail_truncations == 0
        assert encoded(reopened.read()) == encoded(good + retry)
    finally:
        reopened.close()


# -- a real full disk ----------------------------------------------------------------------


@pytest.fixture
def mount_tmpfs():
    """mount_tmpfs(path, size) mounts a tmpfs there; everything is unmounted afterwards."""
    mounted: list[Path] = []
    if shutil.which("mount") is None:
        pytest.skip("real disk-full test: no mount command on this machine")

    def mount(path: Path, size: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            pytest.skip(
                "real disk-full test needs to mount a small tmpfs (root with CAP_SYS_ADMIN); "
                f"mount said: {proc.stderr.strip() or proc.returncode}"
            )
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill_until_refused(node: ExchangeNode, commands: list, batch: int, acked: list) -> list:
    """Submit batches until one is refused for the journal; returns that batch. Appends
    every acknowledged command to `acked`."""
    for i in range(0, len(commands), batch):
        chunk = commands[i : i + batch]
        hash_before = state_hash(node.engine)
        seq_before = node.sequencer.last_seq
        results = node.submit(chunk)
        if is_journal_rejection(results[0]):
            assert all(is_journal_rejection(ev) for ev in results)
            assert state_hash(node.engine) == hash_before
            assert node.sequencer.last_seq == node.journal.last_seq == node.engine.last_seq == seq_before
            return chunk
        assert not any(is_journal_rejection(ev) for ev in results)
        acked.extend(chunk)
    raise AssertionError(f"the disk never filled up after {len(acked)} acknowledged commands")


def fill_to_the_last_byte(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while os.write(fd, b"\xa5" * 512):
            pass
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def segment_paths(journal_dir: Path) -> list[Path]:
    return sorted(journal_dir.glob("*.seg"))


@pytest.mark.parametrize("segment_bytes", [64 * 1024 * 1024, 12 * 1024], ids=["one-segment", "rollovers"])
def test_real_disk_full(tmp_path, mount_tmpfs, segment_bytes):
    disk = mount_tmpfs(tmp_path / "disk", "256k")
    config = node_config(disk / "node", segment_bytes=segment_bytes)
    journal_dir = disk / "node" / "journal"
    filler = disk / "filler"
    filler.write_bytes(os.urandom(64 * 1024))  # the space an operator frees later

    node = ExchangeNode(config)
    try:
        acked = list(node.journal.read())  # the listing
        refused = fill_until_refused(node, generate(20_000, seed=3).commands, 25, acked)
        assert node.rejected_batches == 1
        assert node.journal.write_errors == 1
        assert len(acked) > 1000  # the journal really filled the disk
        # No partial record: every file holds exactly the whole records the journal knows.
        assert segment_paths(journal_dir) == [s.path for s in node.journal.segments]
        for seg in node.journal.segments:
            assert seg.path.stat().st_size == seg.size
        if segment_bytes < 1024 * 1024:
            assert len(node.journal.segments) > 5
        # Still full: the same batch is refused again.
        assert all(is_journal_rejection(ev) for ev in node.submit(refused))
        live_hash = state_hash(node.engine)
    finally:
        node.close()

    report = scan(journal_dir)
    assert report.damage is None
    assert report.torn_tail_bytes == 0
    assert report.last_seq == acked[-1].seq

    # Restart while the disk is still full: recovery only reads.
    node = ExchangeNode(config)
    try:
        assert node.recovered.torn_tail_truncations == 0
        assert node.recovered.state_hash == live_hash
        assert encoded(node.journal.read()) == encoded(acked)
        assert all(is_journal_rejection(ev) for ev in node.submit(refused))

        filler.unlink()  # the operator frees space: accepted again, with no gap
        results = node.submit(refused)
        assert not any(is_journal_rejection(ev) for ev in results)
        assert refused[0].seq == acked[-1].seq + 1
        acked.extend(refused)
        more = generate(50, seed=4).commands
        assert not any(is_journal_rejection(ev) for ev in node.submit(more))
        acked.extend(more)
        live_hash = state_hash(node.engine)
    finally:
        node.close()

    node = ExchangeNode(config)
    try:
        assert node.recovered.torn_tail_truncations == 0
        assert node.recovered.state_hash == live_hash == full_replay_hash(node.journal)
        assert encoded(node.journal.read()) == encoded(acked)  # every acknowledged command
    finally:
        node.close()


def test_full_snapshot_volume_does_not_fail_a_durable_batch(tmp_path, mount_tmpfs):
    config = node_config(tmp_path / "node", snapshot_every_commands=50)
    snap_dir = mount_tmpfs(tmp_path / "node" / "snapshots", "64k")
    fill_to_the_last_byte(snap_dir / "filler")
    node = ExchangeNode(config)
    try:
        commands = generate(100, seed=5).commands
        results = node.submit(commands[:60])  # the snapshot is due after this batch
        assert len(results) == 60
        assert not any(is_journal_rejection(ev) for ev in results)
        assert node.journal.last_seq == node.engine.last_seq == 61
        assert list(snap_dir.glob("*.tmp")) == []
    finally:
        node.close()
