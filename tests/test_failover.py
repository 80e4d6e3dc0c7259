"""End-to-end failover on real processes: two `loom run --cluster` nodes on a 3-server
NATS cluster, a REST client, SIGKILL of the leader. Every acknowledged order is on the new
leader exactly once, and its state equals a replay of the replicated journal. (The
failover time is printed, not asserted: `loom bench failover` measures it.)"""

from __future__ import annotations

import threading

import pytest
from money_drill import ASSETS, BOB_KEY, INSTRUMENT_MONEY, TOP, MoneyTrader, accounts_toml, check_money
from natsproc import assert_stream_is_the_record, unique_stream

from engine.cluster.drill import (
    ADMIN_KEY,
    TRADER_KEY,
    NodeProcess,
    OrderSender,
    failover_once,
    http,
    in_sync,
    leader_of,
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


def test_sigkill_of_the_leader_keeps_every_balance(nats_cluster, tmp_path):
    """The failover drill with money (issue 15): a funded venue (fees, a rebate) traded over
    REST by two accounts, the leader SIGKILLed mid-flow; on the new leader, read through its
    API, the balances conserve what was deposited less withdrawn, none is negative, and every
    acknowledged trade is settled exactly once (tests/money_drill.py)."""
    stream, _prefix = unique_stream()
    extra = INSTRUMENT_MONEY + ASSETS + accounts_toml(with_alice=False)
    nodes = [NodeProcess(n, nats_cluster.urls, tmp_path, stream, extra, settings=TOP) for n in ("a", "b")]
    trader = MoneyTrader(
        lambda: [n.base for n in nodes if n.alive()], {"alice": TRADER_KEY, "bob": BOB_KEY}, ADMIN_KEY
    )
    thread = threading.Thread(target=trader.run, daemon=True)
    try:
        nodes[0].start()
        wait_for("a to lead", lambda: nodes[0].status().get("role") == "leader", 60)
        nodes[1].start()
        wait_for("b to follow a", lambda: in_sync(nodes), 60)
        trader.fund()
        thread.start()
        wait_for("trades before the kill", lambda: len(trader.trades) >= 10, 60)
        nodes[0].kill()
        acked = len(trader.trades)
        wait_for("trades on the new leader", lambda: len(trader.trades) >= acked + 10, 60)
        trader.stop.set()
        thread.join(30)
        assert leader_of(nodes) is nodes[1]
        print(f"\nmoney after the failover: {check_money(nodes[1].base, trader)}")
    finally:
        trader.stop.set()
        for node in nodes:
            node.stop()
