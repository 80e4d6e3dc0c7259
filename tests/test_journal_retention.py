"""Journal segment retention on the standalone node (engine/journal/retention.py): after a
snapshot, segments no kept snapshot needs are archived or deleted; recovery, the fallback
past a damaged snapshot and order lookups keep working, and a crash mid-way leaves a
journal that recovers."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from loomproc import loom_run

import engine.journal.retention as retention_mod
from engine.bench.workload import INSTRUMENT, generate
from engine.cli import main as loom_main
from engine.config import ConfigError, load_config
from engine.core.events import OrderAccepted
from engine.core.state import state_hash
from engine.exchange import ExchangeNode, NodeConfig
from engine.journal import RecoveryGapError
from engine.journal.retention import RetentionStats, retirable, retire
from engine.journal.segments import FileJournal, scan
from engine.order_history import JournalRangeGone, order_history
from engine.snapshots import HEADER, SnapshotStore
from telemetry.trace_ids import derived_trace_id

WORKLOAD = generate(400, seed=5).commands  # stamped 1..400


def node_config(data_dir: Path, policy: str, **kw) -> NodeConfig:
    kw.setdefault("snapshot_every_commands", 60)
    kw.setdefault("snapshot_every_s", 0)
    kw.setdefault("segment_bytes", 2048)  # many small segments
    kw.setdefault("keep_snapshots", 3)
    return NodeConfig(data_dir, instruments=(INSTRUMENT,), journal_retention=policy, **kw)


def run_node(data_dir: Path, policy: str, orders: int = 400, **kw) -> tuple[str, int]:
    """A node fed `orders` workload commands in batches of 10; (state hash, venue id)."""
    node = ExchangeNode(node_config(data_dir, policy, **kw))
    try:
        commands = generate(orders, seed=11).commands
        for i in range(0, len(commands), 10):
            node.submit(commands[i : i + 10])
        return state_hash(node.engine), node.venue_id
    finally:
        node.close()


def live_and_archived(data_dir: Path) -> tuple[list, list]:
    journal = data_dir / "journal"
    archive = journal / "archive"
    return scan(journal).segments, scan(archive).segments if archive.is_dir() else []


def oldest_kept(data_dir: Path) -> int:
    return SnapshotStore(data_dir / "snapshots").list()[0].seq


def damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[HEADER.size + 10] ^= 1
    path.write_bytes(bytes(data))


# -- which segments may go ------------------------------------------------------------------


def test_only_closed_head_segments_wholly_at_or_below_the_seq_are_retirable(tmp_path):
    journal = FileJournal(tmp_path / "journal", segment_bytes=2048, fsync=False)
    try:
        for i in range(0, 200, 10):
            journal.append(WORKLOAD[i : i + 10])
        segs = list(journal.segments)
        assert len(segs) >= 4
        boundary = segs[1].last_seq
        assert retirable(journal, boundary) == segs[:2]  # last record exactly at the seq: goes
        assert retirable(journal, boundary - 1) == segs[:1]  # one record past it: stays
        assert retirable(journal, segs[0].last_seq - 1) == []
        # Beyond the journal's end: every closed segment, never the active one.
        assert retirable(journal, journal.last_seq + 100) == segs[:-1]
    finally:
        journal.close()


def test_keep_is_the_default_and_never_retires(tmp_path):
    assert NodeConfig(tmp_path).journal_retention == "keep"
    run_node(tmp_path, "keep")
    live, archived = live_and_archived(tmp_path)
    assert live[0].first_seq == 1 and archived == []
    assert len(SnapshotStore(tmp_path / "snapshots").list()) == 3  # snapshots were taken


def test_a_bad_policy_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="'purge' is not one of 'keep', 'archive', 'delete'"):
        NodeConfig(tmp_path, journal_retention="purge")
    toml = tmp_path / "loom.toml"
    toml.write_text('journal_retention = "archive"\n')
    assert load_config(str(toml), env={}).journal_retention == "archive"
    toml.write_text('journal_retention = "forever"\n')
    with pytest.raises(ConfigError, match="journal_retention 'forever' is not one of"):
        load_config(str(toml), env={})
    with pytest.raises(ConfigError, match="replicated stream"):
        env = {"LOOM_JOURNAL_RETENTION": "delete", "LOOM_CLUSTER": "nats://x", "LOOM_NODE_ID": "a"}
        load_config(None, env=env)


@pytest.mark.parametrize("policy", ["archive", "delete"])
def test_retention_keeps_every_segment_a_kept_snapshot_needs(tmp_path, policy):
    live_hash, _venue = run_node(tmp_path, policy)
    live, archived = live_and_archived(tmp_path)
    oldest = oldest_kept(tmp_path)
    assert live[0].first_seq > 1, "nothing was retired"
    assert live[0].first_seq <= oldest + 1, "a kept snapshot can no longer be replayed from"
    if policy == "archive":
        # Every segment is in exactly one place, the archive followed by the live journal.
        assert archived[0].first_seq == 1 and archived[-1].last_seq + 1 == live[0].first_seq
        assert all(s.last_seq <= oldest for s in archived)
        assert not {s.path.name for s in archived} & {s.path.name for s in live}
    else:
        assert archived == []
    # Restart: recovery from the newest snapshot reaches the same state.
    node = ExchangeNode(node_config(tmp_path, policy))
    try:
        assert node.recovered.state_hash == live_hash
        assert node.recovered.snapshot_seq > oldest
    finally:
        node.close()


@pytest.mark.parametrize("policy", ["archive", "delete"])
def test_fallback_past_damaged_snapshots_still_works_after_retention(tmp_path, policy):
    live_hash, _venue = run_node(tmp_path, policy)
    infos = SnapshotStore(tmp_path / "snapshots").list()
    assert len(infos) == 3
    for info in infos[1:]:  # only the oldest kept snapshot is left usable
        damage(info.path)
    node = ExchangeNode(node_config(tmp_path, policy))
    try:
        assert node.recovered.snapshot_seq == infos[0].seq
        assert node.recovered.snapshots_skipped == 2
        assert node.recovered.state_hash == live_hash
    finally:
        node.close()


def test_recovery_refuses_clearly_when_the_range_was_deleted(tmp_path):
    run_node(tmp_path, "delete")
    first = live_and_archived(tmp_path)[0][0].first_seq
    for info in SnapshotStore(tmp_path / "snapshots").list():
        damage(info.path)
    with pytest.raises(RecoveryGapError, match=rf"commands 1\.\.{first - 1} are missing") as err:
        ExchangeNode(node_config(tmp_path, "delete"))
    assert "journal_retention = delete" in str(err.value)


def test_recovery_names_the_archive_and_recovers_once_segments_are_moved_back(tmp_path):
    live_hash, _venue = run_node(tmp_path, "archive")
    for info in SnapshotStore(tmp_path / "snapshots").list():
        info.path.unlink()
    with pytest.raises(RecoveryGapError, match="journal/archive/ holds segments from seq 1"):
        ExchangeNode(node_config(tmp_path, "keep"))
    archive = tmp_path / "journal" / "archive"
    for path in archive.iterdir():
        path.rename(tmp_path / "journal" / path.name)
    node = ExchangeNode(node_config(tmp_path, "keep"))
    try:
        assert node.recovered.snapshot_seq == 0
        assert node.recovered.state_hash == live_hash
    finally:
        node.close()


def test_metrics_stats_count_what_was_retired(tmp_path):
    node = ExchangeNode(node_config(tmp_path, "archive"))
    try:
        commands = generate(400, seed=11).commands
        for i in range(0, len(commands), 10):
            node.submit(commands[i : i + 10])
        stats = node.retention
    finally:
        node.close()
    archived = live_and_archived(tmp_path)[1]
    assert stats.archived_segments == len(archived) > 0
    assert stats.archived_bytes == sum(p.stat().st_size for p in (tmp_path / "journal" / "archive").iterdir())
    assert stats.deleted_segments == stats.deleted_bytes == stats.failures == 0


# -- order lookups ------------------------------------------------------------------------------


EARLY_ORDER = 3  # accepted in the first segments, retired by the end of a run


def test_lookup_finds_orders_in_archived_segments(tmp_path):
    kept_dir, archived_dir = tmp_path / "keep", tmp_path / "archive"
    run_node(kept_dir, "keep")
    _hash, venue = run_node(archived_dir, "archive")
    order_id = EARLY_ORDER
    found = order_history(archived_dir, order_id)
    reference = order_history(kept_dir, order_id)
    assert found is not None and reference is not None
    archived = live_and_archived(archived_dir)[1]
    assert found["accepted_seq"] <= archived[-1].last_seq  # its records are in the archive
    assert isinstance(found["events"][0], OrderAccepted) and found["events"][0].order_id == order_id
    # The same history as the untouched journal (the runs differ only in timestamps).
    assert [(type(e).__name__, e.seq) for e in found["events"]] == [
        (type(e).__name__, e.seq) for e in reference["events"]
    ]
    # The derived trace id still starts with the venue (seq 1's ts, stored before it went).
    assert found["trace_id"] == derived_trace_id(venue, found["accepted_seq"])


def test_lookup_says_the_range_is_gone_with_delete(tmp_path, capsys):
    run_node(tmp_path, "delete")
    order_id = EARLY_ORDER
    with pytest.raises(JournalRangeGone, match="no longer held"):
        order_history(tmp_path, order_id)
    assert loom_main(["trace", str(order_id), "--data-dir", str(tmp_path)]) == 3
    assert 'journal_retention = "delete"' in capsys.readouterr().err
    # A recent order (after the oldest kept snapshot) is still found.
    node = ExchangeNode(node_config(tmp_path, "delete"))
    try:
        recent = node.engine.next_order_id - 1
        venue = node.venue_id
    finally:
        node.close()
    found = order_history(tmp_path, recent)
    assert found is not None and found["trace_id"] == derived_trace_id(venue, found["accepted_seq"])


def test_inspect_reports_archived_segments(tmp_path, capsys):
    run_node(tmp_path, "archive")
    assert loom_main(["journal", "inspect", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    archived = report["archived"]
    assert archived["first_seq"] == 1 and archived["last_seq"] == report["first_seq"] - 1
    assert archived["verdict"] == "ok" and archived["segments"]
    assert loom_main(["journal", "inspect", str(tmp_path)]) == 0
    assert f"archive {tmp_path / 'journal' / 'archive'}: {len(archived['segments'])} segments" in (
        capsys.readouterr().out
    )


# -- crash safety -------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["archive", "delete"])
@pytest.mark.parametrize("crash_at", [1, 2, 3, 5])
def test_a_crash_during_retention_leaves_a_recoverable_journal(tmp_path, monkeypatch, policy, crash_at):
    """The process 'dies' at the crash_at-th directory fsync of a retention pass: every
    step before it happened, none after. The journal must recover to the same state."""
    base = tmp_path / "base"
    live_hash, _venue = run_node(base, "keep")
    data = tmp_path / "data"
    shutil.copytree(base, data)
    journal = FileJournal(data / "journal", segment_bytes=2048)
    calls = {"n": 0}
    real_fsync_dir = retention_mod.fsync_dir

    def crashing_fsync_dir(directory):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise OSError(5, "simulated crash")
        real_fsync_dir(directory)

    monkeypatch.setattr(retention_mod, "fsync_dir", crashing_fsync_dir)
    stats = RetentionStats()
    try:
        with pytest.raises(OSError, match="simulated crash"):
            retire(journal, oldest_kept(data), policy, stats)
    finally:
        journal.close()
    monkeypatch.undo()
    assert stats.failures == 1
    node = ExchangeNode(node_config(data, "keep"))
    try:
        assert node.recovered.state_hash == live_hash
    finally:
        node.close()
    live, archived = live_and_archived(data)
    if archived:  # what was moved is whole and joins the live journal
        assert archived[-1].last_seq + 1 == live[0].first_seq


# -- the trace endpoint of a real `loom run` -------------------------------------------------------


def _trace_node_config(tmp_path: Path, policy: str, account: str) -> Path:
    """A node whose journal retention retired EARLY_ORDER's segments: its owner, another
    account and an ops key."""
    data = tmp_path / "data"
    run_node(data, policy)
    config = tmp_path / "loom.toml"
    config.write_text(
        f'data_dir = "{data}"\nhttp_port = 0\nfix_port = -1\nbinary_port = -1\n'
        f'journal_retention = "{policy}"\n[[accounts]]\nname = "{account}"\napi_key = "{OWNER_KEY}"\n'
        f'[[accounts]]\nname = "someone-else"\napi_key = "{OTHER_KEY}"\n'
        f'[[accounts]]\nname = "oncall"\napi_key = "{OPS_KEY}"\nrole = "ops"\n'
        f'[[instruments]]\nsymbol = "{INSTRUMENT.symbol}"\ntick_size = 1\nlot_size = 1\n'
        "min_qty = 1\nmax_qty = 1000000\n"
    )
    return config


OWNER_KEY, OTHER_KEY, OPS_KEY = (
    "retention-test-key-0001",
    "retention-test-key-0002",
    "retention-ops-key-00001",
)


def _get(base: str, path: str, key: str) -> tuple[int, dict]:
    req = urllib.request.Request(base + path, headers={"X-API-Key": key})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(("policy", "status"), [("archive", 200), ("delete", 410)])
def test_the_trace_endpoint_reads_the_archive_or_says_the_range_is_gone(tmp_path, policy, status):
    """GET /v1/orders/{id}/trace with an ops key on a real node whose journal retention
    retired the order's segments: found in the archive, or 410 JOURNAL_RANGE_GONE naming why."""
    reference = order_history(_reference_dir(tmp_path), EARLY_ORDER)
    config = _trace_node_config(tmp_path, policy, reference["events"][0].account)
    with loom_run(["--config", str(config)], dict(os.environ)) as base:
        got, body = _get(base, f"/v1/orders/{EARLY_ORDER}/trace", OPS_KEY)
    assert got == status, body
    if policy == "archive":
        assert body["source"] == "journal"
        assert body["accepted_seq"] == reference["accepted_seq"]
        assert body["events"][0]["type"] == "accepted"
    else:
        assert body["error"]["code"] == "JOURNAL_RANGE_GONE"
        assert "journal_retention" in body["error"]["message"]


@pytest.mark.parametrize("policy", ["archive", "delete"])
def test_another_accounts_order_is_answered_as_an_unassigned_id_without_a_journal_read(tmp_path, policy):
    """No oracle on order ids (issue 13). With the archive the rebuilt index knows the owner:
    another account's order is a 404 like an id never assigned. Without it (delete) the order
    has no known owner: the journal was read for any caller (410 JOURNAL_RANGE_GONE after a
    scan, where GET said ORDER_HISTORY_GONE at once); an account now gets GET's answer,
    without a read, whoever owns the order. The ops key still reads the journal."""
    reference = order_history(_reference_dir(tmp_path), EARLY_ORDER)
    config = _trace_node_config(tmp_path, policy, reference["events"][0].account)
    with loom_run(["--config", str(config)], dict(os.environ)) as base:
        path = f"/v1/orders/{EARLY_ORDER}"
        deadline = time.monotonic() + 30
        while _get(base, path, OTHER_KEY)[0] == 503 and time.monotonic() < deadline:
            time.sleep(0.05)  # polling until the order index is read back (INDEX_REBUILDING until then)
        other, read = _get(base, path + "/trace", OTHER_KEY), _get(base, path, OTHER_KEY)
        owner = _get(base, path + "/trace", OWNER_KEY)
        unassigned = _get(base, "/v1/orders/999999999/trace", OTHER_KEY)
        ops = _get(base, path + "/trace", OPS_KEY)
    assert other == read, (other, read)
    if policy == "archive":
        assert owner[0] == 200 and ops[0] == 200
        assert other[0] == unassigned[0] == 404
        assert other[1]["error"]["code"] == unassigned[1]["error"]["code"] == "UNKNOWN_ORDER"
    else:
        assert other == owner and other[0] == 410 and other[1]["error"]["code"] == "ORDER_HISTORY_GONE"
        assert ops[1]["error"]["code"] == "JOURNAL_RANGE_GONE"  # the operator's read says why


def _reference_dir(tmp_path: Path) -> Path:
    ref = tmp_path / "reference"
    run_node(ref, "keep")
    return ref


def test_full_replay_refuses_a_journal_that_no_longer_starts_at_seq_1(tmp_path, capsys):
    run_node(tmp_path, "delete")
    first = live_and_archived(tmp_path)[0][0].first_seq
    assert loom_main(["journal", "replay", str(tmp_path), "--json"]) == 1
    assert f"begins at seq {first}" in capsys.readouterr().out
