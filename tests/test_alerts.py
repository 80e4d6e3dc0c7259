"""The alert rules, their promtool unit tests, the Alertmanager config and the runbooks.

Runs the real `promtool` and `amtool` (Debian's prometheus and prometheus-alertmanager).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from alerts import rules
from alerts.slo import CONFIG
from telemetry.catalogue import declared_series

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "alerts"
RULE_FILE = ALERTS / "generated" / "loom-rules.yml"
AM_CONFIG = ALERTS / "alertmanager.yml"
TEST_FILES = sorted((ALERTS / "tests").glob("*.yml"))
RUNBOOK_SECTIONS = (
    "## Meaning",
    "## Impact",
    "## Boards to open",
    "## Automated action",
    "## Manual steps",
    "## Verify recovery",
)


def _tool(name: str) -> str:
    path = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(path).exists():
        pytest.fail(f"{name} not installed (scripts/install-tools.sh installs it)")
    return path


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def _load_rules() -> dict:
    text = RULE_FILE.read_text()
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    return json.loads(body)


def _generated_rules() -> list[dict]:
    return [r for g in _load_rules()["groups"] for r in g["rules"]]


# -- the real tools -----------------------------------------------------------------------


def test_promtool_check_rules():
    res = _run(_tool("promtool"), "check", "rules", str(RULE_FILE))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(_generated_rules())} rules found" in res.stdout


def test_promtool_unit_tests():
    assert TEST_FILES
    res = _run(_tool("promtool"), "test", "rules", *map(str, TEST_FILES))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "FAILED" not in res.stdout + res.stderr


def test_amtool_check_config():
    res = _run(_tool("amtool"), "check-config", str(AM_CONFIG))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        (["severity=critical", "alertname=LoomExchangeDown"], "pager"),
        (["severity=warning", "alertname=LoomJournalFsyncLatencyHigh"], "ticket"),
        (["severity=info", "alertname=LoomSomethingInfo"], "ticket"),
        (["severity=warning", "automation=take-snapshot"], "runbook-automation,ticket"),
        (
            ["severity=warning", "alertname=LoomAnomalyDetected", "automation=engage-kill-switch"],
            "runbook-automation,ticket",
        ),
        (["severity=warning", "alertname=LoomAnomalyDetected", "kind=cancel_ratio"], "ticket"),
        (["severity=critical", "automation=failover"], "runbook-automation,pager"),
        (
            ["severity=critical", "alertname=LoomNoLeader", "automation=promote-standby"],
            "runbook-automation,pager",
        ),
        # the dead-man's switch goes alone to its receiver, never to people
        (["severity=none", "alertname=Watchdog"], "deadmansswitch"),
    ],
)
def test_alertmanager_routing(labels, receivers):
    res = _run(_tool("amtool"), "config", "routes", "test", f"--config.file={AM_CONFIG}", *labels)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == receivers


def _route(receiver: str) -> dict:
    import yaml

    config = yaml.safe_load(AM_CONFIG.read_text())
    return next(r for r in config["route"]["routes"] if r["receiver"] == receiver)


def test_pager_and_watchdog_timings_are_the_slo_configs():
    import yaml

    config = yaml.safe_load(AM_CONFIG.read_text())
    pager = _route("pager")
    assert pager["group_wait"] == CONFIG.pager_group_wait
    assert pager["group_interval"] == CONFIG.pager_group_interval
    assert config["global"]["resolve_timeout"] == CONFIG.resolve_timeout
    watchdog = _route("deadmansswitch")
    assert watchdog["repeat_interval"] == watchdog["group_interval"] == CONFIG.watchdog_repeat
    assert "continue" not in watchdog
    # the bars: a kill pages within 30 s, an all-clear follows within 60 s
    assert CONFIG.down_page_s() <= 30, CONFIG.down_page_s()
    assert CONFIG.resolve_page_s() <= 60, CONFIG.resolve_page_s()


def _alert(name: str, instance: str = "node-a:8080", **labels: str) -> dict:
    labels = {"alertname": name, "job": "loom", "severity": "critical", **labels}
    if instance:
        labels["instance"] = instance
    return {"labels": labels, "annotations": {"summary": name}}


# (cause, symptom, symptom's instance or "" for a job-wide alert, inhibited?)
INHIBITIONS = [
    ("LoomExchangeDown", "LoomExchangeNotReady", "node-a:8080", True),
    ("LoomExchangeDown", "LoomAvailabilityFastBurn", "", True),
    ("LoomJournalWriteErrors", "LoomExchangeNotReady", "node-a:8080", True),
    ("LoomJournalWriteErrors", "LoomAvailabilityFastBurn", "", True),
    ("LoomJournalWriteErrors", "LoomOrderToAckFastBurn", "", True),
    ("LoomJournalWriteErrors", "LoomRejectRateHigh", "", True),
    ("LoomDataDiskFull", "LoomJournalWriteErrors", "node-a:8080", True),
    ("LoomDataDiskFull", "LoomExchangeNotReady", "node-a:8080", True),
    ("LoomNoLeader", "LoomExchangeNotReady", "node-b:8080", True),
    ("LoomNoLeader", "LoomAvailabilityFastBurn", "", True),
    ("LoomExchangeAbsent", "LoomAvailabilitySlowBurn", "", True),
    # a cause on one node leaves another node's symptoms alone
    ("LoomExchangeDown", "LoomExchangeNotReady", "node-b:8080", False),
    ("LoomJournalWriteErrors", "LoomShedding", "node-b:8080", False),
    # an alert that drives automation still reaches it; the Watchdog is never silenced
    ("LoomExchangeDown", "LoomSnapshotTooOld", "node-a:8080", False),
    ("LoomNoLeader", "Watchdog", "", False),
]


def test_causes_inhibit_their_symptoms_in_the_real_alertmanager(tmp_path):
    from alertmanager_proc import alertmanager_serve

    posted = []
    for i, (cause, symptom, instance, _) in enumerate(INHIBITIONS):
        job = f"loom-{i}"  # one job per case: cases do not inhibit each other
        source = _alert(
            cause, "" if cause in ("LoomNoLeader", "LoomExchangeAbsent") else "node-a:8080", job=job
        )
        posted += [source, _alert(symptom, instance, job=job, slo="availability")]
    with alertmanager_serve(tmp_path, AM_CONFIG) as am:
        am.post_alerts(posted)

        expected = {(f"loom-{i}", case[1]): case[3] for i, case in enumerate(INHIBITIONS)}

        def settled() -> dict | None:
            """Every alert's inhibitedBy, once they match the expectation (the inhibitor
            learns of new alerts asynchronously)."""
            alerts = am.alerts()
            status = {
                (a["labels"]["job"], a["labels"]["alertname"]): a["status"]["inhibitedBy"] for a in alerts
            }
            ok = len(alerts) == len(posted) and all(bool(status[k]) == v for k, v in expected.items())
            return status if ok else None

        status = am.wait_for("the expected inhibitions", settled, timeout=20)
        for i, (cause, *_rest) in enumerate(INHIBITIONS):
            assert not status[(f"loom-{i}", cause)], f"the cause {cause} itself is inhibited"


def test_automation_receiver_sends_a_bearer_token():
    text = AM_CONFIG.read_text()
    assert "type: Bearer" in text
    assert "credentials_file:" in text


# -- the generator ----------------------------------------------------------------------------


def test_generated_file_is_up_to_date():
    assert RULE_FILE.read_text() == rules.render(rules.DEFAULT_RUNBOOK_URL_TEMPLATE), (
        "alerts/generated/loom-rules.yml is stale: run `python -m alerts.rules`"
    )
    assert rules.main(["--check", "--runbook-url-template", rules.DEFAULT_RUNBOOK_URL_TEMPLATE]) == 0


def test_staleness_check_detects_a_changed_file(tmp_path):
    stale = tmp_path / "rules.yml"
    stale.write_text(RULE_FILE.read_text().replace("> 3600", "> 7200"))
    assert rules.main(["--check", "--output", str(stale)]) == 1


def test_runbook_url_template_is_configurable(monkeypatch):
    monkeypatch.delenv(rules.RUNBOOK_URL_ENV, raising=False)
    text = rules.render("alerts/runbooks/{alert}.md")
    urls = re.findall(r'"runbook_url": "([^"]+)"', text)
    assert len(urls) == len(rules.alerts())
    assert all(u.startswith("alerts/runbooks/") and u.endswith(".md") for u in urls)
    monkeypatch.setenv(rules.RUNBOOK_URL_ENV, "https://wiki.example/{alert}")
    assert rules.runbook_url("LoomExchangeDown") == "https://wiki.example/LoomExchangeDown"


def test_every_alert_is_complete_and_has_a_runbook():
    generated = [r for r in _generated_rules() if "alert" in r]
    assert {r["alert"] for r in generated} == {a.name for a in rules.alerts()}
    for rule in generated:
        name = rule["alert"]
        assert re.fullmatch(r"Loom[A-Z][A-Za-z0-9]*", name) or name == rules.WATCHDOG, name
        assert rule["labels"]["severity"] in ("critical", "warning", "info", "none"), name
        assert (rule["labels"]["severity"] == "none") == (name == rules.WATCHDOG), name
        ann = rule["annotations"]
        for key in ("summary", "description", "runbook_url"):
            assert ann.get(key, "").strip(), f"{name} has no {key}"
        assert ann["runbook_url"].endswith(name)
        page = ALERTS / "runbooks" / f"{name}.md"
        assert page.exists(), f"no runbook page {page}"
        text = page.read_text()
        assert text.startswith(f"# {name}\n")
        for section in RUNBOOK_SECTIONS:
            assert section in text, f"{page.name} lacks {section}"


def test_no_runbook_without_an_alert():
    names = {a.name for a in rules.alerts()}
    pages = {p.stem for p in (ALERTS / "runbooks").glob("*.md")}
    assert pages == names


def test_generator_refuses_a_bad_severity():
    bad = rules.Alert("LoomBad", "up == 0", "page", "s", "d")
    with pytest.raises(ValueError, match="severity"):
        rules._rule(bad, None)


def test_skipped_alerts_are_not_defined():
    assert not set(rules.SKIPPED) & {a.name for a in rules.alerts()}


def test_every_alert_has_a_firing_and_a_quiet_promtool_case():
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in TEST_FILES:
        # each alert_rule_test entry starts at "- eval_time:"; its alertname and exp_alerts follow
        for case in re.split(r"\n\s*- eval_time:", path.read_text())[1:]:
            name = re.search(r"alertname: (\w+)", case).group(1)
            if re.search(r"exp_alerts: \[\]", case.split("\n\n")[0]):
                quiet.add(name)
            elif "exp_labels" in case:
                firing.add(name)
    names = {a.name for a in rules.alerts()}
    assert names - firing == set(), "alerts without a firing test"
    assert names - quiet == {rules.WATCHDOG}, "alerts without a not-firing test (the Watchdog has none)"


# -- metric names come from the catalogue ---------------------------------------------------

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
_KEYWORDS |= {"group_left", "group_right", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric (and recording-rule) names an expression selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def undeclared(rule_list: list[dict]) -> set[str]:
    # ALERTS: Prometheus's own series of its alerts (the burn alerts ask for recent causes).
    allowed = declared_series() | {r["record"] for r in rule_list if "record" in r} | {"ALERTS"}
    used = set().union(*(metric_names(r["expr"]) for r in rule_list))
    return used - allowed


def test_metric_name_parser():
    expr = (
        'histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{job="x",le="0.005"}[5m]))) > 0.01\n'
        'and on (job, instance) (time() - b_seconds offset 5m) < 3600 or absent(c{d="e"})'
    )
    assert metric_names(expr) == {"a_bucket", "b_seconds", "c"}
    assert metric_names("job:x:ratio_rate5m > (14.4 * 0.01)") == {"job:x:ratio_rate5m"}


def test_every_metric_in_an_expr_is_declared():
    generated = _generated_rules()
    used = set().union(*(metric_names(r["expr"]) for r in generated))
    assert "loom_order_to_ack_seconds_bucket" in used and "up" in used  # the parser finds names
    assert undeclared(generated) == set()


def test_the_metric_check_fails_on_an_undeclared_name():
    generated = _generated_rules()
    bogus = {
        "alert": "LoomBogus",
        "expr": 'rate(loom_no_such_metric_total{job="loom"}[5m]) > 0 and job:never_recorded:rate5m > 1',
    }
    assert undeclared([*generated, bogus]) == {"loom_no_such_metric_total", "job:never_recorded:rate5m"}


# -- the runbooks' numbers come from alerts/slo.py ------------------------------------------

_HELD = re.compile(r"\bfor (\d+ (?:second|minute|hour)s?)\b")
_MS = re.compile(r"(?<![~\d.])(\d+(?:\.\d+)?) ms\b")


def _meaning(name: str) -> str:
    text = (ALERTS / "runbooks" / f"{name}.md").read_text()
    return text.split("## Meaning", 1)[1].split("\n## ", 1)[0]


def runbook_drift(name: str, meaning: str) -> list[str]:
    """What the Meaning section of `name`'s runbook says that differs from alerts/slo.py: the
    duration it must hold ("for 5 minutes": the trigger's `for`), and thresholds in ms."""
    from alerts.slo import human_duration, seconds

    trigger = CONFIG.triggers.get(name)
    problems = []
    if trigger is not None and seconds(trigger.for_):
        want = human_duration(trigger.for_)
        held = _HELD.findall(meaning)
        if not held:
            problems.append(f"{name}: says nothing of how long it must hold (config: for {want})")
        problems += [f"{name}: says for {h}, config has for {want}" for h in held if h != want]
    allowed_ms = {f"{CONFIG.latency_threshold_s * 1000:g}"}
    if trigger is not None and 0 < trigger.value < 1:
        allowed_ms.add(f"{trigger.value * 1000:g}")
    problems += [
        f"{name}: says {ms} ms, not from the config" for ms in _MS.findall(meaning) if ms not in allowed_ms
    ]
    return problems


def test_runbooks_state_the_configs_numbers():
    drift = [p for alert in rules.alerts() for p in runbook_drift(alert.name, _meaning(alert.name))]
    assert drift == []


def test_the_down_runbook_states_the_page_arithmetic():
    meaning = _meaning("LoomExchangeDown")
    assert f"= {CONFIG.down_page_s():g} s" in meaning
    assert f"within about {CONFIG.resolve_page_s():g} s" in meaning


def test_runbook_drift_is_caught():
    meaning = _meaning("LoomJournalFsyncLatencyHigh")
    assert runbook_drift("LoomJournalFsyncLatencyHigh", meaning) == []
    assert runbook_drift("LoomJournalFsyncLatencyHigh", meaning.replace("10 minutes", "20 minutes"))
    assert runbook_drift("LoomJournalFsyncLatencyHigh", meaning.replace("10 ms", "20 ms"))
