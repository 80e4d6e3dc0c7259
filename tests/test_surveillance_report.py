"""The surveillance report of a real `loom run` node: two accounts of one beneficial owner
(`owner` in [[accounts]]) trade with each other; GET /v1/admin/surveillance/report (admin
and ops keys) and `loom risk surveillance` name the owner and both accounts, the metrics
count the wash trade by kind and symbol without any account, a trader key is refused."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from loomproc import loom_run
from waiting import wait_until

from engine.cli import main as loom_main

ADMIN = "admin-key-0123456789abcdef"
OPS = "ops-key-0123456789abcdef00"
KEYS = {
    "alice-1": "alice-one-key-0000000",
    "alice-2": "alice-two-key-0000000",
    "bob": "bob-key-00000000000000",
}
CONFIG = f"""
admin_key = "{ADMIN}"
credit_checks = false

[[instruments]]
symbol = "ETH-USD"
tick_size = 1

[[accounts]]
name = "alice-1"
api_key = "{KEYS["alice-1"]}"
owner = "alice"

[[accounts]]
name = "alice-2"
api_key = "{KEYS["alice-2"]}"
owner = "alice"

[[accounts]]
name = "bob"
api_key = "{KEYS["bob"]}"

[[accounts]]
name = "oncall"
api_key = "{OPS}"
role = "ops"
"""


def call(base: str, method: str, path: str, key: str, body: dict | None = None) -> tuple[int, dict | str]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"X-API-Key": key, **({"Content-Type": "application/json"} if data else {})}
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read().decode()
            return resp.status, json.loads(raw) if raw.startswith("{") else raw
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def order(base: str, account: str, side: str, price: int, qty: int) -> None:
    body = {"symbol": "ETH-USD", "side": side, "type": "limit", "price": price, "qty": qty}
    status, reply = call(base, "POST", "/v1/orders", KEYS[account], body)
    assert status in (200, 201), reply


def test_the_report_and_the_cli_name_the_owner_of_a_wash_trade(tmp_path, capsys):
    config = tmp_path / "loom.toml"
    config.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    args = ["--config", str(config), "--data-dir", str(tmp_path / "data"), "--fix-port", "-1"]
    with loom_run([*args, "--binary-port", "-1", "--http-port", "0"], env) as base:
        order(base, "alice-1", "sell", 1000, 5)
        order(base, "alice-2", "buy", 1000, 3)  # one owner on both sides: a wash trade
        order(base, "bob", "buy", 1000, 2)  # alice-1 and bob: an ordinary trade

        # The report serves what the surveillance worker last published (about once a second).
        def published() -> dict | None:
            status, report = call(base, "GET", "/v1/admin/surveillance/report", ADMIN)
            assert status == 200, report
            return report if report["findings"]["wash_trade"]["total"] else None

        report = wait_until("the worker to publish the wash trade", published)
        assert report["analysed_through_seq"] > 0 and 0 <= report["age_s"] < 5, report
        assert report["buffer"]["backlog_events"] == 0, report
        wash = report["findings"]["wash_trade"]
        assert wash["total"] == 1 and wash["by_symbol"] == {"ETH-USD": 1}, wash
        [found] = wash["latest"]
        assert found["owner"] == "alice" and sorted(found["accounts"]) == ["alice-1", "alice-2"]
        assert (found["qty"], found["price"], found["same_account"]) == (3, 1000, False)
        assert report["buffer"]["dropped_batches"] == 0 and report["buffer"]["processed_batches"] >= 3
        status, as_ops = call(base, "GET", "/v1/admin/surveillance/report", OPS)
        assert status == 200 and as_ops["findings"]["wash_trade"]["total"] == 1
        status, refused = call(base, "GET", "/v1/admin/surveillance/report", KEYS["bob"])
        assert status == 403, refused
        status, metrics = call(base, "GET", "/metrics", ADMIN)
        assert status == 200
        assert 'loom_surveillance_findings_total{kind="wash_trade",symbol="ETH-USD"} 1.0' in metrics
        assert 'loom_surveillance_findings_total{kind="spoofing",symbol="ETH-USD"} 0.0' in metrics
        assert 'symbol=""' not in metrics and "loom_surveillance_backlog_events 0.0" in metrics
        assert "alice" not in metrics and "bob" not in metrics
        capsys.readouterr()
        assert loom_main(["risk", "surveillance", "--url", base, "--admin-key", OPS]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["findings"]["wash_trade"]["latest"][0]["owner"] == "alice"


def test_surveillance_off_buffers_nothing_and_says_so(tmp_path):
    config = tmp_path / "loom.toml"
    config.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")} | {"LOOM_SURVEILLANCE": "0"}
    args = ["--config", str(config), "--data-dir", str(tmp_path / "data"), "--fix-port", "-1"]
    with loom_run([*args, "--binary-port", "-1", "--http-port", "0"], env) as base:
        order(base, "alice-1", "sell", 1000, 5)
        order(base, "alice-2", "buy", 1000, 3)  # a wash trade nobody watches
        status, reply = call(base, "GET", "/v1/admin/surveillance/report", ADMIN)
        assert status == 501 and reply["error"]["code"] == "NOT_AVAILABLE", reply
        status, metrics = call(base, "GET", "/metrics", ADMIN)
        assert status == 200 and "loom_surveillance_findings_total" not in metrics
        assert 'loom_trades_total{symbol="ETH-USD"} 1.0' in metrics  # the trade happened all the same
