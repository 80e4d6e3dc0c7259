"""A cluster leader journals the configured assets and credit switch on promotion, before
the instruments that name them, as a single node does at start (one rule:
`engine.exchange.setup_stages`). Without it, an instrument naming assets was refused
UNKNOWN_ASSET on every leader and the venue had no symbol to trade."""

from __future__ import annotations

from natsproc import read_commands, unique_stream

from engine.cluster.drill import ADMIN_KEY, TRADER_KEY, NodeProcess, http, wait_for
from engine.cluster.journal import NatsJournal
from engine.core.commands import SetCreditChecks

# Appended to the drill's configuration, which ends inside its one [[instruments]] table.
MONEY = """base = "BTC"
quote = "USD"
contract_size = 1

[[assets]]
name = "USD"
scale = 0

[[assets]]
name = "BTC"
scale = 0
"""


def test_a_cluster_leader_lists_assets_before_the_instruments_that_name_them(
    nats_cluster, nats_link, tmp_path
):
    stream, _prefix = unique_stream()
    settings = 'fee_account = "house"\n'
    node = NodeProcess("a", nats_cluster.urls, tmp_path, stream, extra_config=MONEY, settings=settings)
    try:
        node.start()
        wait_for("a to lead", lambda: node.status().get("role") == "leader")
        status, body = http(
            "POST",
            node.base + "/v1/admin/transfers",
            {"transfer_id": "t1", "account": "alice", "asset": "USD", "kind": "deposit", "amount": 500},
            key=ADMIN_KEY,
        )
        assert status == 200, body
        status, body = http("GET", node.base + "/v1/balances", key=TRADER_KEY)
        assert status == 200, body
        assert body["balances"] == [{"asset": "USD", "total": 500, "held": 0, "available": 500}], body
        order = {"symbol": "BTC-USD", "side": "buy", "qty": 1, "price": 5, "client_order_id": "c1"}
        status, body = http("POST", node.base + "/v1/orders", order, key=TRADER_KEY)
        assert status in (200, 201), body  # the instrument was listed, with its assets
        # The credit switch names the configured fee account, as a single node's does
        # (before: the leader journaled the default, and fees accrued to "venue-fees").
        commands = read_commands(NatsJournal(nats_link, stream, f"loom.{stream.lower()}"))
        switches = [c for c in commands if type(c) is SetCreditChecks]
        assert [(c.enabled, c.fee_account) for c in switches] == [(True, "house")], switches
    finally:
        node.stop()
