"""Definite outcomes on a cluster node's replicated journal (real nats-servers).

An append whose PubAck is lost may have landed. The defect: the node answered
JOURNAL_WRITE_FAILED ("nothing was done") and gave the seqs back, while the batch sat in the
stream (10 of 15 such appends in three chaos runs). Now the node reads the stream's slot
for the batch (fenced on Nats-Expected-Last-Sequence, it can only land at one stream seq):
landed -> applied and accepted; free -> closed with a void message, then truly refused; the
stream unreadable -> OUTCOME_UNKNOWN, the commit loop holding until NATS answers.

Each test ends with the node being exactly the replay of the stream, and every answer
agreeing with it: accepted = in the stream, refused = not in it, unknown = either, resolved.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter

import nats.js.errors
import pytest
from natsproc import unique_stream

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
from engine.service import ExchangeService

FAILED = int(RejectReason.JOURNAL_WRITE_FAILED)
UNKNOWN = 503  # RejectReason.OUTCOME_UNKNOWN (a literal, so this file also runs on older code)


def order(clid: str) -> NewOrder:
    return NewOrder("alice", clid, SYMBOL, int(Side.BUY), int(OrderType.LIMIT), 99_000, 1)


def answer(events: list) -> int:
    """0 accepted, else the reason of the rejection."""
    return events[0].reason if type(events[0]) is OrderRejected else 0


def open_node(tmp_path, link: NatsLink, publish_timeout: float = 2.0) -> tuple[ExchangeNode, NatsJournal]:
    stream, prefix = unique_stream()
    journal = NatsJournal(link, stream, prefix, publish_timeout=publish_timeout)
    config = NodeConfig(tmp_path / "data", (INSTRUMENT,), snapshot_every_commands=0, snapshot_every_s=0)
    return ExchangeNode(config, journal=journal), journal


def assert_answers_match_the_stream(node: ExchangeNode, journal: NatsJournal, answers: dict[str, int]):
    """The stream holds each seq once in order, the node is its replay, accepted orders are in
    it once, refused ones are not, and the node holds exactly the orders the stream does."""
    assert getattr(node, "unresolved", None) is None
    reader = NatsJournal(journal.link, journal.stream, journal.batch_subject.rsplit(".", 1)[0])
    commands = list(reader.read())
    assert [c.seq for c in commands] == list(range(1, len(commands) + 1))
    in_stream = Counter(c.client_order_id for c in commands if type(c) is NewOrder)
    for clid, got in answers.items():
        if got == 0:
            assert in_stream[clid] == 1, (clid, "accepted but not in the stream once")
        elif got == FAILED:
            assert in_stream[clid] == 0, (clid, "refused (nothing was done) but in the stream")
        else:
            assert got == UNKNOWN and in_stream[clid] <= 1, (clid, got)
        assert (clid in node.engine.accounts["alice"].by_clid) == (in_stream[clid] == 1), clid
    replay = MatchingEngine([])
    for cmd in commands:
        replay.apply(cmd)
    assert state_hash(replay) == state_hash(node.engine)


# -- the PubAck lost at the client (injected after a real publish) ----------------------------


def test_a_lost_puback_of_a_batch_that_landed_is_answered_accepted(nats_link, tmp_path):
    node, journal = open_node(tmp_path, nats_link)
    try:
        answers = {"a-1": answer(node.submit([order("a-1")])[0])}
        journal.fail_writes(at="ack")  # published for real; its PubAck lost
        answers["a-2"] = answer(node.submit([order("a-2")])[0])
        journal.fail_writes(None)
        answers["a-3"] = answer(node.submit([order("a-3")])[0])
        assert answers == {"a-1": 0, "a-2": 0, "a-3": 0}
        assert node.unknown_outcomes["landed", "definite"] == 1
        assert journal.fenced == 0  # the next append continued after the landed batch
        assert_answers_match_the_stream(node, journal, answers)
    finally:
        node.close()


def test_a_lost_publish_is_truly_refused_and_can_never_land_late(nats_link, tmp_path):
    node, journal = open_node(tmp_path, nats_link)
    try:
        answers = {"b-1": answer(node.submit([order("b-1")])[0])}
        tail = journal.expected
        journal.fail_writes(at="request")  # never reaches the stream; no PubAck
        answers["b-2"] = answer(node.submit([order("b-2")])[0])
        journal.fail_writes(None)
        assert answers["b-2"] == FAILED  # true: the slot it could land in is void
        assert node.unknown_outcomes["absent", "definite"] == 1
        void = nats_link.call(nats_link.js.get_msg(journal.stream, seq=tail + 1))
        assert void.subject == journal.void_subject
        # A copy of the batch arriving now (as a reconnect buffer would send it) is fenced off.
        with pytest.raises(nats.js.errors.APIError) as fenced:
            nats_link.call(
                nats_link.js.publish(
                    journal.batch_subject, b"late copy", headers={"Nats-Expected-Last-Sequence": str(tail)}
                )
            )
        assert fenced.value.err_code == 10071
        answers["b-2 again"] = answer(node.submit([order("b-2 again")])[0])
        assert answers["b-2 again"] == 0
        assert_answers_match_the_stream(node, journal, answers)
    finally:
        node.close()


# -- real faults: a paused stream leader, every server down ----------------------------------


@pytest.fixture
def cluster(tmp_path):
    with LocalNatsCluster(tmp_path / "nats") as nats_servers:
        yield nats_servers


def stream_leader_index(cluster: LocalNatsCluster, link: NatsLink, stream: str) -> int:
    name = link.call(link.js.stream_info(stream)).cluster.leader
    return next(i for i, n in enumerate(cluster.nodes) if n.name == name)


def test_a_paused_stream_leader_never_turns_a_landed_batch_into_a_refusal(cluster, tmp_path):
    """SIGSTOP of the stream leader's server: the PubAck times out while the batch waits in
    that server's socket; SIGCONT lets it land. The old node answered JOURNAL_WRITE_FAILED
    for it. Now it is accepted, or OUTCOME_UNKNOWN and then applied once NATS answers."""
    link = NatsLink(cluster.urls, "outcome-pause")
    node, journal = open_node(tmp_path, link, publish_timeout=0.5)
    answers: dict[str, int] = {}

    async def main() -> None:
        service = ExchangeService(node)
        service.start()
        try:
            answers["p-1"] = answer(await service.submit_one(order("p-1")))
            pid = cluster.nodes[stream_leader_index(cluster, link, journal.stream)].proc.pid
            os.kill(pid, signal.SIGSTOP)
            try:
                paused = asyncio.ensure_future(service.submit_one(order("p-2")))
                # Not answered before its PubAck timed out (the batch waits in the paused
                # server), so it was published: then let the server go on.
                await asyncio.wait({paused}, timeout=journal.publish_timeout * 2)
            finally:
                os.kill(pid, signal.SIGCONT)
            answers["p-2"] = answer(await paused)
            answers["p-3"] = answer(await asyncio.wait_for(service.submit_one(order("p-3")), 60))
        finally:
            await service.stop()

    try:
        asyncio.run(main())
        print(f"\nanswers: {answers}; unknown outcomes {getattr(node, 'unknown_outcomes', None)}")
        assert_answers_match_the_stream(node, journal, answers)  # p-2 refused only if absent
        assert answers["p-1"] == 0 and answers["p-3"] == 0, answers
    finally:
        node.close()
        link.close()


def test_nats_unreachable_is_outcome_unknown_then_resolved_when_nats_returns(cluster, tmp_path):
    link = NatsLink(cluster.urls, "outcome-down")
    node, journal = open_node(tmp_path, link, publish_timeout=0.5)
    answers: dict[str, int] = {}

    async def main() -> None:
        service = ExchangeService(node)
        service.start()
        try:
            answers["d-1"] = answer(await service.submit_one(order("d-1")))
            for i in range(len(cluster.nodes)):
                await asyncio.to_thread(cluster.kill, i)
            answers["d-2"] = answer(await service.submit_one(order("d-2")))
            assert answers["d-2"] == UNKNOWN  # nobody can tell: not "nothing was done"
            assert node.unresolved is not None and not node.journal_ok  # not ready
            waiting = asyncio.ensure_future(service.submit_one(order("d-3")))
            await asyncio.sleep(0)
            assert service.queued == 1 and not waiting.done()  # held, not sequenced

            def restart_all() -> None:
                for n in cluster.nodes:
                    cluster.start_node(n)
                cluster.wait_ready(60)

            await asyncio.to_thread(restart_all)
            answers["d-3"] = answer(await asyncio.wait_for(waiting, 90))
            assert node.unresolved is None
        finally:
            await service.stop()

    try:
        asyncio.run(main())
        print(f"\nanswers: {answers}; unknown outcomes {node.unknown_outcomes}")
        assert answers["d-3"] == 0, answers
        resolved = {k: n for k, n in node.unknown_outcomes.items() if k[1] == "unknown" and n}
        assert sum(resolved.values()) == 1 and ("abandoned", "unknown") not in resolved, resolved
        assert_answers_match_the_stream(node, journal, answers)
    finally:
        node.close()
        link.close()
