"""FileJournal, scan and repair under damage: torn tails, bit flips, bad checksums in the
middle, sequence gaps.

The rule under test (README "Durability"): a torn tail — the last batch cut short by a
crash, never acknowledged — is truncated, logged and counted; damage anywhere else refuses
to start, naming the file, the byte offset and the sequence, until `repair()` truncates
there. A whole last record with wrong bytes is damage too (TailDamageError: it may be an
acknowledged batch), so no single bit flip anywhere is ever truncated away silently.
Whatever opens must read back exactly a prefix of what was written: never silently
different data.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from journal_contract import encoded, flatten, make_batches, make_commands

from engine.exchange import ExchangeNode, NodeConfig
from engine.journal import JournalCorruptError, TailDamageError
from engine.journal import segments as segments_mod
from engine.journal.format import (
    RECORD_HEADER,
    SEGMENT_HEADER,
    RecordInfo,
    encode_record,
    encode_segment_header,
    parse_record,
)
from engine.journal.segments import FileJournal, repair, scan, segment_name

SIZES = [3, 5, 2, 8, 4, 6, 1, 7, 2, 5]  # 43 commands in 10 records


# -- helpers -------------------------------------------------------------------------------


def build(directory: Path, sizes=SIZES, segment_bytes: int = 64 * 1024 * 1024) -> list[list]:
    """A healthy journal of batches of `sizes` commands; returns the batches."""
    journal = FileJournal(directory, segment_bytes, fsync=False)
    batches = make_batches(sizes)
    for batch in batches:
        journal.append(batch)
    journal.close()
    return batches


def segment_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix == ".seg")


def records_of(data: bytes) -> list[RecordInfo]:
    """Every record of a healthy segment file, in order."""
    buf = memoryview(data)
    out = []
    offset = SEGMENT_HEADER.size
    while offset < len(data):
        rec = parse_record(buf, offset)
        assert isinstance(rec, RecordInfo), rec
        out.append(rec)
        offset = rec.end
    return out


def prefix_until(batches: list[list], last_seq: int) -> list:
    return [c for c in flatten(batches) if c.seq <= last_seq]


def read_all(journal: FileJournal) -> bytes:
    return encoded(journal.read())


def assert_names_the_damage(exc: JournalCorruptError, path: Path, offset: int, seq: int | None) -> None:
    assert exc.path == str(path)
    assert exc.offset == offset
    assert exc.seq == seq
    message = str(exc)
    assert str(path) in message
    assert f"at byte {offset}" in message
    if isinstance(exc, TailDamageError):
        assert f"seq {seq}.." in message
    elif seq is not None:
        assert f"sequence {seq}" in message
    assert "refusing to start" in message


# -- (a) torn tails ------------------------------------------------------------------------


def test_torn_tail_at_every_byte_of_the_last_record(tmp_path):
    src = tmp_path / "src"
    batches = build(src)
    (seg,) = segment_files(src)
    data = seg.read_bytes()
    records = records_of(data)
    last, prev = records[-1], records[-2]
    assert last.end == len(data)
    prefix = prefix_until(batches, prev.last_seq)
    trial = tmp_path / "trial"
    trial.mkdir()
    target = trial / seg.name
    for k in range(last.offset + 1, last.end):
        target.write_bytes(data[:k])
        journal = FileJournal(trial, fsync=False)
        try:
            assert journal.last_seq == prev.last_seq, k
            assert journal.torn_tail_truncations == 1, k
            assert journal.torn_tail_bytes == k - last.offset, k
            assert target.stat().st_size == prev.end, k
            assert read_all(journal) == encoded(prefix), k
            new = make_commands(2, prev.last_seq + 1)
            journal.append(new)
            assert read_all(journal) == encoded(prefix + new), k
        finally:
            journal.close()
    # The last append is durable and whole: a restart finds no torn tail.
    journal = FileJournal(trial, fsync=False)
    assert journal.torn_tail_truncations == 0
    assert journal.last_seq == prev.last_seq + 2
    journal.close()


def test_cut_exactly_at_a_record_boundary_is_not_a_torn_tail(tmp_path):
    src = tmp_path / "src"
    batches = build(src)
    (seg,) = segment_files(src)
    data = seg.read_bytes()
    for rec in records_of(data):
        seg.write_bytes(data[: rec.end])
        journal = FileJournal(src, fsync=False)
        assert journal.torn_tail_truncations == 0
        assert journal.last_seq == rec.last_seq
        assert read_all(journal) == encoded(prefix_until(batches, rec.last_seq))
        journal.close()


def test_torn_tail_in_a_new_last_segment(tmp_path):
    """After a rollover the last record is alone in its segment: a cut anywhere in it leaves
    the segment with its header only, still the one appends go to."""
    src = tmp_path / "src"
    batches = build(src, [5, 6, 5, 7], segment_bytes=300)  # one record per segment
    files = segment_files(src)
    assert len(files) == 4
    data = files[-1].read_bytes()
    (last,) = records_of(data)
    prefix = prefix_until(batches, last.first_seq - 1)
    trial = tmp_path / "trial"
    for k in range(SEGMENT_HEADER.size, last.end):
        shutil.rmtree(trial, ignore_errors=True)
        shutil.copytree(src, trial)
        (trial / files[-1].name).write_bytes(data[:k])
        journal = FileJournal(trial, 300, fsync=False)
        try:
            assert journal.torn_tail_truncations == (0 if k == SEGMENT_HEADER.size else 1), k
            assert journal.last_seq == last.first_seq - 1
            assert (trial / files[-1].name).stat().st_size == SEGMENT_HEADER.size
            assert read_all(journal) == encoded(prefix)
            new = make_commands(3, last.first_seq)
            journal.append(new)
            assert read_all(journal) == encoded(prefix + new)
        finally:
            journal.close()


@pytest.mark.parametrize("k", range(1, SEGMENT_HEADER.size))
def test_partial_segment_header_in_a_new_last_segment(tmp_path, k):
    """A crash while creating a segment: its header is cut short. Nothing in it was ever
    acknowledged, so the file is removed and the journal goes on from the previous one."""
    batches = build(tmp_path, segment_bytes=400)
    before = segment_files(tmp_path)
    next_seq = batches[-1][-1].seq + 1
    partial = tmp_path / segment_name(next_seq)
    partial.write_bytes(encode_segment_header(next_seq)[:k])
    journal = FileJournal(tmp_path, 400, fsync=False)
    try:
        assert journal.torn_tail_truncations == 1
        assert journal.torn_tail_bytes == k
        assert not partial.exists()
        assert segment_files(tmp_path) == before
        assert journal.last_seq == next_seq - 1
        assert read_all(journal) == encoded(flatten(batches))
        new = make_commands(2, next_seq)
        journal.append(new)
        assert read_all(journal) == encoded(flatten(batches) + new)
    finally:
        journal.close()
    reopened = FileJournal(tmp_path, 400, fsync=False)
    assert reopened.torn_tail_truncations == 0
    assert read_all(reopened) == encoded(flatten(batches) + new)
    reopened.close()


def test_empty_new_last_segment_is_removed(tmp_path):
    # A segment just big enough for records of 10, 10 and 1 commands (measured, not assumed:
    # the commands' encoding grows with their fields), so a record of 10 more rolls over.
    reference = tmp_path / "reference"
    reference.mkdir()
    build(reference, [10, 10, 1])
    segment_bytes = segment_files(reference)[0].stat().st_size
    journal_dir = tmp_path / "journal"
    journal_dir.mkdir()
    tmp_path = journal_dir
    batches = build(tmp_path, [10, 10], segment_bytes=segment_bytes)
    assert len(segment_files(tmp_path)) == 1
    next_seq = batches[-1][-1].seq + 1
    empty = tmp_path / segment_name(next_seq)
    empty.write_bytes(b"")  # the crash: rolling over for a third batch of 10, header unwritten
    journal = FileJournal(tmp_path, segment_bytes, fsync=False)
    assert journal.last_seq == next_seq - 1
    # After the restart the next batch is small and still fits in the first segment; the one
    # after it rolls over to a segment named after a higher seq, sorted after the empty file.
    more = make_batches([1, 10], next_seq)
    for batch in more:
        journal.append(batch)
    journal.close()
    reopened = FileJournal(tmp_path, segment_bytes, fsync=False)
    assert read_all(reopened) == encoded(flatten(batches + more))
    reopened.close()


@pytest.mark.parametrize("garbage", [b"\0", b"\0" * 23, b"\0" * 24, b"\0" * 4096, b"\xff" * 100])
def test_garbage_after_the_last_record_is_a_torn_tail(tmp_path, garbage):
    batches = build(tmp_path)
    (seg,) = segment_files(tmp_path)
    size = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(garbage)
    journal = FileJournal(tmp_path, fsync=False)
    try:
        assert journal.torn_tail_truncations == 1
        assert journal.torn_tail_bytes == len(garbage)
        assert seg.stat().st_size == size
        assert read_all(journal) == encoded(flatten(batches))
        new = make_commands(1, journal.last_seq + 1)
        journal.append(new)
        assert read_all(journal) == encoded(flatten(batches) + new)
    finally:
        journal.close()


def test_scan_reports_a_torn_tail_without_changing_anything(tmp_path):
    batches = build(tmp_path)
    (seg,) = segment_files(tmp_path)
    data = seg.read_bytes()
    seg.write_bytes(data[:-5])
    report = scan(tmp_path)
    assert report.damage is None
    assert report.torn_tail_path == str(seg)
    assert report.torn_tail_bytes == len(data) - records_of(data)[-2].end - 5
    assert report.last_seq == batches[-2][-1].seq
    assert seg.read_bytes() == data[:-5]  # scan is read-only


# -- (b) single bit flips ------------------------------------------------------------------


def flip_positions(data: bytes, records: list[RecordInfo], seed: int, sample: int) -> list[int]:
    """Every byte of the segment header and of the first and last records, plus a seeded
    random sample of the bytes in between."""
    first, last = records[0], records[-1]
    chosen = set(range(0, first.end)) | set(range(last.offset, last.end))
    middle = range(first.end, last.offset)
    chosen |= set(random.Random(seed).sample(middle, min(sample, len(middle))))
    return sorted(chosen)


def check_flip(directory: Path, files: dict[str, bytes], name: str, pos: int, bit: int, batches, expect):
    """Flip one bit of one file; the journal must refuse to open, naming the damage as
    `expect` says ("tail": the journal's last record, refused as TailDamageError)."""
    for fname, content in files.items():
        body = bytearray(content)
        if fname == name:
            body[pos] ^= 1 << bit
        (directory / fname).write_bytes(body)
    target = directory / name
    kind, offset, seq = expect(name, pos)
    where = f"{name} byte {pos} bit {bit}"
    with pytest.raises(JournalCorruptError) as info:
        FileJournal(directory, fsync=False).close()
    assert isinstance(info.value, TailDamageError) == (kind == "tail"), where
    assert_names_the_damage(info.value, target, offset, seq)
    assert (directory / name).stat().st_size == len(files[name]), where  # nothing truncated


def test_single_bit_flips_in_one_segment_never_yield_different_data(tmp_path):
    src = tmp_path / "src"
    sizes = [4, 6, 3, 8, 5, 2, 7, 4, 6, 3, 5, 4, 6, 2, 5, 3, 4, 6, 5, 4]
    batches = build(src, sizes)
    (seg,) = segment_files(src)
    data = seg.read_bytes()
    records = records_of(data)
    assert len(records) == 20

    def expect(name, pos):
        if pos < SEGMENT_HEADER.size:
            return "damage", 0, None
        rec = next(r for r in records if r.offset <= pos < r.end)
        if rec is records[-1]:  # whole, so not torn: it may be an acknowledged batch
            return "tail", rec.offset, rec.first_seq
        return "damage", rec.offset, rec.first_seq

    trial = tmp_path / "trial"
    trial.mkdir()
    rng = random.Random(7)
    positions = flip_positions(data, records, seed=11, sample=1500)
    every_bit = set(range(records[0].end)) | set(range(records[-1].offset, records[-1].end))
    outcomes = {"damage": 0, "tail": 0}
    for pos in positions:
        for bit in range(8) if pos in every_bit else [rng.randrange(8)]:
            check_flip(trial, {seg.name: data}, seg.name, pos, bit, batches, expect)
            outcomes[expect(seg.name, pos)[0]] += 1
    assert len(positions) > 1500
    assert outcomes["tail"] == 8 * (records[-1].end - records[-1].offset)
    assert outcomes["damage"] > 2500


def test_single_bit_flips_across_segments(tmp_path):
    """A flip anywhere refuses; only in the last record of the last segment is it tail
    damage (the last record of an earlier segment was followed by more data)."""
    src = tmp_path / "src"
    batches = build(src, [3, 4, 2, 5, 3, 4, 2, 5, 3, 4], segment_bytes=700)
    paths = segment_files(src)
    assert len(paths) >= 3
    files = {p.name: p.read_bytes() for p in paths}
    layout = {name: records_of(data) for name, data in files.items()}
    last_name = paths[-1].name
    first_seqs = {name: recs[0].first_seq for name, recs in layout.items()}

    def expect(name, pos):
        records = layout[name]
        if pos < SEGMENT_HEADER.size:
            return "damage", 0, None if name == paths[0].name else first_seqs[name]
        rec = next(r for r in records if r.offset <= pos < r.end)
        if name == last_name and rec is records[-1]:
            return "tail", rec.offset, rec.first_seq
        return "damage", rec.offset, rec.first_seq

    trial = tmp_path / "trial"
    trial.mkdir()
    rng = random.Random(3)
    checked = 0
    for name, data in files.items():
        records = layout[name]
        for pos in flip_positions(data, records, seed=len(data), sample=150):
            check_flip(trial, files, name, pos, rng.randrange(8), batches, expect)
            checked += 1
    assert checked > 500


# -- (c) a bad checksum in the middle ------------------------------------------------------


def damaged_middle(directory: Path, segment_bytes: int = 500):
    """A journal of several segments with one bad checksum in the middle of a middle
    segment; returns (batches, damaged path, damaged record)."""
    batches = build(directory, [3, 2, 4, 1, 5, 2, 3, 4, 2, 3, 1, 4, 2, 5, 3], segment_bytes)
    paths = segment_files(directory)
    assert len(paths) >= 4
    path = paths[len(paths) // 2]
    data = bytearray(path.read_bytes())
    records = records_of(bytes(data))
    assert len(records) >= 2
    rec = records[len(records) // 2]
    crc_at = rec.offset + RECORD_HEADER.size - 4
    data[crc_at] ^= 0x10
    path.write_bytes(data)
    return batches, path, rec


def test_bad_checksum_in_the_middle_refuses_to_start(tmp_path):
    journal_dir = tmp_path / "node" / "journal"
    _, path, rec = damaged_middle(journal_dir)
    with pytest.raises(JournalCorruptError) as info:
        FileJournal(journal_dir)
    assert_names_the_damage(info.value, path, rec.offset, rec.first_seq)
    assert "checksum mismatch" in str(info.value)
    report = scan(journal_dir)
    assert report.damage is not None
    assert (report.damage.path, report.damage.offset) == (str(path), rec.offset)
    # The node does not start either, and changes nothing on the way.
    before = {p.name: p.read_bytes() for p in segment_files(journal_dir)}
    with pytest.raises(JournalCorruptError):
        ExchangeNode(NodeConfig(tmp_path / "node"))
    assert {p.name: p.read_bytes() for p in segment_files(journal_dir)} == before


def test_repair_truncates_at_the_damage_and_removes_later_segments(tmp_path):
    batches, path, rec = damaged_middle(tmp_path)
    later = [p for p in segment_files(tmp_path) if p.name > path.name]
    assert later
    before = {p.name: p.read_bytes() for p in [path, *later]}
    report = repair(tmp_path)
    assert report.damage is not None
    damage = report.damage
    assert (damage.path, damage.offset, damage.seq) == (str(path), rec.offset, rec.first_seq)
    assert all(not p.exists() for p in later)
    assert path.stat().st_size == rec.offset
    # Nothing is destroyed: the cut bytes and the later segments are kept aside.
    (aside,) = (tmp_path / segments_mod.REPAIRED_DIR).iterdir()
    assert (aside / f"{path.name}.from-{rec.offset}").read_bytes() == before[path.name][rec.offset :]
    assert {p.name: (aside / p.name).read_bytes() for p in later} == {p.name: before[p.name] for p in later}
    assert scan(tmp_path).damage is None
    journal = FileJournal(tmp_path, 500, fsync=False)
    try:
        assert journal.torn_tail_truncations == 0
        assert journal.last_seq == rec.first_seq - 1
        prefix = prefix_until(batches, rec.first_seq - 1)
        assert read_all(journal) == encoded(prefix)
        new = make_commands(4, rec.first_seq)
        journal.append(new)
        assert read_all(journal) == encoded(prefix + new)
    finally:
        journal.close()
    # Repairing a healthy journal changes nothing.
    before = {p.name: p.read_bytes() for p in segment_files(tmp_path)}
    assert repair(tmp_path).damage is None
    assert {p.name: p.read_bytes() for p in segment_files(tmp_path)} == before


def test_repair_of_a_damaged_segment_header_removes_that_segment(tmp_path):
    batches = build(tmp_path, [3, 2, 4, 1, 5, 2, 3, 4], segment_bytes=400)
    paths = segment_files(tmp_path)
    victim = paths[2]
    first_seq = records_of(victim.read_bytes())[0].first_seq
    data = bytearray(victim.read_bytes())
    data[3] ^= 0x01  # inside the magic
    victim.write_bytes(data)
    with pytest.raises(JournalCorruptError) as info:
        FileJournal(tmp_path)
    assert_names_the_damage(info.value, victim, 0, first_seq)
    repair(tmp_path)
    assert segment_files(tmp_path) == paths[:2]
    journal = FileJournal(tmp_path, 400, fsync=False)
    assert read_all(journal) == encoded(prefix_until(batches, first_seq - 1))
    journal.close()


def test_repair_truncates_a_torn_tail(tmp_path):
    batches = build(tmp_path)
    (seg,) = segment_files(tmp_path)
    with open(seg, "ab") as f:
        f.write(b"\0" * 10)
    report = repair(tmp_path)
    assert report.damage is None
    assert report.torn_tail_bytes == 10
    assert scan(tmp_path).torn_tail_bytes == 0
    journal = FileJournal(tmp_path)
    assert journal.torn_tail_truncations == 0
    assert read_all(journal) == encoded(flatten(batches))
    journal.close()


# -- (d) sequence gaps ---------------------------------------------------------------------


def test_missing_middle_segment_refuses_to_start(tmp_path):
    journal_dir = tmp_path / "node" / "journal"
    batches = build(journal_dir, [3, 2, 4, 1, 5, 2, 3, 4], segment_bytes=400)
    paths = segment_files(journal_dir)
    assert len(paths) >= 4
    gone = paths[2]
    gone_first = records_of(gone.read_bytes())[0].first_seq
    gone.unlink()
    with pytest.raises(JournalCorruptError) as info:
        FileJournal(journal_dir)
    assert_names_the_damage(info.value, paths[3], 0, gone_first)
    assert "sequence gap" in str(info.value)
    with pytest.raises(JournalCorruptError):
        ExchangeNode(NodeConfig(tmp_path / "node"))
    # repair cuts the journal back to before the gap.
    repair(journal_dir)
    assert segment_files(journal_dir) == paths[:2]
    journal = FileJournal(journal_dir)
    assert read_all(journal) == encoded(prefix_until(batches, gone_first - 1))
    journal.close()


def test_sequence_gap_between_records_refuses_to_start(tmp_path):
    """Two valid records whose seqs do not follow on (1..3 then 5..6)."""
    first, second = make_commands(3, 1), make_commands(2, 5)
    path = tmp_path / segment_name(1)
    head = encode_segment_header(1)
    rec1 = encode_record(first)
    path.write_bytes(head + rec1 + encode_record(second))
    with pytest.raises(JournalCorruptError) as info:
        FileJournal(tmp_path)
    assert_names_the_damage(info.value, path, len(head) + len(rec1), 4)
    assert "sequence gap" in str(info.value)


def test_segment_named_after_one_seq_but_starting_at_another_refuses(tmp_path):
    batches = build(tmp_path, [3, 3, 3], segment_bytes=150)
    paths = segment_files(tmp_path)
    assert len(paths) == 3
    # Rewrite the second segment so its header claims a later first seq than expected.
    body = paths[1].read_bytes()[SEGMENT_HEADER.size :]
    paths[1].write_bytes(encode_segment_header(99) + body)
    with pytest.raises(JournalCorruptError) as info:
        FileJournal(tmp_path)
    assert_names_the_damage(info.value, paths[1], 0, batches[1][0].seq)


@pytest.mark.parametrize("window", [1, 7, 30, 64, 100, 1000, 100_000])
def test_segments_read_in_windows_of_any_size(tmp_path, monkeypatch, window):
    """FileJournal.records reads a segment in windows: records cut by a window's end are
    read whole, from every starting seq, across segments."""
    batches = build(tmp_path, segment_bytes=700)
    monkeypatch.setattr(segments_mod, "READ_WINDOW", window)
    journal = FileJournal(tmp_path, read_only=True)
    assert len(journal.segments) > 1
    commands = flatten(batches)
    for from_seq in (1, 2, 9, 20, len(commands)):
        assert encoded(journal.read(from_seq)) == encoded(commands[from_seq - 1 :])
        replayed = [c.seq for batch in journal.replay_batches(from_seq) for c in batch]
        assert replayed == list(range(from_seq, len(commands) + 1))
    journal.close()


def test_damage_after_the_scan_is_named_at_its_file_offset(tmp_path, monkeypatch):
    build(tmp_path)
    monkeypatch.setattr(segments_mod, "READ_WINDOW", 50)
    journal = FileJournal(tmp_path, read_only=True)
    (path,) = segment_files(tmp_path)
    data = bytearray(path.read_bytes())
    victim = records_of(bytes(data))[6]
    data[victim.offset + RECORD_HEADER.size + 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorruptError) as info:
        list(journal.read())
    assert info.value.offset == victim.offset
    assert info.value.path == str(path)
    journal.close()
