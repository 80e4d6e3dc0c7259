"""Damage at the journal's end that may hide acknowledged commands is not a torn tail
(issue 11, README "Durability").

The drill: orders acknowledged (each `submit` returned: journaled and fdatasync'd), a
verified snapshot covering them, then the last record damaged in place (full length, bad
checksum). The node refuses to start, at ERROR level, naming the file, the byte offset, the
seqs and the covering snapshot, and changes nothing, until `loom journal repair` (truncate,
keeping the cut bytes) or `loom journal repair --use-snapshot` (keep the snapshot's state,
a fresh journal after it). After either, the node starts with the state a replay of what
was kept gives. A record cut short by a crash is still truncated on its own.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_app_run import NO_LISTENERS, REPO, STARTUP_S, clean_env
from test_journal_damage import records_of
from test_snapshots import fresh_orders, node_config, submit_in_batches

from engine.bench.workload import INSTRUMENT
from engine.core.matcher import MatchingEngine
from engine.core.state import state_hash
from engine.exchange import ExchangeNode
from engine.journal import TailDamageError
from engine.journal.format import RECORD_HEADER, RecordInfo
from engine.journal.segments import REPAIRED_DIR, VENUE_FILE, FileJournal, scan
from engine.snapshots import WrittenSnapshot

ORDERS, BATCH = 60, 10


def acked_history(data: Path, snapshot_at_end: bool = True) -> WrittenSnapshot:
    """ORDERS orders in batches of BATCH, every batch acknowledged; a snapshot after the
    first half, and (snapshot_at_end) one covering the last batch too. Returns the newest."""
    node = ExchangeNode(node_config(data))
    try:
        orders = fresh_orders(ORDERS, seed=21)
        submit_in_batches(node, orders[: ORDERS // 2], BATCH)
        written = node.take_snapshot()
        submit_in_batches(node, orders[ORDERS // 2 :], BATCH)
        if snapshot_at_end:
            written = node.take_snapshot()
        assert written.seq <= node.journal.last_seq
        return written
    finally:
        node.close()


def last_record(data: Path) -> tuple[Path, RecordInfo]:
    (path, *_) = sorted((data / "journal").glob("*.seg"), reverse=True)
    return path, records_of(path.read_bytes())[-1]


def damage_last_record(data: Path) -> tuple[Path, RecordInfo, bytes]:
    """Flip one payload bit of the last record: full length, bad checksum. Returns the
    segment, the record (as it was) and the segment's bytes after the damage."""
    path, rec = last_record(data)
    body = bytearray(path.read_bytes())
    body[rec.offset + RECORD_HEADER.size + 5] ^= 0x04
    path.write_bytes(bytes(body))
    return path, rec, bytes(body)


def replay_hash(data: Path) -> tuple[int, str]:
    """(last seq, state hash) of a fresh engine fed the whole journal from seq 1."""
    journal = FileJournal(data / "journal", read_only=True)
    engine = MatchingEngine([])
    for cmd in journal.read(1):
        engine.apply(cmd)
    journal.close()
    return engine.last_seq, state_hash(engine)


def loom(*args: str, timeout: float = STARTUP_S) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def config_file(tmp_path: Path) -> Path:
    i = INSTRUMENT
    path = tmp_path / "loom.toml"
    path.write_text(
        f'[[instruments]]\nsymbol = "{i.symbol}"\ntick_size = {i.tick_size}\nlot_size = {i.lot_size}\n'
        f"min_qty = {i.min_qty}\nmax_qty = {i.max_qty}\n"
    )
    return path


# -- refusing -----------------------------------------------------------------------------


def test_bad_checksum_in_a_full_length_last_record_refuses_naming_file_offset_seqs_snapshot(tmp_path):
    data = tmp_path / "data"
    written = acked_history(data)
    path, rec, damaged = damage_last_record(data)
    assert written.seq == rec.last_seq  # the snapshot covers the damaged (acknowledged) batch
    with pytest.raises(TailDamageError) as info:
        ExchangeNode(node_config(data))
    exc = info.value
    assert (exc.path, exc.offset, exc.seq, exc.claimed_last) == (
        str(path),
        rec.offset,
        rec.first_seq,
        rec.last_seq,
    )
    assert (exc.snapshot, exc.snapshot_seq) == (str(written.path), written.seq)
    message = str(exc)
    for part in (
        str(path),
        f"at byte {rec.offset}",
        f"seq {rec.first_seq}..{rec.last_seq}",
        str(written.path),
    ):
        assert part in message, (part, message)
    assert "not a torn tail" in message and "loom journal repair" in message
    # Nothing was changed on the way: no truncation, the snapshot not set aside.
    assert path.read_bytes() == damaged
    assert written.path.exists()
    assert list((data / "snapshots").glob("*.stale")) == []


def test_loom_run_refuses_with_one_error_line_and_exit_3(tmp_path):
    data = tmp_path / "data"
    written = acked_history(data)
    path, rec, damaged = damage_last_record(data)
    result = loom("run", "--config", str(config_file(tmp_path)), "--data-dir", str(data), *NO_LISTENERS)
    assert result.returncode == 3, (result.returncode, result.stderr)
    assert "loom: ready" not in result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    (line,) = errors
    for part in (
        str(path),
        f"at byte {rec.offset}",
        f"seq {rec.first_seq}..{rec.last_seq}",
        str(written.path),
    ):
        assert part in line, (part, line)
    assert path.read_bytes() == damaged


def test_a_short_last_record_is_still_a_torn_tail_truncated_on_its_own(tmp_path):
    """A crash cuts the last record short: truncated, logged, counted; the start goes on
    from the snapshot that does not reach it."""
    data = tmp_path / "data"
    written = acked_history(data, snapshot_at_end=False)
    path, rec = last_record(data)
    assert written.seq < rec.first_seq
    end = path.stat().st_size
    for cut in (5, RECORD_HEADER.size + 3, end - rec.offset - 1):  # in the header, in the payload
        with open(path, "r+b") as f:
            f.truncate(rec.offset + cut)
        node = ExchangeNode(node_config(data))
        try:
            assert node.journal.torn_tail_truncations == 1
            assert node.engine.last_seq == rec.first_seq - 1
            assert node.recovered.snapshot_seq == written.seq
            assert path.stat().st_size == rec.offset
            assert node.recovered.state_hash == replay_hash(data)[1]
            node.submit(fresh_orders(BATCH, seed=99))  # the journal goes on
            assert node.engine.last_seq == rec.last_seq
        finally:
            node.close()


def test_a_short_last_record_under_a_covering_snapshot_refuses(tmp_path):
    """The same cut, but a verified snapshot covers the record: it was acknowledged, so
    truncating it would lose it."""
    data = tmp_path / "data"
    written = acked_history(data)
    path, rec = last_record(data)
    with open(path, "r+b") as f:
        f.truncate(rec.offset + RECORD_HEADER.size + 3)
    before = path.read_bytes()
    with pytest.raises(TailDamageError) as info:
        ExchangeNode(node_config(data))
    exc = info.value
    assert (exc.path, exc.offset, exc.seq) == (str(path), rec.offset, rec.first_seq)
    assert exc.snapshot == str(written.path)
    assert f"seq {rec.first_seq}..{written.seq}" in str(exc)
    assert path.read_bytes() == before


def test_a_journal_ending_before_a_verified_snapshot_refuses(tmp_path):
    """Whole records missing at the end (a lost segment, a tail lost with fsync off): the
    snapshot proves they existed."""
    data = tmp_path / "data"
    written = acked_history(data)
    path, rec = last_record(data)
    with open(path, "r+b") as f:
        f.truncate(rec.offset)  # exactly at a record boundary: nothing torn
    with pytest.raises(TailDamageError) as info:
        ExchangeNode(node_config(data))
    assert info.value.seq == rec.first_seq and info.value.snapshot_seq == written.seq
    assert f"no records after seq {rec.first_seq - 1}" in str(info.value)
    # A snapshot beyond the end that fails verification proves nothing: set aside as before.
    body = bytearray(written.path.read_bytes())
    body[-3] ^= 0x01
    written.path.write_bytes(bytes(body))
    node = ExchangeNode(node_config(data))
    try:
        assert node.engine.last_seq == rec.first_seq - 1
        assert node.recovered.snapshots_skipped == 1
        assert written.path.with_name(written.path.name + ".stale").exists()
    finally:
        node.close()


# -- repairing ----------------------------------------------------------------------------


def repaired_dir(data: Path) -> Path:
    (one,) = (data / "journal" / REPAIRED_DIR).iterdir()
    return one


def test_repair_truncates_keeps_the_cut_bytes_and_the_node_starts_at_a_replay_of_the_rest(tmp_path):
    data = tmp_path / "data"
    written = acked_history(data)
    path, rec, damaged = damage_last_record(data)

    dry = loom("journal", "repair", str(data))
    assert dry.returncode == 1, dry.stdout + dry.stderr
    assert f"seq {rec.first_seq}..{rec.last_seq}" in dry.stdout and "--yes" in dry.stdout
    assert path.read_bytes() == damaged and not (data / "journal" / REPAIRED_DIR).exists()

    done = loom("journal", "repair", str(data), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    cut = len(damaged) - rec.offset
    for part in (
        f"{cut:,} bytes from byte {rec.offset} of {path.name}",
        f"commands seq {rec.first_seq}..{rec.last_seq}",
        f"snapshot {written.path.name} (seq {written.seq})",
        f"the journal now holds seq 1..{rec.first_seq - 1}",
    ):
        assert part in out, (part, out)
    aside = repaired_dir(data)
    assert str(aside) in out
    assert (aside / f"{path.name}.from-{rec.offset}").read_bytes() == damaged[rec.offset :]
    assert (aside / "snapshots" / written.path.name).exists() and not written.path.exists()
    assert "truncate" in (aside / "REPAIR.txt").read_text()
    assert path.read_bytes() == damaged[: rec.offset]

    node = ExchangeNode(node_config(data))
    try:
        assert node.journal.torn_tail_truncations == 0
        assert node.engine.last_seq == rec.first_seq - 1
        assert (node.engine.last_seq, node.recovered.state_hash) == replay_hash(data)
        assert 0 < node.recovered.snapshot_seq < rec.first_seq  # the older snapshot still serves
    finally:
        node.close()


def test_repair_use_snapshot_keeps_the_snapshot_state_and_a_fresh_journal_continues(tmp_path):
    data = tmp_path / "data"
    written = acked_history(data)
    node = ExchangeNode(node_config(data))
    venue = node.venue_id
    node.close()
    path, _, damaged = damage_last_record(data)
    segments = sorted(p.name for p in (data / "journal").glob("*.seg"))

    done = loom("journal", "repair", str(data), "--use-snapshot", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for part in (
        f"kept: the state at seq {written.seq} from {written.path.name}",
        f"the journal starts afresh at seq {written.seq + 1}",
        "old segments",
        "moved aside",
    ):
        assert part in out, (part, out)
    aside = repaired_dir(data)
    assert sorted(p.name for p in aside.glob("*.seg")) == segments
    assert (aside / path.name).read_bytes() == damaged  # the old journal, damage and all
    assert int((data / "journal" / VENUE_FILE).read_text()) == venue

    node = ExchangeNode(node_config(data))
    try:
        assert node.engine.last_seq == written.seq
        assert node.recovered.state_hash == written.state_hash  # the snapshot's state, nothing replayed
        assert node.recovered.replayed_commands == 0
        assert node.venue_id == venue  # derived trace ids unchanged
        node.submit(fresh_orders(BATCH, seed=77))
        live = (node.engine.last_seq, state_hash(node.engine))
    finally:
        node.close()
    assert scan(data / "journal").first_seq == written.seq + 1
    node = ExchangeNode(node_config(data))  # snapshot + the fresh journal replayed
    try:
        assert (node.engine.last_seq, node.recovered.state_hash) == live
        assert node.recovered.replayed_commands == BATCH
    finally:
        node.close()


def test_repair_use_snapshot_without_a_covering_snapshot_is_refused(tmp_path):
    data = tmp_path / "data"
    acked_history(data, snapshot_at_end=False)
    path, _, damaged = damage_last_record(data)
    with pytest.raises(TailDamageError, match="no verified snapshot covers"):
        ExchangeNode(node_config(data))
    result = loom("journal", "repair", str(data), "--use-snapshot", "--yes")
    assert result.returncode == 1
    assert "no verified snapshot covers seqs beyond" in result.stderr
    assert path.read_bytes() == damaged
