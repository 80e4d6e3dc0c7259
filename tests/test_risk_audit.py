"""The audit trail of risk administration (engine/core/risk_audit.py): a record per applied
change of limits, kill switches and halts with who, when, scope, old and new value; in the
events and the state (snapshots, replay); and `GET /v1/admin/risk/audit` against a real
`loom run`, surviving a restart."""

from __future__ import annotations

import os

import msgspec
from conftest import BTC, ETH, Exchange
from loomproc import loom_run
from test_accounts_rest import ARGS, call

from engine.core.commands import SetKillSwitch, SetRiskLimits, SetTradingHalt
from engine.core.domain import RiskLimits, RiskScope
from engine.core.matcher import MatchingEngine
from engine.core.risk_audit import HALT, KILL_SWITCH, LIMITS, MAX_RECORDS, AuditRecord, page
from engine.core.state import EngineState, decode_state, encode_state, export_state, restore_state, state_hash

VENUE, SYMBOL, ACCOUNT = int(RiskScope.VENUE), int(RiskScope.SYMBOL), int(RiskScope.ACCOUNT)


def test_each_change_is_recorded_with_who_when_and_the_old_value(ex):
    first = RiskLimits(max_order_qty=10)
    second = RiskLimits(max_order_qty=20, max_orders_per_sec=5)
    ex.apply(SetRiskLimits(ACCOUNT, "a", first, requested_by="admin"))
    [changed] = ex.apply(SetRiskLimits(ACCOUNT, "a", second, requested_by="admin"))
    assert (changed.old_limits, changed.limits, changed.requested_by) == (first, second, "admin")
    ex.apply(SetRiskLimits(ACCOUNT, "a", RiskLimits(), requested_by="admin"))  # removes them
    ex.apply(SetKillSwitch(SYMBOL, BTC, True, "fat finger", requested_by="automation:LoomX"))
    ex.apply(SetKillSwitch(SYMBOL, BTC, False, "", requested_by="admin"))
    [halted] = ex.apply(SetTradingHalt(ETH, True, "news", requested_by="admin"))
    assert (halted.was_halted, halted.requested_by) == (False, "admin")
    # Refused commands change nothing and leave no record.
    ex.apply(SetRiskLimits(SYMBOL, "NOPE-USD", first, requested_by="admin"))
    ex.apply(SetTradingHalt("NOPE-USD", True, requested_by="admin"))
    audit = ex.engine.risk.audit
    assert [(r.kind, r.scope, r.target, r.requested_by) for r in audit] == [
        (LIMITS, ACCOUNT, "a", "admin"),
        (LIMITS, ACCOUNT, "a", "admin"),
        (LIMITS, ACCOUNT, "a", "admin"),
        (KILL_SWITCH, SYMBOL, BTC, "automation:LoomX"),
        (KILL_SWITCH, SYMBOL, BTC, "admin"),
        (HALT, SYMBOL, ETH, "admin"),
    ]
    assert [(r.old_limits, r.new_limits) for r in audit[:3]] == [
        (RiskLimits(), first),
        (first, second),
        (second, RiskLimits()),
    ]
    assert (audit[3].old_on, audit[3].new_on, audit[3].new_reason) == (False, True, "fat finger")
    assert (audit[4].old_on, audit[4].new_on, audit[4].old_reason) == (True, False, "fat finger")
    assert (audit[5].old_on, audit[5].new_on, audit[5].new_reason) == (False, True, "news")
    cmds = [cmd for cmd, _ in ex.history]
    assert [(r.seq, r.ts) for r in audit] == [(c.seq, c.ts) for c in cmds[:6]]


def test_pages_by_seq():
    records = [AuditRecord(seq, seq * 10, "admin", LIMITS, VENUE, "") for seq in (3, 5, 8, 9)]
    assert [r.seq for r in page(records, 0, 2)] == [3, 5]
    assert [r.seq for r in page(records, 5, 2)] == [8, 9]
    assert [r.seq for r in page(records, 4, 10)] == [5, 8, 9]
    assert page(records, 9, 10) == []


def test_the_trail_is_bounded_oldest_first(ex):
    for i in range(MAX_RECORDS + 3):
        ex.apply(SetTradingHalt(ETH, i % 2 == 0, requested_by="admin"))
    audit = ex.engine.risk.audit
    assert len(audit) == MAX_RECORDS and audit[0].seq == ex.history[3][0].seq


def test_the_trail_is_state_replayed_and_snapshotted(ex):
    ex.apply(SetRiskLimits(VENUE, "", RiskLimits(max_cancel_ratio=3), requested_by="admin"))
    ex.apply(SetKillSwitch(ACCOUNT, "a", True, "drill", requested_by="admin"))
    replayed = MatchingEngine(ex.engine.instruments.values())
    for cmd, events in ex.history:
        assert replayed.apply(msgspec.msgpack.decode(msgspec.msgpack.encode(cmd), type=type(cmd))) == events
    assert replayed.risk.audit == ex.engine.risk.audit and state_hash(replayed) == state_hash(ex.engine)
    restored = restore_state(decode_state(encode_state(export_state(ex.engine))))
    assert restored.risk.audit == ex.engine.risk.audit and state_hash(restored) == state_hash(ex.engine)
    before = state_hash(ex.engine)
    ex.engine.risk.audit.pop()
    # History that changes no future event: out of the hash, so a state written before the
    # trail existed (restored without it) hashes as a replay from the start (which has it).
    assert state_hash(ex.engine) == before


def test_a_version_3_state_restores_with_an_empty_trail_and_no_throttle_counts():
    """A snapshot from before this change (state version 3: no trailing fields)."""
    ex = Exchange()
    ex.apply(SetRiskLimits(VENUE, "", RiskLimits(max_order_qty=50)))
    ex.place("a", 1, 100, 5, symbol=ETH)
    current = export_state(ex.engine)
    fields = EngineState.__struct_fields__
    v3 = list(msgspec.structs.astuple(current))[: fields.index("throttles")]
    v3[0] = 3
    restored = restore_state(decode_state(msgspec.msgpack.encode(v3)))
    assert restored.risk.audit == [] and restored.risk.throttles == {}
    assert restored.risk.limits == ex.engine.risk.limits and not restored.risk_watch


ADMIN = "risk-audit-admin-key-0000"
ALICE = "risk-audit-alice-key-0000"
OPS = "risk-audit-ops-key-000000"
CONFIG = f"""
admin_key = "{ADMIN}"
fsync = false

[[instruments]]
symbol = "BTC-USD"
tick_size = 5

[[accounts]]
name = "alice"
api_key = "{ALICE}"

[[accounts]]
name = "oncall"
api_key = "{OPS}"
role = "ops"
"""


def test_the_audit_endpoint_over_a_real_node_survives_a_restart(tmp_path):
    config = tmp_path / "loom.toml"
    config.write_text(CONFIG)
    args = ["--config", str(config), "--data-dir", str(tmp_path / "data"), *ARGS]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    first = {"scope": "account", "target": "alice", "max_order_qty": 100, "max_orders_per_sec": 50}
    second = {**first, "max_order_qty": 200, "max_cancel_ratio": 4}
    with loom_run(args, env) as base:
        for body in (first, second):
            status, reply = call(base, "PUT", "/v1/admin/risk/limits", ADMIN, body)
            assert status == 200, reply
        halt = {"symbol": "BTC-USD", "halted": True}
        status, reply = call(base, "POST", "/v1/admin/risk/halt", ADMIN, halt)
        assert status == 200, reply
        status, reply = call(base, "PUT", "/v1/admin/risk/limits", ADMIN, {**first, "max_order_qty": -1})
        assert status == 400 and "max_order_qty" in reply["error"]["message"], reply
        status, trail = call(base, "GET", "/v1/admin/risk/audit", OPS)
        assert status == 200, trail
        records = trail["records"]
        assert [(r["kind"], r["scope"], r["target"], r["requested_by"]) for r in records] == [
            ("limits", "account", "alice", "admin"),
            ("limits", "account", "alice", "admin"),
            ("halt", "symbol", "BTC-USD", "admin"),
        ]
        old, new = records[1]["old"], records[1]["new"]
        assert (old["max_order_qty"], old["max_cancel_ratio"]) == (100, 0)
        assert (new["max_order_qty"], new["max_cancel_ratio"]) == (200, 4)
        assert records[0]["old"]["max_order_qty"] == 0 and records[0]["new"]["max_orders_per_sec"] == 50
        assert records[2]["old"] == {"halted": False, "reason": ""} and records[2]["new"]["halted"] is True
        assert all(r["ts"] > 1_600_000_000 * 10**9 for r in records)  # the sequencer's clock, ns
        assert records[0]["seq"] < records[1]["seq"] < records[2]["seq"]
        status, one = call(base, "GET", "/v1/admin/risk/audit?limit=2", ADMIN)
        assert status == 200 and one["records"] == records[:2] and one["next_after"] == records[1]["seq"]
        status, rest = call(base, "GET", f"/v1/admin/risk/audit?after={one['next_after']}&limit=2", ADMIN)
        assert status == 200 and rest == {"records": records[2:], "next_after": None}
        status, reply = call(base, "GET", "/v1/admin/risk/audit?limit=0", ADMIN)
        assert status == 400 and "limit" in reply["error"]["message"], reply
        status, reply = call(base, "GET", "/v1/admin/risk/audit?after=x", ADMIN)
        assert status == 400 and "after" in reply["error"]["message"], reply
        assert call(base, "GET", "/v1/admin/risk/audit", ALICE)[0] == 403
    with loom_run(args, env) as base:  # recovered from the journal
        status, again = call(base, "GET", "/v1/admin/risk/audit", ADMIN)
        assert status == 200 and again["records"] == records
