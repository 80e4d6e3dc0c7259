"""Losing a NATS server under load: a leader and a standby (`loom run --cluster`, given
every server's URL) on their own 3-server JetStream cluster, a REST client sending orders
throughout, and SIGKILL of one nats-server at a time: first the one the leader's client is
connected to, then the stream's Raft leader (a JetStream re-election, several seconds).
Orders are acknowledged again after each loss (waited for, never slept for), no
acknowledged order is lost or doubled, and the leader's state is a replay of the stream."""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.request

import pytest
from journal_contract import make_batches
from natsproc import assert_stream_is_the_record, unique_stream

from engine.cluster.drill import TRADER_KEY, NodeProcess, OrderSender, http, in_sync, leader_of, wait_for
from engine.cluster.journal import NatsJournal
from engine.cluster.link import NatsLink
from engine.cluster.natsserver import LocalNatsCluster

RECOVERY_S = 60.0  # JetStream re-elects in ~6-7 s; generous for a loaded machine


@pytest.fixture
def cluster(tmp_path):
    with LocalNatsCluster(tmp_path / "nats") as nats:
        yield nats


def monitor(cluster: LocalNatsCluster, index: int, path: str) -> dict:
    node = cluster.nodes[index]
    with urllib.request.urlopen(f"http://127.0.0.1:{node.monitor_port}{path}", timeout=2) as resp:
        return json.loads(resp.read())


def server_of_client(cluster: LocalNatsCluster, name: str) -> int:
    """The server a client (by connection name) is connected to."""
    for i, node in enumerate(cluster.nodes):
        if node.alive() and any(
            c.get("name") == name for c in monitor(cluster, i, "/connz")["connections"] or []
        ):
            return i
    raise AssertionError(f"no server has a connection named {name}")


def stream_leader(link: NatsLink, stream: str) -> str:
    return link.call(link.js.stream_info(stream)).cluster.leader or ""


def acked_after(sender: OrderSender, t: float) -> int:
    return sum(1 for at, _node in sender.accepted_at if at > t)


def lose_server(cluster: LocalNatsCluster, index: int, sender: OrderSender, what: str) -> dict:
    """SIGKILL server `index`, wait for 30 orders acknowledged after it, restart it. Returns
    the longest time without an acknowledgement from the kill on (the outage)."""
    killed_at = time.monotonic()
    cluster.kill(index)
    wait_for(
        f"30 orders acknowledged after losing {what}",
        lambda: acked_after(sender, killed_at) >= 30,
        RECOVERY_S,
    )
    times = [killed_at, *(at for at, _node in sender.accepted_at if at > killed_at)]
    outage = max(b - a for a, b in itertools.pairwise(times))
    cluster.restart(index)
    return {"lost": what, "server": cluster.nodes[index].name, "outage_s": round(outage, 2)}


def test_losing_a_nats_server_loses_no_acknowledged_order(cluster, tmp_path):
    stream, prefix = unique_stream()
    nodes = [NodeProcess(n, cluster.urls, tmp_path, stream) for n in ("a", "b")]
    link = NatsLink(cluster.urls, "test-observer")
    sender = OrderSender(nodes)
    thread = threading.Thread(target=sender.run, daemon=True)
    try:
        nodes[0].start()
        wait_for("a to lead", lambda: nodes[0].status().get("role") == "leader")
        nodes[1].start()
        wait_for("b to follow a", lambda: in_sync(nodes))
        thread.start()
        wait_for("30 acked orders", lambda: len(sender.acked) >= 30)

        figures = []
        leader = leader_of(nodes)
        # 1. The server the leader's NATS client is connected to: it reconnects to another.
        connected = server_of_client(cluster, f"loom-{leader.node_id}")
        figures.append(lose_server(cluster, connected, sender, f"the server leader {leader.node_id} used"))
        # 2. The stream's Raft leader: JetStream elects another before anything is durable.
        wait_for("a stream leader", lambda: stream_leader(link, stream), RECOVERY_S)
        name = stream_leader(link, stream)
        index = next(i for i, n in enumerate(cluster.nodes) if n.name == name)
        figures.append(lose_server(cluster, index, sender, "the stream leader"))
        print(f"\nnats-server losses: {figures}; refused tries {sender.refused}")
    finally:
        sender.stop.set()
        if thread.is_alive():
            thread.join(10)
    try:
        wait_for("one leader, the standby in sync", lambda: in_sync(nodes), RECOVERY_S)
        leader = leader_of(nodes)
        for clid, order_id in sender.acked.items():
            status, view = http("GET", f"{leader.base}/v1/orders/{order_id}", key=TRADER_KEY)
            assert status == 200 and view["client_order_id"] == clid, (clid, view)
        # Exactly once in the stream, and the leader's state is its replay.
        verified, _ = assert_stream_is_the_record(link, stream, prefix, leader.base, sender.acked)
        standby = next(n for n in nodes if n is not leader)
        assert (
            http("GET", standby.base + "/v1/admin/cluster?verify=1")[1]["state_hash"]
            == verified["state_hash"]
        )
    finally:
        for node in nodes:
            node.stop()
        link.close()


class DroppingJournal(NatsJournal):
    """Loses chosen deliveries after the consumer sent them (once each): what a client
    reconnecting to another server does to a pull consumer without acks."""

    drop: set[int]

    async def _fetch(self, sub, timeout: float = 2.0):
        msgs = await super()._fetch(sub, timeout)
        lost = {m.stream_seq for m in msgs} & self.drop
        self.drop -= lost
        return [m for m in msgs if m.stream_seq not in lost]


def test_readers_recover_deliveries_lost_in_a_reconnect(nats_link):
    """Found by the test above: a standby lost the batches delivered while it reconnected
    and stopped following for good (crash-only). Now the gap in the consumer's delivery
    numbers, or on a quiet stream the consumer having sent more than arrived, makes the
    reader resubscribe after the last message it received."""
    journal = DroppingJournal(nats_link, *unique_stream())
    for batch in make_batches([2] * 10):
        journal.append(batch)
    journal.drop = {3}
    received: list[int] = []
    follower = nats_link.submit(journal.follow(1, lambda msgs: received.extend(m.stream_seq for m in msgs)))
    try:
        wait_for("the follower to receive all 10 messages", lambda: len(received) >= 10, 20)
        assert received == list(range(1, 11)) and not journal.drop
        # The last message lost, and nothing after it to show a gap: the consumer's count.
        journal.drop = {11}
        journal.append(make_batches([2], start=21)[0])
        wait_for("the follower to receive the lost last message", lambda: len(received) >= 11, 20)
    finally:
        follower.cancel()
    assert received == list(range(1, 12)) and not journal.drop
    journal.drop = {2}
    assert [c.seq for c in journal.read()] == list(range(1, 23))  # the synchronous reader too
    assert not journal.drop
