"""SnapshotStore and snapshot-based recovery.

A snapshot is the whole engine state at one journal seq; it is written atomically, verified
on load (checksum, then the state hash of the restored engine), pruned to the newest `keep`,
and a damaged newest one falls back to the one before. Recovery loads the newest valid
snapshot and replays only the journal after it, reaching the state a full replay reaches.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

import engine.snapshots as snapshots_mod
from engine.bench.workload import INSTRUMENT, generate, make_engine
from engine.core.matcher import MatchingEngine
from engine.core.state import encode_state, export_state, state_hash
from engine.exchange import ExchangeNode, NodeConfig
from engine.journal import JournalCorruptError, TailDamageError
from engine.journal.segments import FileJournal, repair
from engine.repair import plan, truncate
from engine.snapshots import HEADER, SnapshotError, SnapshotStore, decode_snapshot, encode_snapshot

WORKLOAD = generate(400, seed=5).commands  # stamped 1..400; never handed to a node


def engine_at(seq: int) -> MatchingEngine:
    """The workload's engine after its first `seq` commands."""
    engine = make_engine()
    for cmd in WORKLOAD[:seq]:
        engine.apply(cmd)
    assert engine.last_seq == seq
    return engine


def store_with(tmp_path: Path, seqs, keep: int = 10) -> SnapshotStore:
    store = SnapshotStore(tmp_path / "snapshots", keep=keep)
    for seq in seqs:
        store.write(engine_at(seq))
    return store


def full_replay_hash(journal: FileJournal) -> str:
    """The state hash of a fresh engine fed every command from the journal's first record."""
    assert journal.segments and journal.segments[0].first_seq == 1
    engine = MatchingEngine([])
    for cmd in journal.read(journal.segments[0].first_seq):
        engine.apply(cmd)
    assert engine.last_seq == journal.last_seq
    return state_hash(engine)


def node_config(data_dir: Path, **kw) -> NodeConfig:
    kw.setdefault("snapshot_every_commands", 0)
    kw.setdefault("snapshot_every_s", 0)
    return NodeConfig(data_dir, instruments=(INSTRUMENT,), **kw)


def fresh_orders(count: int, seed: int) -> list:
    """Workload commands for a node (a new list: the node re-stamps what it is given)."""
    return generate(count, seed=seed).commands


def submit_in_batches(node: ExchangeNode, commands: list, size: int) -> None:
    for i in range(0, len(commands), size):
        node.submit(commands[i : i + size])


# -- the store -----------------------------------------------------------------------------


def test_write_list_verify_round_trip(tmp_path):
    store = SnapshotStore(tmp_path / "snapshots")
    engine = engine_at(250)
    written = store.write(engine)
    assert written.seq == 250
    assert written.path.name == f"snapshot-{250:020d}.snap"
    assert written.state_hash == state_hash(engine)
    assert written.size == written.path.stat().st_size
    (info,) = store.list()
    assert (info.path, info.seq, info.size) == (written.path, 250, written.size)
    loaded = store.verify(info)
    assert loaded.seq == 250
    assert loaded.state_hash == state_hash(loaded.engine) == state_hash(engine)
    assert encode_state(export_state(loaded.engine)) == encode_state(export_state(engine))
    # The restored engine behaves exactly like the original from here on.
    for cmd in WORKLOAD[250:]:
        assert loaded.engine.apply(cmd) == engine.apply(cmd)
    assert state_hash(loaded.engine) == state_hash(engine)


def test_an_image_written_in_many_slices_is_whole(tmp_path, monkeypatch):
    """The file is written a slice at a time, each made durable (so the journal's fdatasyncs
    do not wait behind the whole image): every byte lands once, in order."""
    synced = []
    monkeypatch.setattr(snapshots_mod, "WRITE_SLICE", 500)
    monkeypatch.setattr(snapshots_mod.os, "fdatasync", lambda fd: synced.append(fd))
    store = SnapshotStore(tmp_path / "snapshots")
    engine = engine_at(250)
    written = store.write(engine)
    assert written.size > 5 * 500 and len(synced) == -(-written.size // 500)
    assert written.path.read_bytes() == encode_snapshot(engine)[0]
    assert store.verify(store.list()[0]).state_hash == state_hash(engine)


def test_snapshot_of_an_empty_engine(tmp_path):
    store = SnapshotStore(tmp_path)
    store.write(MatchingEngine([]))
    newest = store.load_newest_valid()
    assert newest is not None
    assert newest.seq == 0
    assert newest.state_hash == state_hash(MatchingEngine([]))


def test_list_is_oldest_first_and_ignores_other_files(tmp_path):
    store = store_with(tmp_path, [30, 10, 20])
    (store.directory / "notes.txt").write_text("not a snapshot")
    (store.directory / "snapshot-5.snap").write_bytes(b"bad name")
    assert [s.seq for s in store.list()] == [10, 20, 30]
    newest = store.load_newest_valid()
    assert newest is not None and newest.seq == 30 and newest.skipped == ()


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    store = store_with(tmp_path, [10, 20, 30], keep=2)
    assert list(store.directory.glob("*.tmp")) == []
    assert sorted(p.name for p in store.directory.iterdir()) == [s.path.name for s in store.list()]


def test_a_crash_before_the_rename_leaves_the_previous_snapshot(tmp_path, monkeypatch):
    store = store_with(tmp_path, [10])

    def crash(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(snapshots_mod.os, "replace", crash)
    with pytest.raises(OSError):
        store.write(engine_at(20))
    monkeypatch.undo()
    assert [s.seq for s in store.list()] == [10]  # no half-written snapshot-…20.snap
    newest = store.load_newest_valid()
    assert newest is not None and newest.seq == 10 and store.load_failures == 0
    # The failed write removed its temporary file and was counted.
    assert list(store.directory.glob("*.snap.tmp")) == []
    assert store.write_failures == 1
    store.write(engine_at(30))
    assert list(store.directory.glob("*.tmp")) == []
    assert [s.seq for s in store.list()] == [10, 30]


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_keep_prunes_older_snapshots(tmp_path, keep):
    seqs = [10, 20, 30, 40, 50]
    store = SnapshotStore(tmp_path, keep=keep)
    for n, seq in enumerate(seqs, 1):
        store.write(engine_at(seq))
        assert [s.seq for s in store.list()] == seqs[max(0, n - keep) : n]


def test_keep_must_be_positive(tmp_path):
    with pytest.raises(ValueError):
        SnapshotStore(tmp_path, keep=0)


# -- damaged snapshots ---------------------------------------------------------------------


def _flip(data: bytes, pos: int, bit: int = 0) -> bytes:
    body = bytearray(data)
    body[pos] ^= 1 << bit
    return bytes(body)


DAMAGE = {
    "bitflip-magic": lambda d: _flip(d, 2),
    "bitflip-version": lambda d: _flip(d, 8),
    "bitflip-seq": lambda d: _flip(d, 10),
    "bitflip-state-hash": lambda d: _flip(d, 30, 5),
    "bitflip-length": lambda d: _flip(d, 50),
    "bitflip-crc": lambda d: _flip(d, 59, 7),
    "bitflip-payload": lambda d: _flip(d, len(d) // 2, 3),
    "bitflip-last-byte": lambda d: _flip(d, len(d) - 1, 6),
    "truncated-to-nothing": lambda d: b"",
    "truncated-header": lambda d: d[:20],
    "truncated-to-header": lambda d: d[: HEADER.size],
    "truncated-one-byte": lambda d: d[:-1],
    "garbage-random": lambda d: random.Random(1).randbytes(len(d)),
    "garbage-zeros": lambda d: bytes(len(d)),
    "garbage-appended": lambda d: d + b"\0" * 8,
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_damaged_newest_snapshot_falls_back_to_the_previous_one(tmp_path, damage):
    store = store_with(tmp_path, [100, 200])
    newest = store.list()[-1]
    newest.path.write_bytes(damage(newest.path.read_bytes()))
    with pytest.raises((SnapshotError, ValueError)):
        store.verify(store.list()[-1])
    loaded = store.load_newest_valid()
    assert loaded is not None
    assert loaded.seq == 100
    assert loaded.state_hash == state_hash(engine_at(100)) == state_hash(loaded.engine)
    assert store.load_failures == 1
    ((path, reason),) = loaded.skipped
    assert path == newest.path
    assert reason


def test_every_damaged_snapshot_is_reported_and_none_is_loaded(tmp_path):
    store = store_with(tmp_path, [100, 200, 300])
    for info in store.list():
        info.path.write_bytes(_flip(info.path.read_bytes(), HEADER.size + 3))
    assert store.load_newest_valid() is None
    assert store.load_failures == 3


def test_no_single_bit_flip_goes_unnoticed():
    """Every bit of the header and one (seeded) bit of every payload byte."""
    data, _ = encode_snapshot(engine_at(300))
    rng = random.Random(9)
    checked = 0
    for pos in range(len(data)):
        for bit in range(8) if pos < HEADER.size else [rng.randrange(8)]:
            with pytest.raises((SnapshotError, ValueError)):
                decode_snapshot(_flip(data, pos, bit), "snap")
            checked += 1
    assert checked == HEADER.size * 8 + len(data) - HEADER.size
    assert decode_snapshot(data).state_hash == state_hash(engine_at(300))


def test_snapshot_beyond_the_journal_is_skipped(tmp_path):
    store = store_with(tmp_path, [100, 200, 300])
    beyond = store.list()[-1].path
    loaded = store.load_newest_valid(max_seq=250)
    assert loaded is not None and loaded.seq == 200
    ((path, reason),) = loaded.skipped
    assert path == beyond
    assert "beyond the journal" in reason
    assert store.load_failures == 0  # not a verification failure
    # Set aside for good: it belongs to a history the journal no longer holds.
    assert [s.seq for s in store.list()] == [100, 200]
    assert beyond.with_name(beyond.name + ".stale").exists()
    again = store.load_newest_valid(max_seq=300)
    assert again is not None and again.seq == 200 and again.skipped == ()


# -- the node's schedule and recovery ------------------------------------------------------


def test_node_snapshots_every_n_commands_and_recovery_replays_only_the_rest(tmp_path):
    config = node_config(tmp_path, snapshot_every_commands=50, keep_snapshots=3)
    node = ExchangeNode(config)
    taken = []  # the seq of every snapshot, in order
    commands = fresh_orders(400, seed=2)
    for i in range(0, len(commands), 7):
        before = node.last_snapshot
        node.submit(commands[i : i + 7])
        if node.last_snapshot is not before:
            assert node.last_snapshot.seq == node.engine.last_seq  # taken after the batch
            assert node.last_snapshot.state_hash == state_hash(node.engine)
            taken.append(node.last_snapshot.seq)
    live_hash = state_hash(node.engine)
    last_seq = node.engine.last_seq
    node.close()

    # The listing is seq 1, then batches of 7: a snapshot after the first batch that brings
    # the engine 50 or more commands past the previous snapshot.
    batch_ends = [*range(1 + 7, last_seq, 7), last_seq]
    expected = []
    for end in batch_ends:
        if end - (expected[-1] if expected else 0) >= 50:
            expected.append(end)
    assert taken == expected
    assert len(taken) == 7
    for prev, seq in zip([0, *taken], taken, strict=False):
        assert 50 <= seq - prev < 50 + 7
    store = SnapshotStore(tmp_path / "snapshots")
    assert [s.seq for s in store.list()] == taken[-3:]

    node = ExchangeNode(config)
    try:
        rec = node.recovered
        assert rec.snapshot_seq == taken[-1] > 0
        assert Path(rec.snapshot_path).name == f"snapshot-{taken[-1]:020d}.snap"
        assert rec.replayed_commands == last_seq - taken[-1]
        assert rec.snapshots_skipped == 0
        assert rec.state_hash == live_hash == state_hash(node.engine)
        assert full_replay_hash(node.journal) == live_hash
    finally:
        node.close()


def test_node_snapshots_every_t_seconds(tmp_path):
    now = [1000.0]
    node = ExchangeNode(node_config(tmp_path, snapshot_every_s=10), clock=lambda: now[0])
    try:
        commands = fresh_orders(60, seed=3)
        node.submit(commands[:10])
        now[0] += 9.9
        node.submit(commands[10:20])
        assert node.last_snapshot is None
        now[0] += 0.1
        node.submit(commands[20:30])
        assert node.last_snapshot is not None and node.last_snapshot.seq == node.engine.last_seq == 31
        now[0] += 5
        node.submit(commands[30:40])
        assert node.last_snapshot.seq == 31
        now[0] += 5
        node.submit(commands[40:50])
        assert node.last_snapshot.seq == 51
        assert [s.seq for s in node.snapshots.list()] == [31, 51]
    finally:
        node.close()


def test_on_demand_snapshot_and_recovery_with_nothing_to_replay(tmp_path):
    config = node_config(tmp_path)
    node = ExchangeNode(config)
    submit_in_batches(node, fresh_orders(120, seed=4), 10)
    written = node.take_snapshot()
    live_hash = state_hash(node.engine)
    node.close()
    node = ExchangeNode(config)
    try:
        assert node.recovered.snapshot_seq == written.seq == node.journal.last_seq
        assert node.recovered.replayed_commands == 0
        assert node.recovered.state_hash == live_hash
    finally:
        node.close()


def test_recovery_falls_back_past_a_damaged_newest_snapshot(tmp_path):
    config = node_config(tmp_path, snapshot_every_commands=40)
    node = ExchangeNode(config)
    submit_in_batches(node, fresh_orders(200, seed=6), 10)
    live_hash = state_hash(node.engine)
    node.close()
    infos = SnapshotStore(tmp_path / "snapshots").list()
    assert len(infos) == 3
    infos[-1].path.write_bytes(_flip(infos[-1].path.read_bytes(), HEADER.size + 10))
    node = ExchangeNode(config)
    try:
        rec = node.recovered
        assert rec.snapshot_seq == infos[-2].seq
        assert rec.snapshots_skipped == 1
        assert rec.replayed_commands == node.journal.last_seq - infos[-2].seq
        assert rec.state_hash == live_hash == full_replay_hash(node.journal)
    finally:
        node.close()


def test_recovery_does_not_need_the_journal_before_the_snapshot(tmp_path):
    config = node_config(tmp_path, segment_bytes=2048)
    node = ExchangeNode(config)
    submit_in_batches(node, fresh_orders(150, seed=8), 10)
    written = node.take_snapshot()
    submit_in_batches(node, fresh_orders(50, seed=9), 10)
    live_hash = state_hash(node.engine)
    node.close()
    segments = sorted((tmp_path / "journal").iterdir())
    covered = [p for p in segments[1:] if int(p.name[8:28]) <= written.seq + 1]
    assert covered  # at least one old segment wholly covered by the snapshot
    newest_covered = covered[-1]
    for path in segments:
        if path.name < newest_covered.name:
            path.unlink()
    node = ExchangeNode(config)
    try:
        assert node.recovered.snapshot_seq == written.seq
        assert node.recovered.state_hash == live_hash
    finally:
        node.close()
    # Without the snapshot the same journal cannot be replayed: refuse, don't guess.
    written.path.unlink()
    with pytest.raises(JournalCorruptError, match="journal starts at seq"):
        ExchangeNode(config)


def _node_with_snapshots_then_repair(tmp_path: Path, operator: bool = True) -> tuple[NodeConfig, int, int]:
    """Snapshots at seq A and B > A, then journal damage between them repaired away: the
    journal now ends before B, and the node refuses while B verifies. `operator`: the
    operator's repair of the data directory also moved B aside. Returns (config, A, B)."""
    config = node_config(tmp_path)
    node = ExchangeNode(config)
    submit_in_batches(node, fresh_orders(50, seed=10), 10)
    a = node.take_snapshot().seq
    submit_in_batches(node, fresh_orders(50, seed=11), 10)
    b = node.take_snapshot().seq
    node.close()
    journal_dir = tmp_path / "journal"
    (seg,) = sorted(journal_dir.iterdir())
    journal = FileJournal(journal_dir)
    rec = next(r for r, _ in journal.records(a + 15))
    journal.close()
    data = bytearray(seg.read_bytes())
    data[rec.offset + 30] ^= 0x01  # a bad checksum between the two snapshots
    seg.write_bytes(data)
    repair(journal_dir)
    with pytest.raises(TailDamageError, match=f"covers up to seq {b}"):
        ExchangeNode(config)
    if operator:
        truncate(plan(tmp_path))
        assert [s.seq for s in SnapshotStore(tmp_path / "snapshots").list()] == [a]
    return config, a, b


def test_snapshot_beyond_the_journal_is_skipped_by_recovery(tmp_path):
    config, a, b = _node_with_snapshots_then_repair(tmp_path)
    node = ExchangeNode(config)
    try:
        assert a < node.journal.last_seq < b
        rec = node.recovered
        assert rec.snapshot_seq == a
        assert rec.snapshots_skipped == 0  # the operator's repair moved b aside
        assert rec.replayed_commands == node.journal.last_seq - a
        assert rec.state_hash == full_replay_hash(node.journal)
    finally:
        node.close()


def test_snapshot_beyond_the_journal_is_counted_when_none_is_usable(tmp_path):
    config, a, b = _node_with_snapshots_then_repair(tmp_path, operator=False)
    (tmp_path / "snapshots" / f"snapshot-{a:020d}.snap").unlink()
    beyond = tmp_path / "snapshots" / f"snapshot-{b:020d}.snap"
    beyond.write_bytes(_flip(beyond.read_bytes(), HEADER.size + 3))  # proves nothing now
    node = ExchangeNode(config)
    try:
        assert node.recovered.snapshot_seq == 0
        assert node.recovered.state_hash == full_replay_hash(node.journal)
        assert node.recovered.snapshots_skipped == 1
    finally:
        node.close()


def test_stale_snapshot_from_before_a_repair_is_never_used(tmp_path):
    config, _, b = _node_with_snapshots_then_repair(tmp_path)
    node = ExchangeNode(config)
    submit_in_batches(node, fresh_orders(80, seed=12), 10)  # a new history, past b
    assert node.engine.last_seq > b
    live_hash = state_hash(node.engine)
    node.close()
    node = ExchangeNode(config)
    try:
        assert full_replay_hash(node.journal) == live_hash
        assert node.recovered.state_hash == live_hash  # fails: snapshot b + new journal
        assert node.recovered.snapshot_seq != b
    finally:
        node.close()


def test_snapshot_files_are_fsynced_complete(tmp_path):
    """What `write` reports is exactly what is on disk and loads back."""
    store = SnapshotStore(tmp_path)
    written = store.write(engine_at(123))
    data = written.path.read_bytes()
    assert len(data) == written.size == os.path.getsize(written.path)
    assert decode_snapshot(data).state_hash == written.state_hash


def test_a_restored_book_shares_one_object_per_repeated_value():
    """Decoding gives each order its own copy of its account, symbol, price and client order
    id; the restore shares them (as live orders do), so a deep book restored from a snapshot
    is not ~150 bytes an order bigger than the book it was taken of."""
    engine = engine_at(400)
    restored = decode_snapshot(encode_snapshot(engine)[0]).engine
    orders = [o for acct in restored.accounts.values() for o in acct.open.values()]
    assert len(orders) > 20
    for o in orders:
        acct = restored.accounts[o.account]
        assert o.account is next(a for a in restored.accounts if a == o.account)
        assert o.symbol is restored.books[o.symbol].symbol
        assert o.price is restored.books[o.symbol].side(o.side).levels[o.price].price
        assert o.client_order_id is next(c for c in acct.by_clid if c == o.client_order_id)
    assert state_hash(restored) == state_hash(engine)
