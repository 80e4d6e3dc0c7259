"""Runbook automation: the Alertmanager webhook drives actions (engine/automation.py).

Unit tests of RunbookAutomation, the HTTP endpoints against a real `start_exchange`, and one
end-to-end drill: a real `loom run --demo`, the real Prometheus evaluating a test variant
of LoomSnapshotTooOld (age > 5 s, for 0s) and the real Alertmanager posting to the
exchange's webhook, which takes the snapshot that resolves the alert.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.parse
import urllib.request
from datetime import datetime
from types import SimpleNamespace

import aiohttp
import msgspec
import pytest
from alertmanager_proc import alertmanager_run
from loomproc import loom_run
from prometheus_client import CollectorRegistry
from prometheus_proc import prometheus_run
from snapshot_request import request_snapshot
from waiting import wait_until

from engine.app import start_exchange
from engine.automation import RunbookAutomation, WebhookPayload
from engine.config import DEMO_ADMIN_KEY, Config
from engine.demo import DEMO_ASSETS, DEMO_INSTRUMENTS
from telemetry.metrics import ExchangeMetrics

TOKEN = "automation-token-123"
USER_KEY = "k-alice-0123456789abc"
ADMIN_KEY = "admin-k-0123456789abc"


def payload(*alerts: dict) -> WebhookPayload:
    return msgspec.convert({"version": "4", "status": "firing", "alerts": list(alerts)}, WebhookPayload)


def alert(status="firing", action="take-snapshot", fingerprint="fp1", starts_at="2026-01-01T00:00:00Z"):
    labels = {"alertname": "LoomSnapshotTooOld", "severity": "warning"}
    if action is not None:
        labels["automation"] = action
    return {"status": status, "labels": labels, "fingerprint": fingerprint, "startsAt": starts_at}


class Fixture:
    def __init__(self, fail: bool = False) -> None:
        self.snapshots = 0
        self.fail = fail
        self.now = 1000.0
        self.metrics = ExchangeMetrics(CollectorRegistry(), process=False)
        self.automation = RunbookAutomation(self.take_snapshot, TOKEN, lambda: self.now, metrics=self.metrics)

    def take_snapshot(self):
        if self.fail:
            raise OSError("disk full")
        self.snapshots += 1
        return SimpleNamespace(seq=42)

    def handle(self, body: WebhookPayload) -> dict:
        return asyncio.run(self.automation.handle(body))

    def count(self, action: str, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "loom_automation_actions_total", {"action": action, "outcome": outcome}
        )
        return value or 0.0


def test_a_firing_alert_runs_its_action_once_per_alert_instance():
    f = Fixture()
    summary = f.handle(payload(alert()))
    assert f.snapshots == 1
    assert summary["done"] == 1 and summary["duplicate"] == 0, summary
    assert summary["records"][0]["detail"] == "snapshot at seq 42"
    # Alertmanager repeats the notification: the action is not repeated.
    summary = f.handle(payload(alert()))
    assert f.snapshots == 1
    assert summary["duplicate"] == 1 and summary["done"] == 0, summary
    # The same alert firing again later (a new startsAt) is a new instance.
    f.handle(payload(alert(starts_at="2026-01-01T01:00:00Z")))
    assert f.snapshots == 2
    assert f.count("take-snapshot", "done") == 2
    assert f.count("take-snapshot", "duplicate") == 1


def test_unknown_actions_are_refused_and_resolved_alerts_ignored():
    f = Fixture()
    summary = f.handle(
        payload(alert(action="rm-rf"), alert(status="resolved"), alert(action=None, fingerprint="fp2"))
    )
    assert f.snapshots == 0
    assert summary["unknown_action"] == 1 and summary["ignored"] == 2, summary
    [record] = f.automation.audit_records()
    assert record["action"] == "rm-rf" and record["outcome"] == "unknown_action", record
    # The metric labels unknown actions as one value (alert labels are not trusted for cardinality).
    assert f.count("unknown", "unknown_action") == 1


def test_a_failed_action_is_audited_counted_and_retried_on_the_next_notification():
    f = Fixture(fail=True)
    summary = f.handle(payload(alert()))
    assert summary["failed"] == 1, summary
    assert "disk full" in summary["records"][0]["detail"]
    f.fail = False
    summary = f.handle(payload(alert()))
    assert summary["done"] == 1 and f.snapshots == 1, summary
    assert f.count("take-snapshot", "failed") == 1 and f.count("take-snapshot", "done") == 1


def test_the_audit_records_every_decision_and_is_bounded():
    f = Fixture()
    f.automation.audit = f.automation.audit.__class__(maxlen=3)
    for i in range(5):
        f.now = 1000.0 + i
        f.handle(payload(alert(fingerprint=f"fp{i}")))
    records = f.automation.audit_records()
    assert [r["fingerprint"] for r in records] == ["fp2", "fp3", "fp4"]
    assert records[-1] == {
        "time": 1004.0,
        "alertname": "LoomSnapshotTooOld",
        "action": "take-snapshot",
        "fingerprint": "fp4",
        "starts_at": "2026-01-01T00:00:00Z",
        "outcome": "done",
        "detail": "snapshot at seq 42",
    }


def test_the_counter_series_exist_before_any_decision():
    f = Fixture()
    assert (
        f.metrics.registry.get_sample_value(
            "loom_automation_actions_total", {"action": "take-snapshot", "outcome": "done"}
        )
        == 0.0
    )


def test_bearer_token_check():
    f = Fixture()
    assert f.automation.authorized(f"Bearer {TOKEN}")
    for header in (None, "", TOKEN, f"Bearer {TOKEN}x", "Basic abc", "Bearer \udcff"):
        assert not f.automation.authorized(header), header
    assert not RunbookAutomation(f.take_snapshot, None).authorized("Bearer ")


# -- HTTP against a real start_exchange ------------------------------------------------------


def test_http_endpoints(tmp_path):
    async def scenario():
        cfg = Config(
            data_dir=tmp_path / "data",
            http_port=0,
            fix_port=-1,
            binary_port=-1,
            assets=list(DEMO_ASSETS),
            instruments=list(DEMO_INSTRUMENTS),
            api_keys={USER_KEY: "alice"},
            admin_key=ADMIN_KEY,
            rate_limit=0.0,
        )
        running = await start_exchange(cfg)
        base = f"http://127.0.0.1:{running.ports['http']}"
        try:
            async with aiohttp.ClientSession(base) as http:

                async def call(method, path, headers=None, **kw):
                    async with http.request(method, path, headers=headers or {}, **kw) as resp:
                        return resp.status, await resp.json()

                body = {"version": "4", "status": "firing", "alerts": [alert()]}
                url = "/v1/admin/automation"
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": ADMIN_KEY}):
                    status, reply = await call("POST", url, headers, json=body)
                    assert status == 401 and reply["error"]["code"] == "UNAUTHENTICATED", (headers, reply)
                bearer = {"Authorization": f"Bearer {ADMIN_KEY}"}  # the admin key by default
                for bad in ({"version": "4"}, {"version": "3", "alerts": []}, {"alerts": [{"x": 1}]}):
                    status, reply = await call("POST", url, bearer, json=bad)
                    assert status == 400 and "error" in reply, (bad, reply)
                status, reply = await call(
                    "POST", url, {**bearer, "Content-Type": "application/json"}, data=b"{nope"
                )
                assert status == 400 and reply["error"]["code"] == "MALFORMED_JSON", reply
                before = running.node.last_snapshot
                status, reply = await call("POST", url, bearer, json=body)
                assert status == 200 and reply["done"] == 1, reply
                assert running.node.last_snapshot is not None and running.node.last_snapshot is not before
                status, reply = await call("POST", url, bearer, json=body)
                assert status == 200 and reply["duplicate"] == 1, reply

                audit = "/v1/admin/automation/audit"
                status, reply = await call("GET", audit, {"X-API-Key": USER_KEY})
                assert status == 403, reply
                status, reply = await call("GET", audit, {"X-API-Key": ADMIN_KEY})
                assert status == 200 and [r["outcome"] for r in reply["records"]] == ["done", "duplicate"]

                # The drill endpoint: journal writes fail until cleared.
                faults = "/v1/admin/faults"
                status, reply = await call("POST", faults, {"X-API-Key": USER_KEY}, json={})
                assert status == 403, reply
                admin = {"X-API-Key": ADMIN_KEY}
                status, reply = await call("POST", faults, admin, json={"journal_write_errors": "yes"})
                assert status == 400, reply
                status, reply = await call("POST", faults, admin, json={"journal_write_errors": True})
                assert status == 200 and reply == {"journal_write_errors": True}, reply
                order = {"symbol": DEMO_INSTRUMENTS[0].symbol, "side": "buy", "qty": 1, "price": 1}
                status, reply = await call("POST", "/v1/orders", {"X-API-Key": USER_KEY}, json=order)
                assert status == 503 and reply["error"]["code"] == "JOURNAL_WRITE_FAILED", reply
                status, reply = await call("POST", faults, admin, json={"journal_write_errors": False})
                assert status == 200, reply
                status, reply = await call("POST", "/v1/orders", {"X-API-Key": USER_KEY}, json=order)
                assert status in (201, 422), reply  # durable again (422 would be a price/tick refusal)

                metrics = await (await http.get("/metrics")).text()
                assert 'loom_automation_actions_total{action="take-snapshot",outcome="done"} 1.0' in metrics
        finally:
            await running.stop()

    asyncio.run(scenario())


# -- end to end: Prometheus -> Alertmanager -> the exchange ----------------------------------

JOB = "loom"
THRESHOLD_S = 5


def _http_json(url: str, headers: dict | None = None) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as resp:
        return json.loads(resp.read())


def _rfc3339(text: str) -> float:
    # Prometheus writes nanoseconds; fromisoformat takes at most microseconds.
    head, _, frac = text.rstrip("Z").partition(".")
    stamp = datetime.fromisoformat(head + "+00:00").timestamp()
    return stamp + (float("0." + frac) if frac else 0.0)


def _wait(what: str, probe, timeout: float, procs=(), interval: float = 0.1):
    """`wait_until`, stopping early if one of `procs` (name, Popen) exits."""

    def running() -> None:
        for name, proc in procs:
            assert proc.poll() is None, f"{name} exited with {proc.returncode}"

    # URLError is an OSError; ValueError: an answer not yet in its final shape.
    return wait_until(
        what, probe, timeout=timeout, interval=interval, retry_on=(OSError, ValueError), guard=running
    )


@pytest.mark.slow
def test_prometheus_alertmanager_drive_a_snapshot(tmp_path):
    started = time.monotonic()
    args = ["--demo", "--rate", "200", "--data-dir", str(tmp_path / "data")]
    args += ["--http-port", "0", "--fix-port", "-1", "--binary-port", "-1"]
    env = {k: v for k, v in os.environ.items() if k != "LOOM_AUTOMATION_TOKEN"}
    # Default snapshot schedule (every 300 s or 500k commands): no scheduled snapshot here.
    with loom_run(args, env) as base:
        target = urllib.parse.urlsplit(base).netloc
        admin = {"X-API-Key": DEMO_ADMIN_KEY}
        webhook = base + "/v1/admin/automation"
        with alertmanager_run(tmp_path / "alertmanager", webhook, DEMO_ADMIN_KEY) as am:
            scrape = [{"job_name": JOB, "static_configs": [{"targets": [target]}]}]
            with prometheus_run(tmp_path / "prometheus", scrape) as prom:
                # prometheus_run writes only scrape settings: add the test rule and the
                # Alertmanager, then reload the configuration (SIGHUP).
                rules = tmp_path / "prometheus" / "automation-rules.yml"
                rule = {
                    "alert": "LoomSnapshotTooOld",
                    "expr": f'loom_snapshot_age_seconds{{job="{JOB}"}} > {THRESHOLD_S}',
                    "for": "0s",
                    "labels": {"severity": "warning", "automation": "take-snapshot"},
                    "annotations": {"summary": "test variant of LoomSnapshotTooOld"},
                }
                rules.write_text(json.dumps({"groups": [{"name": "automation-test", "rules": [rule]}]}))
                config_path = tmp_path / "prometheus" / "prometheus.yml"
                config = json.loads(config_path.read_text())
                config["rule_files"] = [str(rules)]
                config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [am.address]}]}]}
                config_path.write_text(json.dumps(config, indent=2))
                prom.proc.send_signal(signal.SIGHUP)
                procs = [("prometheus", prom.proc), ("alertmanager", am.proc)]

                prom.wait_for(
                    "the alertmanager to be active",
                    lambda: prom.get("/api/v1/alertmanagers")["activeAlertmanagers"],
                    timeout=20,
                    interval=0.1,
                )
                # The fault starts now, with everything watching: a fresh snapshot, then none
                # (the schedule is 300 s), so the age crosses the threshold THRESHOLD_S later.
                status, body = request_snapshot(base, DEMO_ADMIN_KEY)
                assert status == 200, body
                reset_at = time.time()

                def quiet_since_reset():
                    scraped = prom.query(f'timestamp(loom_snapshot_age_seconds{{job="{JOB}"}})')
                    return scraped and float(scraped[0]["value"][1]) > reset_at and not firing()

                def firing():
                    alerts = prom.get("/api/v1/alerts")["alerts"]
                    mine = [a for a in alerts if a["labels"]["alertname"] == "LoomSnapshotTooOld"]
                    return [a for a in mine if a["state"] == "firing"]

                # (The age may have crossed the threshold once already, before Prometheus's first
                # scrape: wait for a scrape after the reset and no alert firing, then the new one.)
                _wait("a scrape after the reset with no alert firing", quiet_since_reset, 30, procs)
                [fired] = _wait("the alert to fire", firing, 30, procs)
                active_at = _rfc3339(fired["activeAt"])

                def done_record():
                    records = _http_json(base + "/v1/admin/automation/audit", admin)["records"]
                    done = [
                        r
                        for r in records
                        if r["action"] == "take-snapshot"
                        and r["outcome"] == "done"
                        and abs(_rfc3339(r["starts_at"]) - active_at) < 0.01  # this alert, not an earlier one
                    ]
                    return done and done[0]

                record = _wait("the automation to take a snapshot", done_record, 20, procs)
                # The fault's own moment: the snapshot age grows 1 s per second, so the first
                # scraped sample above the threshold dates the crossing exactly.
                query = f'loom_snapshot_age_seconds{{job="{JOB}"}}[5m]'
                samples = prom.get("/api/v1/query", query=query)["result"][0]["values"]
                ts, age = next(
                    (float(t), float(v)) for t, v in samples if float(t) > reset_at and float(v) > THRESHOLD_S
                )
                fault_at = ts - (age - THRESHOLD_S)
                fault_to_action = record["time"] - fault_at
                alert_to_action = record["time"] - active_at
                print(
                    f"\nfault-to-action: {fault_to_action:.3f} s (snapshot age crossed {THRESHOLD_S} s at "
                    f"{fault_at:.3f}; alert active {active_at - fault_at:.3f} s later, action "
                    f"{alert_to_action:.3f} s after that; audit record at {record['time']:.3f})"
                )
                assert 0 <= alert_to_action < 10, (alert_to_action, fired, record)
                assert alert_to_action <= fault_to_action < 20, (fault_to_action, samples, record)

                def age_dropped():
                    result = prom.query(f'loom_snapshot_age_seconds{{job="{JOB}"}}')
                    return result and float(result[0]["value"][1]) < THRESHOLD_S

                _wait("loom_snapshot_age_seconds to drop", age_dropped, 15, procs)
                _wait(
                    "the alert to resolve",
                    lambda: all(a["activeAt"] != fired["activeAt"] for a in firing()),
                    15,
                    procs,
                )
                # Every record so far is for this one alert instance: exactly one snapshot.
                records = _http_json(base + "/v1/admin/automation/audit", admin)["records"]
                mine = [r for r in records if r["starts_at"] == record["starts_at"]]
                assert [r["outcome"] for r in mine].count("done") == 1, records
    print(f"end-to-end drill took {time.monotonic() - started:.1f} s")
