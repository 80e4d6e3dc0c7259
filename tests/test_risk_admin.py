"""The operator surfaces of risk against a real `start_exchange`: the REST admin endpoints
(auth, validation naming the field, journaled changes), `loom risk ...` and the runbook
automation's kill-switch actions driven through the Alertmanager webhook endpoint."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from waiting import wait_until_async

from engine.app import start_exchange
from engine.cli import main as loom_main
from engine.config import Config
from engine.demo import DEMO_ASSETS, DEMO_INSTRUMENTS
from engine.gateways.http_context import CTX

USER_KEY = "k-alice-0123456789abc"
ADMIN_KEY = "admin-k-0123456789abc"
ADMIN = {"X-API-Key": ADMIN_KEY}
ALICE = {"X-API-Key": USER_KEY}
ETH = "ETH-USD"


def config(tmp_path) -> Config:
    return Config(
        data_dir=tmp_path / "data",
        http_port=0,
        fix_port=-1,
        binary_port=-1,
        assets=list(DEMO_ASSETS),
        instruments=list(DEMO_INSTRUMENTS),
        api_keys={USER_KEY: "alice"},
        admin_key=ADMIN_KEY,
        rate_limit=0.0,
        credit_checks=False,  # risk administration, not money: alice trades unfunded
    )


def with_exchange(tmp_path, scenario) -> None:
    """Runs `scenario(running, call)` against a started exchange; `call(method, path,
    headers, **kw)` returns (status, JSON body)."""

    async def main():
        running = await start_exchange(config(tmp_path))
        base = f"http://127.0.0.1:{running.ports['http']}"
        try:
            async with aiohttp.ClientSession(base) as http:

                async def call(method, path, headers=None, **kw):
                    async with http.request(method, path, headers=headers or {}, **kw) as resp:
                        return resp.status, await resp.json()

                await scenario(running, call, base)
        finally:
            await running.stop()

    asyncio.run(main())


def test_admin_endpoints_need_the_admin_key(tmp_path):
    async def scenario(running, call, base):
        for method, path in (
            ("GET", "/v1/admin/risk"),
            ("PUT", "/v1/admin/risk/limits"),
            ("POST", "/v1/admin/risk/kill-switch"),
            ("POST", "/v1/admin/risk/halt"),
            ("GET", "/v1/admin/surveillance"),
        ):
            for headers in ({}, ALICE):
                status, reply = await call(method, path, headers, json={})
                assert status == 403 and reply["error"]["code"] == "FORBIDDEN", (method, path, reply)

    with_exchange(tmp_path, scenario)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/admin/risk/limits", {"scope": "planet"}, "scope"),
        ("/v1/admin/risk/limits", {"scope": "venue", "max_order_qty": -1}, "max_order_qty"),
        ("/v1/admin/risk/limits", {"scope": "venue", "max_order_qty": "10"}, "max_order_qty"),
        ("/v1/admin/risk/limits", {"scope": "venue", "max_qty": 10}, "max_qty"),
        ("/v1/admin/risk/limits", {"scope": "venue", "target": "BTC-USD"}, "target"),
        ("/v1/admin/risk/limits", {"scope": "symbol", "target": "NOPE"}, "target"),
        ("/v1/admin/risk/limits", {"scope": "account"}, "target"),
        ("/v1/admin/risk/kill-switch", {"scope": "venue"}, "engaged"),
        ("/v1/admin/risk/kill-switch", {"scope": "account", "target": "x" * 65, "engaged": True}, "target"),
        ("/v1/admin/risk/halt", {"symbol": "NOPE", "halted": True}, "symbol"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(tmp_path, path, body, field):
    async def scenario(running, call, base):
        method = "PUT" if path.endswith("limits") else "POST"
        status, reply = await call(method, path, ADMIN, json=body)
        assert status == 400, reply
        assert field in reply["error"]["message"], reply
        assert running.node.engine.risk.limits == {}

    with_exchange(tmp_path, scenario)


def test_limits_kill_switches_and_halts_through_rest_and_the_cli(tmp_path, capsys):
    async def scenario(running, call, base):
        order = {"symbol": ETH, "side": "buy", "qty": 10, "price": 100}
        status, reply = await call("POST", "/v1/orders", ALICE, json=order)
        assert status == 201, reply
        resting_id = reply["order"]["order_id"]

        body = {"scope": "symbol", "target": ETH, "max_order_qty": 50, "price_band_bps": 1000}
        status, reply = await call("PUT", "/v1/admin/risk/limits", ADMIN, json=body)
        assert status == 200 and reply["events"][0]["type"] == "risk_limits_changed", reply
        assert reply["events"][0]["limits"]["max_order_qty"] == 50
        status, reply = await call("POST", "/v1/orders", ALICE, json={**order, "qty": 51})
        assert status == 422 and reply["error"]["code"] == "ORDER_QUANTITY_LIMIT", reply
        status, reply = await call("POST", "/v1/orders", ALICE, json={**order, "price": 200})
        assert status == 422 and reply["error"]["code"] == "PRICE_OUTSIDE_BAND", reply

        body = {"scope": "account", "target": "alice", "engaged": True, "reason": "drill"}
        status, reply = await call("POST", "/v1/admin/risk/kill-switch", ADMIN, json=body)
        assert status == 200, reply
        head, *cancels = reply["events"]
        assert head["type"] == "kill_switch_changed" and head["cancelled"] == 1, head
        assert [(c["order_id"], c["reason"]) for c in cancels] == [(resting_id, "KILL_SWITCH")]
        status, reply = await call("POST", "/v1/orders", ALICE, json=order)
        assert status == 422 and reply["error"]["code"] == "KILL_SWITCH_ACCOUNT", reply

        status, reply = await call(
            "POST", "/v1/admin/risk/halt", ADMIN, json={"symbol": "BTC-USD", "halted": True}
        )
        assert status == 200 and reply["events"][0]["type"] == "trading_halt_changed", reply

        status, view = await call("GET", "/v1/admin/risk", ADMIN)
        assert status == 200
        assert view["kill_switches"] == [{"scope": "account", "target": "alice", "reason": "drill"}]
        assert view["halts"] == [{"symbol": "BTC-USD", "reason": ""}]
        assert view["limits"][0]["scope"] == "symbol" and view["limits"][0]["target"] == ETH

        # The CLI talks to the same endpoints (run off the event loop that serves them).
        cli = ["--url", base, "--admin-key", ADMIN_KEY]
        assert (
            await asyncio.to_thread(
                loom_main, ["risk", "release", "--scope", "account", "--target", "alice", *cli]
            )
            == 0
        )
        assert await asyncio.to_thread(loom_main, ["risk", "resume", "BTC-USD", *cli]) == 0
        assert await asyncio.to_thread(loom_main, ["risk", "show", *cli]) == 0
        assert (
            await asyncio.to_thread(loom_main, ["risk", "limits", "--scope", "venue", "--target", "x", *cli])
            == 1
        )
        assert await asyncio.to_thread(loom_main, ["risk", "surveillance", *cli]) == 0
        status, reply = await call("POST", "/v1/orders", ALICE, json=order)
        assert status == 201, reply
        metrics = await _text(base + "/metrics")
        assert 'loom_risk_rejects_total{layer="order",reason="order_quantity_limit"} 1.0' in metrics
        assert 'loom_kill_switch_engaged{scope="account"} 0.0' in metrics

    with_exchange(tmp_path, scenario)
    out = capsys.readouterr()
    assert '"kill_switches": []' in out.out  # `loom risk show` after the release
    assert "target must be empty for scope venue" in out.err


async def _text(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return await resp.text()


def _alert(fingerprint: str, action: str, **labels) -> dict:
    return {
        "status": "firing",
        "labels": {"alertname": "LoomAnomalyDetected", "automation": action, **labels},
        "fingerprint": fingerprint,
        "startsAt": "2026-01-01T00:00:00Z",
    }


def test_kill_switch_automation_actions(tmp_path):
    async def scenario(running, call, base):
        hook = "/v1/admin/automation"
        bearer = {"Authorization": f"Bearer {ADMIN_KEY}"}

        async def webhook(*alerts, headers=bearer):
            return await call("POST", hook, headers, json={"version": "4", "alerts": list(alerts)})

        engage = _alert("fp1", "engage-kill-switch", risk_scope="account", account="alice")
        status, reply = await webhook(engage, headers={})
        assert status == 401, reply
        assert running.node.engine.risk.kill_switches == {}

        status, order = await call(
            "POST", "/v1/orders", ALICE, json={"symbol": ETH, "side": "buy", "qty": 1, "price": 9}
        )
        assert status == 201, order
        status, reply = await webhook(engage)
        assert status == 200 and reply["done"] == 1, reply
        assert "1 resting orders cancelled" in reply["records"][0]["detail"]
        assert running.node.engine.risk.kill_switches == {(3, "alice"): "automation: LoomAnomalyDetected"}
        seq = running.node.engine.last_seq
        status, trail = await call("GET", "/v1/admin/risk/audit", ADMIN)
        [record] = trail["records"]  # the automation is named as who engaged it
        assert (record["requested_by"], record["target"], record["new"]["engaged"]) == (
            "automation:LoomAnomalyDetected",
            "alice",
            True,
        ), trail
        # The same notification again is a duplicate; another instance finds it engaged.
        status, reply = await webhook(engage)
        assert reply["duplicate"] == 1, reply
        status, reply = await webhook({**engage, "fingerprint": "fp2"})
        assert reply["done"] == 1 and "already engaged" in reply["records"][0]["detail"], reply
        assert running.node.engine.last_seq == seq  # nothing journaled

        status, reply = await webhook(
            _alert("fp3", "engage-kill-switch", risk_scope="account"),  # no account label
            _alert("fp4", "engage-kill-switch", risk_scope="galaxy", account="x"),
            _alert("fp5", "throttle-everyone", risk_scope="venue"),
        )
        assert reply["failed"] == 2 and reply["unknown_action"] == 1, reply
        assert "account label" in reply["records"][0]["detail"]

        status, reply = await webhook(
            _alert("fp6", "release-kill-switch", risk_scope="account", risk_target="alice")
        )
        assert reply["done"] == 1 and "released" in reply["records"][0]["detail"], reply
        assert running.node.engine.risk.kill_switches == {}

        status, audit = await call("GET", "/v1/admin/automation/audit", ADMIN)
        outcomes = [(r["action"], r["outcome"]) for r in audit["records"]]
        assert outcomes.count(("engage-kill-switch", "done")) == 2
        assert ("release-kill-switch", "done") in outcomes
        metrics = await _text(base + "/metrics")
        assert 'loom_automation_actions_total{action="engage-kill-switch",outcome="done"} 2.0' in metrics
        assert 'loom_automation_actions_total{action="engage-kill-switch",outcome="failed"} 2.0' in metrics
        assert 'loom_automation_actions_total{action="release-kill-switch",outcome="done"} 1.0' in metrics

    with_exchange(tmp_path, scenario)


def test_the_anomaly_alert_names_no_account_and_the_automation_asks_surveillance(tmp_path):
    """LoomAnomalyDetected carries no account label (metrics name no accounts, issue 13): its
    self-match automation engages the kill switch of each account surveillance flags now."""

    async def scenario(running, call, base):
        hook, bearer = "/v1/admin/automation", {"Authorization": f"Bearer {ADMIN_KEY}"}
        engage = _alert("fp-sm", "engage-kill-switch", risk_scope="account", kind="self_match")
        status, reply = await call("POST", hook, bearer, json={"version": "4", "alerts": [engage]})
        assert status == 200 and "no account is flagged" in reply["records"][0]["detail"], reply
        assert running.node.engine.risk.kill_switches == {}
        for _ in range(20):  # self-trades with STP off: alice's self-match score reaches 1
            for side in ("sell", "buy"):
                order = {"symbol": ETH, "side": side, "qty": 1, "price": 10, "stp": "none"}
                assert (await call("POST", "/v1/orders", ALICE, json=order))[0] == 201
        # Scrapes and the automation read what the surveillance worker last published (~1 s).
        desk = running.http_runner.app[CTX].surveillance
        await wait_until_async("surveillance to flag alice", lambda: desk.flagged("self_match") == ["alice"])
        metrics = await _text(base + "/metrics")
        assert 'loom_surveillance_top_score{kind="self_match",rank="1"} 1.0' in metrics
        assert "alice" not in metrics  # the score is there, the name is not
        status, reply = await call(
            "POST", hook, bearer, json={"version": "4", "alerts": [{**engage, "fingerprint": "fp-sm2"}]}
        )
        assert status == 200 and reply["done"] == 1, reply
        assert running.node.engine.risk.kill_switches == {(3, "alice"): "automation: LoomAnomalyDetected"}

    with_exchange(tmp_path, scenario)
