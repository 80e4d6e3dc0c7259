"""Per-order stage timings from the journal: what each batch record carries (BatchMeta), the
lookup that reads them back with no trace backend (after a restart too), and journals
written before the timings existed (format version 1, upcast on read)."""

from __future__ import annotations

import asyncio
import struct
import time
import zlib

import msgspec
from journal_contract import encoded, make_batches

from engine.bench.workload import INSTRUMENT, SYMBOL
from engine.core.commands import ListInstrument, NewOrder
from engine.core.domain import OrderType, Side
from engine.core.stage_timings import RecentBatches, format_stages
from engine.exchange import ExchangeNode, NodeConfig
from engine.journal.format import (
    FORMAT_VERSION,
    RECORD_HEADER,
    RECORD_MAGIC,
    BatchMeta,
    encode_segment_header,
)
from engine.journal.segments import FileJournal, scan, segment_name
from engine.order_history import history_json, order_history
from engine.service import ExchangeService

STAGE_KEYS = ("receive_to_sequenced_us", "journal_us", "match_us", "ack_us")


def order(clid: str, side: Side = Side.BUY, price: int = 99_000) -> NewOrder:
    return NewOrder("acct", clid, SYMBOL, int(side), int(OrderType.LIMIT), price, 5)


def write_v1_segment(directory, batches: list[list]) -> None:
    """A segment as format version 1 wrote it: the payload is the bare list of commands."""
    directory.mkdir(parents=True, exist_ok=True)
    data = encode_segment_header(batches[0][0].seq, version=1)
    for batch in batches:
        payload = msgspec.msgpack.encode(batch)
        fields = struct.pack("<IQI", len(payload), batch[0].seq, len(batch))
        crc = zlib.crc32(payload, zlib.crc32(fields))
        data += RECORD_HEADER.pack(RECORD_MAGIC, len(payload), batch[0].seq, len(batch), crc) + payload
    (directory / segment_name(batches[0][0].seq)).write_bytes(data)


def test_a_version_1_segment_is_upcast_and_appends_go_to_a_new_segment(tmp_path):
    old = make_batches([2, 3])
    write_v1_segment(tmp_path, old)
    journal = FileJournal(tmp_path)
    assert [s.version for s in journal.segments] == [1]
    assert [m for m, _ in journal.read_records()] == [BatchMeta(), BatchMeta()]
    new = make_batches([2], start=6)
    meta = BatchMeta(7, [2], [3], 3, 1, 2, 3)
    journal.append(new[0], meta)
    journal.close()
    report = scan(tmp_path)
    assert report.damage is None
    assert [(s.first_seq, s.version) for s in report.segments] == [(1, 1), (6, FORMAT_VERSION)]
    reopened = FileJournal(tmp_path)
    got = list(reopened.read_records())
    assert [encoded(c) for _, c in got] == [encoded(b) for b in old + new]
    assert got[-1][0] == meta
    reopened.close()


def run_service(node: ExchangeNode, submissions: list[list]) -> tuple[list[list], ExchangeService]:
    """Each submission as its own batch, received a little before it was submitted."""

    service = ExchangeService(node, write_thread=False)

    async def main() -> list[list]:
        service.start()
        results = []
        for commands in submissions:
            received = time.perf_counter()
            results.append(await service.submit(commands, "test", received))
        await service.stop()
        return results

    return asyncio.run(main()), service


def test_the_journal_alone_gives_an_orders_stage_timings_after_a_restart(tmp_path):
    node = ExchangeNode(NodeConfig(tmp_path, (INSTRUMENT,), snapshot_every_s=0))
    results, service = run_service(node, [[order("a"), order("b")], [order("c")], [order("d")]])
    accepted = results[0][1][0]  # "b": the second order of the first service batch
    live = service.recent.stages(accepted.seq, accepted.ts)
    node.close()

    found = order_history(tmp_path, accepted.order_id)  # nothing but the data directory
    stages = history_json(found)["stages"]
    assert stages == live
    assert stages["batch_commands"] == 2 and stages["batch_first_seq"] == accepted.seq - 1
    assert stages["received_ns"] <= stages["sequenced_ns"] == accepted.ts
    assert all(stages[k] is not None and stages[k] >= 0 for k in STAGE_KEYS)
    assert stages["journal_us"] > 0 and stages["match_us"] > 0
    assert "µs" in format_stages(stages)


def test_the_last_batchs_durations_are_unknown_until_another_batch_is_journaled(tmp_path):
    node = ExchangeNode(NodeConfig(tmp_path, (INSTRUMENT,), snapshot_every_s=0))
    results, _service = run_service(node, [[order("a")], [order("z")]])
    node.close()
    last = results[-1][0][0]
    stages = order_history(tmp_path, last.order_id)["stages"]
    assert stages["receive_to_sequenced_us"] is not None
    assert (stages["journal_us"], stages["match_us"], stages["ack_us"]) == (None, None, None)
    assert format_stages(stages).startswith("receive->sequenced ")


def test_orders_from_a_version_1_journal_have_no_timings_and_the_node_runs_on(tmp_path):
    listing = ListInstrument(INSTRUMENT)
    first = order("old")
    for seq, cmd in enumerate((listing, first), start=1):
        cmd.seq, cmd.ts = seq, 1_700_000_000_000_000_000 + seq
    write_v1_segment(tmp_path / "journal", [[listing], [first]])
    node = ExchangeNode(NodeConfig(tmp_path, (INSTRUMENT,), snapshot_every_s=0))
    assert node.engine.last_seq == 2
    results, _service = run_service(node, [[order("new", Side.SELL, 101_000)], [order("x")]])
    node.close()
    old = order_history(tmp_path, 1)
    assert old["events"] and all(old["stages"][k] is None for k in STAGE_KEYS)
    new = order_history(tmp_path, results[0][0][0].order_id)
    assert all(new["stages"][k] is not None for k in STAGE_KEYS)


def test_recent_batches_forget_the_oldest_and_never_answer_for_an_uncommitted_seq():
    recent = RecentBatches(size=2)
    for first in (1, 3, 5):
        recent.add(first, 2, BatchMeta(100, [2], [10]), None)
    assert recent.stages(1, 100) is None  # pushed out
    assert recent.stages(4, 100)["received_ns"] == 90
    assert recent.stages(6, 100)["batch_first_seq"] == 5
    assert recent.stages(7, 100) is None


def test_a_sampled_batch_times_each_risk_check_without_running_it_twice(tmp_path, monkeypatch):
    """FIX (issue 14): on one batch in RISK_TIMING_EVERY the node re-ran each new order's
    pre-trade check only to time it. Now the core's own call is timed: every new order's
    check runs once, on sampled batches too, and its time is still recorded."""
    import engine.core.matcher
    import engine.core.risk
    import engine.exchange
    from engine.core.commands import SetRiskLimits
    from engine.core.domain import RiskLimits, RiskScope

    calls: list[int] = []

    def counted(core, cmd):
        calls.append(cmd.seq)
        return engine.core.risk.check_new(core, cmd)

    # Both names the check was called by (the node's timing and the core's own call).
    monkeypatch.setattr(engine.core.matcher, "check_new", counted)
    monkeypatch.setattr(engine.exchange, "check_new", counted)
    node = ExchangeNode(NodeConfig(tmp_path, (INSTRUMENT,), snapshot_every_s=0))
    node.risk_check_ns = []
    node.submit([SetRiskLimits(int(RiskScope.VENUE), "", RiskLimits(max_order_qty=1_000))])
    orders = []
    for batch in range(2 * engine.exchange.RISK_TIMING_EVERY):
        commands = [order(f"b{batch}-{i}", price=99_000 - i) for i in range(3)]
        orders += commands
        node.submit(commands)
    node.close()
    assert sorted(calls) == [cmd.seq for cmd in orders], "each new order's check runs exactly once"
    timed = node.risk_check_ns
    assert len(timed) == 2 * 3 and all(ns > 0 for ns in timed), timed  # two sampled batches of 3
    assert set(node.risk_timed) <= {cmd.seq for cmd in orders}
