"""The read-only `ops` role (issue 12): an ops key reads any account's orders, traces and the
admin GET views, and gets a clear 403 for every trade and admin action. A trader still sees
nobody else's orders, and the trace endpoint answers another account's order exactly as an
unknown id. Against a real node (tests/test_http_gateway.py's LiveExchange)."""

from __future__ import annotations

import pytest
from test_http_gateway import ADMIN_KEY, BTC, LiveExchange, on_loop

from engine.auth import Accounts
from engine.config import ConfigError, load_config

OPS_KEY = "ops-key-0123456789abcdef00"
OPS = {"X-API-Key": OPS_KEY}


@pytest.fixture
def srv(tmp_path):
    server = LiveExchange(tmp_path / "node", ops_keys={OPS_KEY: "oncall"})
    try:
        yield server
    finally:
        server.close()


def forbidden_read_only(reply) -> None:
    assert reply.status == 403 and reply.code == "FORBIDDEN", reply
    assert "ops key is read-only" in reply.body["error"]["message"], reply


@on_loop
async def test_ops_reads_any_accounts_order_and_its_trace(srv):
    placed = await srv.order("alice", "buy", 100, 2, client_order_id="a-1")
    oid = placed["order"]["order_id"]
    by_id = await srv.api("GET", f"/v1/orders/{oid}", headers=OPS)
    assert by_id.status == 200 and by_id.body["account"] == "alice" and by_id.body["order_id"] == oid
    trace = await srv.api("GET", f"/v1/orders/{oid}/trace", headers=OPS)
    assert trace.status == 200 and trace.body["trace_id"] == placed["order"]["trace_id"], trace
    by_clid = await srv.api("GET", "/v1/orders/by-client-id/a-1", headers=OPS, params={"account": "alice"})
    assert by_clid.status == 200 and by_clid.body["order_id"] == oid
    unnamed = await srv.api("GET", "/v1/orders/by-client-id/a-1", headers=OPS)
    assert unnamed.status == 400 and "?account=" in unnamed.body["error"]["message"], unnamed
    listed = await srv.api("GET", "/v1/orders", headers=OPS, params={"account": "alice"})
    assert listed.status == 200 and [o["order_id"] for o in listed.body["orders"]] == [oid]
    # A filled (finished) order of another account, and its trace read back from the journal.
    await srv.order("bob", "sell", 100, 2)
    finished = await srv.api("GET", f"/v1/orders/{oid}/trace", headers=OPS)
    assert finished.status == 200 and finished.body["account"] == "alice"
    for path in ("/v1/admin/stats", "/v1/admin/cluster", "/v1/admin/risk", "/v1/admin/surveillance"):
        view = await srv.api("GET", path, headers=OPS)
        assert view.status == 200, (path, view)
    missing = await srv.api("GET", "/v1/orders/999999/trace", headers=OPS)
    assert missing.status == 404 and missing.code == "UNKNOWN_ORDER"


@on_loop
async def test_ops_can_neither_trade_nor_act(srv):
    placed = await srv.order("alice", "buy", 100, 2, client_order_id="a-2")
    oid = placed["order"]["order_id"]
    seq = srv.seq
    order = {"symbol": BTC, "side": "buy", "qty": 1, "price": 100}
    forbidden_read_only(await srv.api("POST", "/v1/orders", headers=OPS, json=order))
    forbidden_read_only(await srv.api("DELETE", f"/v1/orders/{oid}", headers=OPS))
    forbidden_read_only(await srv.api("DELETE", "/v1/orders/by-client-id/a-2", headers=OPS))
    forbidden_read_only(await srv.api("PATCH", f"/v1/orders/{oid}", headers=OPS, json={"qty": 1}))
    forbidden_read_only(await srv.api("DELETE", "/v1/orders", headers=OPS))
    actions = [
        ("POST", "/v1/admin/snapshot", None),
        ("POST", "/v1/admin/faults", {"journal_write_errors": True}),
        ("POST", "/v1/admin/cluster/step-down", None),
        ("PUT", "/v1/admin/risk/limits", {"scope": "venue", "max_order_qty": 1}),
        ("POST", "/v1/admin/risk/kill-switch", {"scope": "venue", "engaged": True}),
        ("POST", "/v1/admin/risk/halt", {"symbol": BTC, "halted": True}),
    ]
    for method, path, body in actions:
        reply = await srv.api(method, path, headers=OPS, **({"json": body} if body else {}))
        forbidden_read_only(reply)
    assert srv.seq == seq  # nothing was sequenced
    still = await srv.get_order("alice", oid)
    assert still["leaves"] == 2 and still["status"] == placed["order"]["status"]
    assert srv.node.journal_ok  # the faults action did not run
    # The admin key still acts; a trader's key is no ops key.
    assert (await srv.api("GET", "/v1/admin/stats", headers={"X-API-Key": ADMIN_KEY})).status == 200
    trader = await srv.api("GET", "/v1/admin/stats", account="bob")
    assert trader.status == 403 and "ops key is read-only" not in trader.body["error"]["message"]


@on_loop
async def test_a_trader_still_cannot_read_another_accounts_order(srv):
    placed = await srv.order("alice", "buy", 100, 2, client_order_id="a-3")
    oid = placed["order"]["order_id"]
    other = await srv.api("GET", f"/v1/orders/{oid}", account="bob")
    unknown = await srv.api("GET", "/v1/orders/999999", account="bob")
    assert other.status == unknown.status == 404 and other.code == unknown.code == "UNKNOWN_ORDER"
    # The trace: another account's order and an unknown id answer alike (as before the ops role).
    other_trace = await srv.api("GET", f"/v1/orders/{oid}/trace", account="bob")
    unknown_trace = await srv.api("GET", "/v1/orders/999999/trace", account="bob")
    assert other_trace.status == unknown_trace.status == 404
    assert other_trace.code == unknown_trace.code == "UNKNOWN_ORDER"
    await srv.order("bob", "sell", 100, 2)  # filled: the trace now comes from the journal
    finished = await srv.api("GET", f"/v1/orders/{oid}/trace", account="bob")
    assert finished.status == 404 and finished.code == "UNKNOWN_ORDER", finished
    clid = await srv.api("GET", "/v1/orders/by-client-id/a-3", account="bob", params={"account": "alice"})
    assert clid.status == 404  # ?account= means nothing to a trader's key
    bad_key = await srv.api("GET", f"/v1/orders/{oid}", key="not-a-key-0123456789")
    assert bad_key.status == 401


def test_ops_keys_come_from_accounts_with_role_ops_and_never_double_as_another_key(tmp_path):
    conf = tmp_path / "loom.toml"
    conf.write_text(
        '[[accounts]]\nname = "alice"\napi_key = "alice-key-0123456789abcdef"\n'
        '[[accounts]]\nname = "oncall"\napi_key = "ops-key-0123456789abcdef00"\nrole = "ops"\n'
    )
    cfg = load_config(str(conf), env={})
    assert cfg.api_keys == {"alice-key-0123456789abcdef": "alice"}
    assert cfg.ops_keys == {OPS_KEY: "oncall"}
    conf.write_text('[[accounts]]\nname = "x"\napi_key = "x-key-0123456789abcdef"\nrole = "god"\n')
    with pytest.raises(ConfigError, match="role is trader or ops"):
        load_config(str(conf), env={})
    env = {"LOOM_OPS_KEY": "alice-key-0123456789abcdef"}
    conf.write_text('[[accounts]]\nname = "alice"\napi_key = "alice-key-0123456789abcdef"\n')
    with pytest.raises(ConfigError, match="must not also be"):
        load_config(str(conf), env=env)
    demo = load_config(None, env={}, demo=True)
    assert demo.ops_keys and set(demo.ops_keys).isdisjoint(demo.api_keys)
    accounts = Accounts({"alice-key-0123456789abcdef": "alice"}, ops_keys={OPS_KEY: "oncall"})
    assert accounts.operator(OPS_KEY) == "oncall" and accounts.authenticate(OPS_KEY) is None
    assert accounts.operator("alice-key-0123456789abcdef") is None
