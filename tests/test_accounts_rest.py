"""REST transfers and balances against a real `loom run` (issue 15 first slice): the admin
key transfers, a repeat answers with the original, a withdrawal beyond available is 422
INSUFFICIENT_BALANCE, the trader reads its own balances, an ops key reads any account's,
and the balances survive a restart (recovered from the journal)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from loomproc import loom_run

ADMIN = "accounts-admin-key-000000"
ALICE = "accounts-alice-key-000000"
OPS = "accounts-ops-key-00000000"
CONFIG = f"""
admin_key = "{ADMIN}"
fsync = false

[[assets]]
name = "USD"
scale = 2

[[assets]]
name = "BTC"
scale = 8

[[instruments]]
symbol = "BTC-USD"
tick_size = 5
base = "BTC"
quote = "USD"
contract_size = 100000000

[[accounts]]
name = "alice"
api_key = "{ALICE}"

[[accounts]]
name = "oncall"
api_key = "{OPS}"
role = "ops"
"""
ARGS = ["--http-port", "0", "--fix-port", "-1", "--binary-port", "-1"]


def call(base: str, method: str, path: str, key: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method, headers={"X-API-Key": key})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_transfers_and_balances_over_rest_survive_a_restart(tmp_path):
    config = tmp_path / "loom.toml"
    config.write_text(CONFIG)
    args = ["--config", str(config), "--data-dir", str(tmp_path / "data"), *ARGS]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    deposit = {"transfer_id": "dep-1", "account": "alice", "asset": "USD", "kind": "deposit"}
    deposit["amount"] = 10_000
    with loom_run(args, env) as base:
        status, body = call(base, "POST", "/v1/admin/transfers", ADMIN, deposit)
        assert status == 200, body
        [first] = body["events"]
        assert first["type"] == "transfer_applied" and first["new_total"] == 10_000 and not first["repeated"]
        assert first["requested_by"] == "admin" and first["ts"] > 0
        status, body = call(base, "POST", "/v1/admin/transfers", ADMIN, deposit)
        assert status == 200 and body["events"][0]["repeated"], body
        assert body["events"][0]["applied_seq"] == first["seq"]
        too_much = {**deposit, "transfer_id": "wd-1", "kind": "withdrawal", "amount": 10_001}
        status, body = call(base, "POST", "/v1/admin/transfers", ADMIN, too_much)
        assert status == 422 and body["error"]["code"] == "INSUFFICIENT_BALANCE", body
        status, body = call(base, "POST", "/v1/admin/transfers", ADMIN, {**too_much, "amount": 2_500})
        assert status == 200 and body["events"][0]["new_total"] == 7_500, body
        status, body = call(base, "POST", "/v1/admin/transfers", ADMIN, {**deposit, "amount": 1})
        assert status == 409 and body["error"]["code"] == "TRANSFER_ID_CONFLICT", body
        status, body = call(base, "POST", "/v1/admin/transfers", ALICE, {**deposit, "transfer_id": "x"})
        assert status == 403, body
        status, body = call(base, "POST", "/v1/admin/transfers", ADMIN, {**deposit, "kind": "gift"})
        assert status == 400 and "kind" in body["error"]["message"], body
        status, own = call(base, "GET", "/v1/balances", ALICE)
        assert status == 200 and own["credit_checks"] is True
        assert own["balances"] == [{"asset": "USD", "total": 7_500, "held": 0, "available": 7_500}]
        status, seen = call(base, "GET", "/v1/admin/balances/alice", OPS)
        assert status == 200 and seen == own
        assert call(base, "GET", "/v1/balances", OPS)[0] == 403
    with loom_run(args, env) as base:  # recovered from the journal
        status, again = call(base, "GET", "/v1/admin/balances/alice", ADMIN)
        assert status == 200 and again == own
        status, body = call(base, "POST", "/v1/admin/transfers", ADMIN, deposit)
        assert status == 200 and body["events"][0]["repeated"], body  # idempotent across restarts
        assert call(base, "GET", "/v1/balances", ALICE)[1]["balances"][0]["total"] == 7_500
