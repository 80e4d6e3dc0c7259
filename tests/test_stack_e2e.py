"""`loom stack` end to end: the real CLI starts the exchange, Prometheus (the generated rules),
Alertmanager (the project's routing) and the pager sink; the bars of issue 12 are checked
against them, then `loom stack drill` injects each incident and the pages are counted.

One stack for the module (`up --fast`: 1 s scrapes and evaluations; the rules' `for`
durations and the routing's timings are the project's, as generated). The issue's bars:
one page per incident, LoomExchangeDown pages within 30 s of a kill, the pager's resolved
notification within 60 s of recovery. Each drill prints its figures (pytest -s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from waiting import wait_until

from engine.stack.configs import rule_names
from engine.stack.procs import alive, get_json, processes_under

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
KILL_TO_PAGE_S = 30.0  # the bar for LoomExchangeDown
RECOVERY_TO_RESOLVED_S = 60.0  # the bar for the pager's all-clear
DATA_DISK = "256M"  # over 4 h of the demo's journal growth, or LoomDataDiskFillingUp fires by itself


def loom(*args: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    directory = tmp_path_factory.mktemp("stack")
    args = ["stack", "up", "--demo", "--rate", "100", "--fast", "--dir", str(directory), "--json"]
    if can_mount():
        args += ["--data-disk", DATA_DISK]
    res = loom(*args)
    if res.returncode != 0:
        loom("stack", "down", "--dir", str(directory))
        raise AssertionError(f"loom stack up exited {res.returncode}:\n{res.stderr}")
    summary = json.loads(res.stdout)
    summary["dir_path"] = directory
    yield summary
    loom("stack", "down", "--dir", str(directory))


def test_up_prints_the_urls_and_pids_and_every_target_is_up(stack):
    for name in ("prometheus", "alertmanager", "exchange", "pager-sink"):
        assert alive(stack["pids"][name]), name
    for url in (stack["prometheus"], stack["alertmanager"], stack["exchange"]):
        assert url.startswith("http://127.0.0.1:")
    targets = get_json(stack["prometheus"] + "/api/v1/targets?state=active")["data"]["activeTargets"]
    assert {t["labels"]["job"] for t in targets} == {"loom", "alertmanager"}
    assert all(t["health"] == "up" for t in targets), targets
    res = loom("stack", "status", "--dir", str(stack["dir_path"]), "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    status = json.loads(res.stdout)
    assert status["up"] and {c["name"] for c in status["components"]} == set(stack["pids"])


def test_a_second_up_says_it_is_up(stack):
    res = loom("stack", "up", "--demo", "--dir", str(stack["dir_path"]))
    assert res.returncode == 1
    assert "already up" in res.stderr


def test_prometheus_loads_the_generated_rules_and_knows_alertmanager(stack):
    groups = get_json(stack["prometheus"] + "/api/v1/rules")["data"]["groups"]
    loaded = {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
    assert loaded == rule_names()
    ams = get_json(stack["prometheus"] + "/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
    assert [a["url"].split("/api")[0] for a in ams] == [stack["alertmanager"]]


def test_the_automation_receiver_reaches_the_exchange_with_its_token(stack):
    """Alertmanager's automation webhook is the exchange's endpoint, and the token file the
    stack wrote is the one the exchange accepts (an empty payload: no action runs)."""
    config = json.loads((stack["dir_path"] / "alertmanager" / "alertmanager.yml").read_text())
    [receiver] = [r for r in config["receivers"] if "automation" in r["name"]]
    [hook] = receiver["webhook_configs"]
    assert hook["url"] == stack["exchange"] + "/v1/admin/automation"
    token = Path(hook["http_config"]["authorization"]["credentials_file"]).read_text()
    body = json.dumps({"version": "4", "alerts": []}).encode()
    req = urllib.request.Request(
        hook["url"],
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    others = [
        h["url"] for r in config["receivers"] if r is not receiver for h in r.get("webhook_configs", [])
    ]
    assert others and all(u.startswith(stack["pager_sink"] + "/") for u in others)


def test_the_watchdog_fires(stack):
    def watchdog():
        alerts = get_json(stack["prometheus"] + "/api/v1/alerts")["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "Watchdog" and a["state"] == "firing"]

    wait_until("a firing Watchdog", watchdog, interval=0.2)


@pytest.mark.parametrize("series", ["loom_build_info", "loom_event_loop_lag_seconds_bucket"])
def test_runtime_signals_are_on_metrics(stack, series):
    with urllib.request.urlopen(stack["exchange"] + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert any(line.startswith(series + "{") or line.startswith(series + " ") for line in text.splitlines())
    wait_until(
        f"{series} in Prometheus",
        lambda: get_json(stack["prometheus"] + f"/api/v1/query?query={series}")["data"]["result"],
        interval=0.2,
    )


@pytest.mark.parametrize("incident", ["kill", "journal-errors", "disk-full"])
def test_one_page_per_incident_and_a_timely_all_clear(stack, incident):
    if incident == "disk-full" and not can_mount():
        pytest.skip("the disk-full drill needs root to mount a small tmpfs data disk")
    # The waits exceed the bars (a figure just over one is still measured, then fails below).
    quiet, page, resolve = 120, 60, RECOVERY_TO_RESOLVED_S + 30
    waits = ["--quiet-timeout", str(quiet), "--page-timeout", str(page), "--resolve-timeout", str(resolve)]
    res = loom(
        "stack",
        "drill",
        "--dir",
        str(stack["dir_path"]),
        "--incidents",
        incident,
        "--json",
        *waits,
        timeout=quiet + page + resolve + 60,  # the drill gives up first, undoing its fault
    )
    assert res.stdout, res.stderr
    [result] = json.loads(res.stdout)
    print(f"\n{incident}: {json.dumps(result)}")
    assert result["pages"] == 1, result
    assert result["resolved"] >= 1, result
    if incident == "kill":
        assert result["page_alertnames"] == ["LoomExchangeDown"], result
        assert result["to_page_s"] <= KILL_TO_PAGE_S, result
    assert result["to_resolved_s"] is not None and result["to_resolved_s"] <= RECOVERY_TO_RESOLVED_S, result
    assert not result["error"], result
    assert res.returncode == 0, res.stderr


def test_down_leaves_no_process_behind(stack):
    directory = stack["dir_path"]
    state = json.loads((directory / "state.json").read_text())
    pids = [c["pid"] for c in state["components"]]  # the drill's restart changed the node's
    res = loom("stack", "down", "--dir", str(directory))
    assert res.returncode == 0, res.stderr
    assert [p for p in pids if alive(p)] == []
    assert processes_under(directory) == []
    assert not any(os.path.ismount(m) for m in state["mounts"])
    assert loom("stack", "status", "--dir", str(directory)).returncode == 1


def test_a_cluster_stack_comes_up_and_goes_down(tmp_path):
    """--cluster: 3 nats-servers and 2 nodes, both scraped, one leader; nothing left after down."""
    res = loom("stack", "up", "--cluster", "--fast", "--dir", str(tmp_path), "--json")
    summary: dict = {"pids": {}}
    try:
        assert res.returncode == 0, res.stderr
        summary = json.loads(res.stdout)
        assert sorted(summary["pids"]) == sorted(
            [
                "nats-0",
                "nats-1",
                "nats-2",
                "exchange-a",
                "exchange-b",
                "pager-sink",
                "alertmanager",
                "prometheus",
            ]
        )
        assert len(summary["exchanges"]) == 2 and summary["exchange"] == summary["exchanges"][0]
        targets = get_json(summary["prometheus"] + "/api/v1/targets?state=active")["data"]["activeTargets"]
        assert sorted(t["labels"]["job"] for t in targets) == ["alertmanager", "loom", "loom"]
        assert all(t["health"] == "up" for t in targets), targets
        status = json.loads(loom("stack", "status", "--dir", str(tmp_path), "--json").stdout)
        assert sum(bool(c.get("ready")) for c in status["components"]) == 1  # the leader; the standby is not
        config = json.loads((tmp_path / "alertmanager" / "alertmanager.yml").read_text())
        [receiver] = [r for r in config["receivers"] if "automation" in r["name"]]
        assert [h["url"] for h in receiver["webhook_configs"]] == [
            u + "/v1/admin/automation" for u in summary["exchanges"]
        ]
    finally:
        down = loom("stack", "down", "--dir", str(tmp_path))
    assert down.returncode == 0, down.stderr
    assert [p for p in summary["pids"].values() if alive(p)] == []
    assert processes_under(tmp_path) == []
