"""End-to-end failover on real processes: two `loom run --cluster` nodes on a 3-server
NATS cluster, a REST client, SIGKILL of the leader. Every acknowledged order is on the new
leader exactly once, and its state equals a replay of the replicated journal. (The
failover time is printed, not asserted: `loom bench failover` measures it.)"""

from __future__ import annotations

import threading

import pytest
from natsproc import assert_stream_is_the_record, unique_stream

from engine.cluster.drill import (
    TRADER_KEY,
    NodeProcess,
    OrderSender,
    failover_once,
    http,
    in_sync,
    wait_for,
)


@pytest.fixture
def drill(nats_cluster, nats_link, tmp_path):
    stream, _prefix = unique_stream()
    nodes = [NodeProcess(n, nats_cluster.urls, tmp_path, stream) for n in ("a", "b")]
    try:
        nodes[0].start()
        wait_for("a to lead", lambda: nodes[0].status().get("role") == "leader")
        nodes[1].start()
        yield nodes, stream
    finally:
        for node in nodes:
            node.stop()


def test_sigkill_of_the_leader_loses_no_acknowledged_order(drill, nats_link):
    nodes, stream = drill
    a, b = nodes
    wait_for("b to follow a", lambda: in_sync(nodes))
    assert b.status()["leader"] == "a"
    order = {"symbol": "BTC-USD", "side": "buy", "qty": 1, "price": 5}
    status, body = http("POST", b.base + "/v1/orders", order, key=TRADER_KEY)
    assert status == 503 and body["error"]["code"] == "NOT_LEADER", body  # the standby takes none
    assert body["error"]["leader"]["node"] == "a" and body["error"]["leader"]["url"] == a.base

    sender = OrderSender(nodes)
    thread = threading.Thread(target=sender.run, daemon=True)
    thread.start()
    try:
        figures = failover_once(nodes, sender, before=30, after=30)
    finally:
        sender.stop.set()
        thread.join(10)
    print(f"\nfailover (SIGKILL of the leader -> first order accepted by the new leader): {figures}")
    assert figures["killed"] == "a" and figures["new_leader"] == "b"
    assert not a.alive()

    after = b.status()
    assert after["role"] == "leader" and after["lease_held"] and after["failovers"] == 1
    assert after["epoch"] > 0 and after["leader"] == "b"
    # Every acknowledged order is on the new leader, as sent.
    for clid, order_id in sender.acked.items():
        status, view = http("GET", f"{b.base}/v1/orders/{order_id}", key=TRADER_KEY)
        assert status == 200, (clid, order_id, view)
        assert view["client_order_id"] == clid and view["status"] == "open"
    # ...exactly once in the replicated journal, and the new leader's state is its replay.
    verified, journal = assert_stream_is_the_record(
        nats_link, stream, f"loom.{stream.lower()}", b.base, sender.acked
    )
    assert verified["applied_seq"] == journal.last_seq
