"""Snapshot-based retention of the replicated journal, on the real 3-server NATS cluster:
where a purge stops (never past what a snapshot covers, never the batch holding the
snapshot's seq, the margin kept), reads that would need a purged batch refusing instead of
skipping, and recovery from the replicated snapshot (verified, damaged ones skipped) or a
clear refusal naming the missing seqs."""

from __future__ import annotations

import pytest
from journal_contract import flatten, make_batches
from natsproc import unique_stream

from engine.cluster.journal import NatsJournal
from engine.cluster.retention import Retention
from engine.cluster.snapshot_store import ReplicatedSnapshots, object_name
from engine.core.commands import ListInstrument, NewOrder
from engine.core.domain import Instrument, OrderType, Side
from engine.core.matcher import MatchingEngine
from engine.core.state import state_hash
from engine.journal import JournalError, RecoveryGapError
from engine.recovery import recover
from engine.snapshots import SnapshotStore, encode_snapshot

SIZES = [3, 3, 3, 3]  # batches 1..3, 4..6, 7..9, 10..12


@pytest.fixture
def filled(nats_link):
    """A new stream holding SIZES, and an engine that applied every command."""
    names = unique_stream()
    journal = NatsJournal(nats_link, *names)
    batches = make_batches(SIZES)
    for batch in batches:
        journal.append(batch)
    yield journal, batches, names
    journal.close()


def engine_at(batches: list[list], seq: int) -> MatchingEngine:
    engine = MatchingEngine([])
    for cmd in flatten(batches)[:seq]:
        engine.apply(cmd)
    return engine


def seqs(journal: NatsJournal, from_seq: int) -> list[int]:
    return [c.seq for c in journal.read(from_seq)]


@pytest.mark.parametrize(
    ("snapshot_seq", "keep", "first"),
    [
        (7, 0, 7),  # batches wholly below 7 go; 7..9 holds the first command not covered
        (6, 0, 4),  # the batch holding the snapshot's own seq stays
        (12, 4, 7),  # margin: commands 9..12 stay, so 7..9 (holding 9) stays
        (12, 0, 10),  # at the tail: the last batch always stays
        (3, 5, 1),  # the margin reaches before seq 1: nothing goes
    ],
)
def test_a_purge_stops_at_the_snapshot_and_its_margin(filled, nats_link, snapshot_seq, keep, first):
    journal, batches, names = filled
    purged = nats_link.call(journal.purge_covered(snapshot_seq, keep))
    assert purged == (first - 1) // 3  # whole batches of 3, nothing else in the stream
    assert journal.first_command_seq() == first
    # Everything from the first kept command on reads back as written...
    assert seqs(journal, first) == list(range(first, 13))
    assert first <= snapshot_seq + 1  # ...which is all a snapshot at snapshot_seq needs
    if first > 1:  # ...and anything before it refuses instead of skipping to it
        with pytest.raises(RecoveryGapError, match=f"commands {first - 1}..{first - 1} are missing"):
            seqs(journal, first - 1)
        with pytest.raises(RecoveryGapError, match=f"commands 1..{first - 1} are missing"):
            seqs(journal, 1)
    # A reopened journal still knows its tail and the venue (the first command's ts).
    reopened = NatsJournal(nats_link, *names)
    assert reopened.last_seq == 12 and reopened.expected == 4
    assert reopened.venue_id == batches[0][0].ts


def test_a_purge_beyond_the_stream_is_refused(filled, nats_link):
    journal, _batches, _names = filled
    with pytest.raises(JournalError, match="beyond the stream's last seq 12"):
        nats_link.call(journal.purge_covered(13, 0))
    assert journal.first_command_seq() == 1


def test_appends_continue_after_a_purge(filled, nats_link):
    journal, batches, _names = filled
    nats_link.call(journal.purge_covered(9, 0))
    more = make_batches([2], start=13)
    journal.append(more[0])
    assert seqs(journal, 7) == list(range(7, 15))
    assert journal.venue_id == batches[0][0].ts


def store_for(nats_link, names) -> ReplicatedSnapshots:
    return ReplicatedSnapshots(nats_link, f"{names[0].lower()}_snaps")


def test_recovery_takes_the_replicated_snapshot_or_refuses_naming_the_gap(filled, nats_link, tmp_path):
    journal, batches, names = filled
    store = store_for(nats_link, names)
    data, digest = encode_snapshot(engine_at(batches, 8))
    nats_link.call(store.put(8, digest, data))
    nats_link.call(journal.purge_covered(8, 0))
    assert journal.first_command_seq() == 7
    want = state_hash(engine_at(batches, 12))

    # No local snapshot: the replicated one (seq 8) is fetched, verified and kept locally.
    local = SnapshotStore(tmp_path / "a")
    rec = recover(journal, local, replicated=store)
    assert (rec.snapshot_source, rec.snapshot_seq, rec.replayed_commands) == ("replicated", 8, 4)
    assert rec.state_hash == want and rec.engine.last_seq == 12
    assert [s.seq for s in local.list()] == [8]
    again = recover(journal, local, replicated=store)  # the next start needs no download
    assert (again.snapshot_source, again.state_hash) == ("local", want)

    # A local snapshot older than the stream's start, and no replicated store: refused.
    old = SnapshotStore(tmp_path / "b")
    old.write(engine_at(batches, 5))
    with pytest.raises(RecoveryGapError) as refused:
        recover(journal, old)
    assert "commands 6..6 are missing" in str(refused.value)
    assert "journal starts at seq 7 but the state needs it from 6" in str(refused.value)
    assert "newest local snapshot at seq 5" in str(refused.value)
    # ...but with the replicated one it recovers.
    assert recover(journal, old, replicated=store).state_hash == want


def test_a_damaged_replicated_snapshot_is_skipped(filled, nats_link, tmp_path):
    journal, batches, names = filled
    store = store_for(nats_link, names)
    good, digest = encode_snapshot(engine_at(batches, 7))
    nats_link.call(store.put(7, digest, good))
    newer, newer_digest = encode_snapshot(engine_at(batches, 9))
    damaged = bytearray(newer)
    damaged[-1] ^= 0xFF  # the object store's own digest is of these bytes: only ours catches it
    nats_link.call(store.put(9, newer_digest, bytes(damaged)))
    nats_link.call(journal.purge_covered(7, 0))

    rec = recover(journal, SnapshotStore(tmp_path / "a"), replicated=store)
    assert (rec.snapshot_source, rec.snapshot_seq) == ("replicated", 7)
    assert rec.state_hash == state_hash(engine_at(batches, 12))
    assert store.load_failures == 1

    # Only the damaged one covers the stream's start: refused, saying why.
    nats_link.call(journal.purge_covered(9, 0))
    assert journal.first_command_seq() == 7  # the batch holding 9 starts at 7: still covered by 7
    nats_link.call(store.store.delete(object_name(7)))
    with pytest.raises(RecoveryGapError) as refused:
        recover(journal, SnapshotStore(tmp_path / "b"), replicated=store)
    assert "commands 1..6 are missing" in str(refused.value)
    assert "newest replicated one at seq 9, 2 failed verification" in str(refused.value)


def test_retention_stores_the_snapshot_before_purging_and_prunes_old_ones(filled, nats_link, tmp_path):
    journal, batches, names = filled
    store = store_for(nats_link, names)
    leading = True
    retention = Retention(journal, store, lambda: leading, keep_commands=2, keep_snapshots=2)
    local = SnapshotStore(tmp_path / "snaps", keep=5)

    def snapshot_and_wait(seq: int) -> None:
        retention.on_snapshot(local.write(engine_at(batches, seq)))
        nats_link.call(retention.idle.wait())

    snapshot_and_wait(6)  # boundary min(5, 4) = 4: batch 1..3 goes, 4..6 stays
    assert [s.seq for s in nats_link.call(store.list())] == [6]
    assert journal.first_command_seq() == 4
    assert (retention.stats.uploads_ok, retention.stats.purges, retention.stats.purged_messages) == (1, 1, 1)
    snapshot_and_wait(9)
    snapshot_and_wait(12)  # boundary 10: 1..9 gone, 10..12 stays
    assert [s.seq for s in nats_link.call(store.list())] == [9, 12]  # keep_snapshots = 2
    assert journal.first_command_seq() == 10
    assert retention.stats.purged_messages == 3

    # A node that does not lead neither uploads nor purges.
    leading = False
    retention.on_snapshot(local.write(engine_at(batches, 12)))
    nats_link.call(retention.idle.wait())
    assert retention.stats.uploads_ok == 3

    # What is left recovers to the same state from nothing local.
    rec = recover(journal, SnapshotStore(tmp_path / "new"), replicated=store)
    assert (rec.snapshot_seq, rec.state_hash) == (12, state_hash(engine_at(batches, 12)))


def test_a_snapshot_larger_than_a_nats_message_round_trips(nats_link, tmp_path):
    """Object Store chunks: a snapshot well past max_payload (1 MB) comes back verified."""
    engine = MatchingEngine([])
    listing = ListInstrument(Instrument("BTC-USD", tick_size=1, lot_size=1))
    orders = [
        NewOrder(f"acct{i % 50}", f"c{i}", "BTC-USD", int(Side.BUY), int(OrderType.LIMIT), 1 + i % 5000, 1)
        for i in range(40_000)
    ]
    for seq, cmd in enumerate([listing, *orders], start=1):
        cmd.seq, cmd.ts = seq, seq
        engine.apply(cmd)
    data, digest = encode_snapshot(engine)
    assert len(data) > 1_200_000
    store = store_for(nats_link, unique_stream())
    nats_link.call(store.put(engine.last_seq, digest, data))
    loaded = store.load_newest_valid(engine.last_seq)
    assert loaded is not None and loaded.state_hash == state_hash(engine) == digest
    assert store.load_newest_valid(engine.last_seq - 1) is None  # beyond the journal: not used
