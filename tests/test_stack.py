"""The pieces of `loom stack` that need no Prometheus: the Alertmanager config it derives
from the project's, the pager sink (a real process), and how it starts and stops processes."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from engine.stack import control, layout
from engine.stack.configs import ALERTMANAGER_YML, load_yaml, stack_alertmanager_config
from engine.stack.pager_sink import read_pages
from engine.stack.procs import (
    Proc,
    StackError,
    alive,
    free_port,
    group_members,
    http_ok,
    processes_under,
    spawn,
    stop_group,
    wait_until,
)

REPO = Path(__file__).resolve().parent.parent


def webhooks(config: dict) -> dict[str, list[dict]]:
    return {r["name"]: r.get("webhook_configs", []) for r in config["receivers"]}


def test_every_receiver_is_pointed_at_this_stack_and_the_routing_is_kept(tmp_path):
    source = load_yaml(ALERTMANAGER_YML)
    token = tmp_path / "automation-token"
    nodes = ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]
    config = stack_alertmanager_config(source, "http://127.0.0.1:9999", nodes, token)
    assert config["route"] == source["route"]
    assert config.get("inhibit_rules") == source.get("inhibit_rules")
    hooks = webhooks(config)
    automation = hooks.pop("runbook-automation")
    assert [h["url"] for h in automation] == [n + "/v1/admin/automation" for n in nodes]
    assert all(h["http_config"]["authorization"]["credentials_file"] == str(token) for h in automation)
    assert all(h["send_resolved"] for h in automation)
    assert hooks, "no person's receiver left"
    for name, entries in hooks.items():
        original = webhooks(source)[name]
        assert [h["url"] for h in entries] == [
            "http://127.0.0.1:9999" + urllib.parse.urlsplit(h["url"]).path for h in original
        ]
    assert source == load_yaml(ALERTMANAGER_YML)  # the project's config is not touched


@pytest.fixture
def sink(tmp_path):
    port = free_port()
    out = tmp_path / "pages.jsonl"
    argv = [sys.executable, "-m", "engine.stack.pager_sink", "--host", "127.0.0.1", "--port", str(port)]
    proc = spawn([*argv, "--out", str(out)], tmp_path / "sink.log", REPO)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until("the sink", lambda: http_ok(base + "/-/ready"), 30, proc=proc, log=tmp_path / "sink.log")
        yield base, out
    finally:
        assert stop_group(proc)


def post(url: str, body: bytes) -> int:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_pager_sink_records_each_notification(sink):
    base, out = sink
    alert = {"status": "firing", "labels": {"alertname": "LoomExchangeDown", "instance": "n1"}}
    alert |= {"startsAt": "2026-01-01T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z"}
    payload = {"version": "4", "receiver": "pager", "status": "firing", "groupKey": "g1", "alerts": [alert]}
    assert post(base + "/page", json.dumps(payload).encode()) == 200
    resolved = {**payload, "status": "resolved", "alerts": [{**alert, "status": "resolved"}]}
    assert post(base + "/page", json.dumps(resolved).encode()) == 200
    assert post(base + "/page", b"not json") == 400  # refused, not recorded
    pages = read_pages(out)
    assert [(p["receiver"], p["status"], p["alertnames"], p["path"]) for p in pages] == [
        ("pager", "firing", ["LoomExchangeDown"], "/page"),
        ("pager", "resolved", ["LoomExchangeDown"], "/page"),
    ]
    assert pages[0]["alerts"][0]["instance"] == "n1" and pages[0]["time"] <= pages[1]["time"]


def test_stop_group_ends_the_process_and_what_it_started(tmp_path):
    # A shell that starts a child and ignores SIGTERM: the group is SIGKILLed after the timeout.
    proc = spawn(["sh", "-c", "trap '' TERM; sleep 300 & wait"], tmp_path / "sh.log", tmp_path)
    wait_until("the child", lambda: len(group_members(proc.pid)) == 2, 10)
    assert stop_group(proc, timeout=0.5)
    assert group_members(proc.pid) == [] and not proc.alive()


def test_a_reused_pid_is_not_ours(tmp_path):
    proc = spawn(["sleep", "300"], tmp_path / "s.log", tmp_path)
    try:
        assert alive(proc.pid, proc.started)
        stranger = Proc(proc.pid, proc.started + 1)  # same pid, started at another time
        assert not stranger.alive()
        assert stop_group(stranger)  # nothing of "it" runs: the real process is left alone
        assert proc.alive()
    finally:
        stop_group(proc)


def test_processes_under_finds_a_process_by_its_directory(tmp_path):
    proc = spawn(["sleep", "300"], tmp_path / "s.log", tmp_path)  # cwd under tmp_path
    try:
        assert proc.pid in processes_under(tmp_path)
    finally:
        stop_group(proc)
    assert processes_under(tmp_path) == []


def test_down_without_a_stack_and_up_over_a_stale_state(tmp_path):
    assert control.down(tmp_path) == {"stopped": [], "strays_killed": [], "left": []}
    assert control.status(tmp_path) == []
    stale = layout.StackState(str(tmp_path), {})
    stale.components.append(
        layout.Component(
            "exchange", 999_999_999, 1, "http://127.0.0.1:1", "/healthz", "", ["x"], str(tmp_path)
        )
    )
    layout.save(stale)
    rows = control.status(tmp_path)
    assert [(r["name"], r["running"], r["healthy"]) for r in rows] == [("exchange", False, False)]
    with pytest.raises(StackError, match="--data-disk is for the single node"):
        control.up(tmp_path, control.Options(cluster=True, data_disk="64M"))
    assert layout.load(tmp_path) is None  # the stale state was forgotten, nothing was started


def test_the_cli_lists_pages_and_says_when_there_is_no_stack(tmp_path):
    run = [sys.executable, "-m", "engine.cli", "stack"]
    res = subprocess.run([*run, "status", "--dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 1 and "no stack" in res.stdout
    pages = control.pages_path(tmp_path)
    pages.parent.mkdir(parents=True)
    note = {
        "time": 1.0,
        "receiver": "pager",
        "status": "firing",
        "alertnames": ["A"],
        "group_key": "",
        "alerts": [],
    }
    pages.write_text(json.dumps(note) + "\n")
    res = subprocess.run(
        [*run, "pages", "--dir", str(tmp_path), "--json"], cwd=REPO, capture_output=True, text=True
    )
    assert json.loads(res.stdout) == [note]
    res = subprocess.run([*run, "drill", "--dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2 and "loom stack up --demo" in res.stderr
