"""Refused journal batches are logged once per outage, not once per batch: a line when
refusals begin, a summary per interval while they go on, a line when writes succeed again;
every refusal is still counted in loom_journal_write_errors.

The real case: the NATS stream loses its Raft leader (SIGKILL of its server) and refuses
every append until another is elected (several seconds), while a client retries at once.
An append whose PubAck times out meanwhile is not a refusal: it is answered OUTCOME_UNKNOWN
(one ERROR line of its own), and nothing is sequenced until the stream tells its fate.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from natsproc import read_commands, unique_stream
from prometheus_client import CollectorRegistry

from engine.bench.workload import INSTRUMENT, SYMBOL
from engine.cluster.journal import NatsJournal
from engine.cluster.link import NatsLink
from engine.cluster.natsserver import LocalNatsCluster
from engine.core.commands import NewOrder
from engine.core.domain import OrderType, RejectReason, Side
from engine.core.events import OrderRejected
from engine.core.matcher import MatchingEngine
from engine.core.state import state_hash
from engine.exchange import ExchangeNode, NodeConfig
from engine.journal import JournalWriteError
from engine.refusal_log import RefusalLog
from engine.service import ExchangeService
from telemetry.metrics import ExchangeMetrics
from telemetry.observer import MetricsObserver

FAILED = int(RejectReason.JOURNAL_WRITE_FAILED)
UNKNOWN = int(RejectReason.OUTCOME_UNKNOWN)


class ManualClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_run_of_refusals_is_one_line_a_summary_per_interval_and_one_line_at_the_end(caplog):
    clock = ManualClock()
    refusals = RefusalLog(logging.getLogger("test.refusals"), every_s=5.0, clock=clock)
    caplog.set_level(logging.INFO, "test.refusals")
    for _ in range(1000):  # 12 s of refusals, one every 12 ms
        refusals.refused(2, JournalWriteError("journal write of seq 7..8 failed: timeout"))
        clock.now += 0.012
    refusals.succeeded()
    refusals.succeeded()  # nothing more to say
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in lines] == ["ERROR", "ERROR", "ERROR", "WARNING"], lines
    assert "journal writes failing" in lines[0][1] and "seq 7..8" in lines[0][1]
    summary = "417 batches (834 commands) refused in the last 5.0 s (JournalWriteError x417)"
    assert lines[1][1].startswith(summary)
    end = "journal writes succeed again after 12.0 s: 1000 batches (2000 commands) refused in all"
    assert lines[3][1] == end
    # A new run starts afresh; a demotion ends it without claiming success.
    refusals.refused(1, JournalWriteError("again"))
    refusals.ended("demoted: lease lost")
    assert caplog.records[-1].getMessage().startswith("journal refusals end here (demoted: lease lost) after")
    assert caplog.records[-1].getMessage().endswith("1 batches (1 commands) refused in all")


@pytest.fixture
def cluster(tmp_path):
    with LocalNatsCluster(tmp_path / "nats") as nats:
        yield nats


def stream_leader(link: NatsLink, stream: str) -> str:
    return link.call(link.js.stream_info(stream)).cluster.leader or ""


def move_leader_off(link: NatsLink, stream: str, server: str) -> str:
    """Step the stream's leader down until it is not on `server` (the one the link uses, so
    the kill below never disconnects the writer: no publish is buffered to land late)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        leader = stream_leader(link, stream)
        if leader and leader != server:
            return leader
        if leader:
            link.call(link.nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", timeout=5))
        time.sleep(0.1)
    raise TimeoutError(f"stream {stream} kept its leader on {server}")


def test_losing_the_stream_leader_logs_a_bounded_story_and_counts_every_refusal(cluster, tmp_path, caplog):
    every_s = 1.0
    stream, prefix = unique_stream()
    link = NatsLink(cluster.urls[:1], "refusals")
    journal = NatsJournal(link, stream, prefix, publish_timeout=0.2, owns_link=True)
    node = ExchangeNode(
        NodeConfig(tmp_path / "data", (INSTRUMENT,), snapshot_every_commands=0, snapshot_every_s=0),
        journal=journal,
    )
    node.refusals.every_s = every_s
    metrics = ExchangeMetrics(CollectorRegistry(), process=False)

    def refused_total() -> float:
        return metrics.registry.get_sample_value("loom_journal_write_errors_total") or 0.0

    leader = move_leader_off(link, stream, cluster.nodes[0].name)
    index = next(i for i, n in enumerate(cluster.nodes) if n.name == leader)
    caplog.set_level(logging.INFO, "loom.exchange")

    async def client() -> tuple[float, int, int]:
        """Sends an order, retrying at once when refused or unknown, until one is accepted
        after the stream leader's server died; returns (seconds without acceptance,
        refusals seen, unknown outcomes seen)."""
        service = ExchangeService(node, observer=MetricsObserver(metrics))
        service.start()
        try:
            n = 0

            async def send() -> int:
                nonlocal n
                n += 1
                order = NewOrder("alice", f"c{n}", SYMBOL, int(Side.BUY), int(OrderType.LIMIT), 99_000, 1)
                events = await service.submit_one(order)
                if type(events[0]) is OrderRejected:
                    assert events[0].reason in (FAILED, UNKNOWN), events
                    return events[0].reason
                return 0

            assert await send() == 0
            await asyncio.to_thread(cluster.kill, index)
            killed = time.monotonic()
            seen = {FAILED: 0, UNKNOWN: 0}
            while reason := await send():
                seen[reason] += 1
                assert time.monotonic() - killed < 60, "no new stream leader within 60 s"
                await asyncio.sleep(0.005)
            return time.monotonic() - killed, seen[FAILED], seen[UNKNOWN]
        finally:
            await service.stop()

    try:
        outage, seen, unknown = asyncio.run(client())
        # Every unknown outcome was resolved, and the node is exactly the stream's replay.
        assert node.unresolved is None
        replay = MatchingEngine([])
        for cmd in read_commands(journal):
            replay.apply(cmd)
        assert state_hash(replay) == state_hash(node.engine)
        resolved = sum(n for (_, answered), n in node.unknown_outcomes.items() if answered == "unknown")
        assert resolved == unknown
    finally:
        node.close()
    ours = [r for r in caplog.records if r.name == "loom.exchange"]
    errors = [r.getMessage() for r in ours if r.levelno >= logging.ERROR]
    unknowns = [e for e in errors if e.startswith("journal write outcome unknown")]
    errors = [e for e in errors if e not in unknowns]
    ends = [r.getMessage() for r in caplog.records if "succeed again" in r.getMessage()]
    print(f"\noutage {outage:.2f} s: {seen} refused, {unknown} unknown, {len(errors)} ERROR lines; {ends}")
    assert seen + unknown >= 1
    assert len(unknowns) == unknown  # one line each: at most one is ever pending
    assert refused_total() == seen  # an unknown outcome is no refusal
    if seen:
        # One line at the start, then at most one per interval: however many were refused.
        assert errors[0].startswith("journal writes failing")
        assert 1 <= len(errors) <= 1 + outage / every_s, errors
        if seen >= 10:
            assert len(errors) < seen
        if outage > 2 * every_s and seen >= 10:
            assert any(" refused in the last " in e for e in errors[1:]), errors
        assert len(ends) == 1 and f": {seen} batches ({seen} commands) refused in all" in ends[0], ends
