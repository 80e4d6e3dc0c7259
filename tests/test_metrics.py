"""/metrics of a real `loom run --demo`: Prometheus text that the real promtool accepts,
OpenMetrics by content negotiation, and only names the catalogue declares."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.request

import pytest
from loomproc import loom_run

from engine.demo import DEMO_ASSETS, DEMO_INSTRUMENTS
from telemetry.catalogue import CATALOGUE, CLUSTER_ONLY, COUNTER, HISTOGRAM, TRACING_ONLY, declared_series


@pytest.fixture(scope="module")
def exchange(tmp_path_factory):
    data = tmp_path_factory.mktemp("metrics") / "data"
    args = [
        "--demo",
        "--rate",
        "3000",
        "--data-dir",
        str(data),
        "--http-port",
        "0",
        "--fix-port",
        "0",
        "--binary-port",
        "0",
    ]
    with loom_run(args, dict(os.environ)) as base:
        # Wait (by polling, not sleeping blind) until the demo flow has traded and journaled
        # more than 100 commands (test_the_figures_are_alive expects both).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = fetch(base + "/metrics")[1]
            last = re.search(r"^loom_journal_last_seq (\S+)$", text, re.M)
            if 'loom_trades_total{symbol="BTC-USD"}' in text and last and float(last.group(1)) > 100:
                break
            time.sleep(0.05)
        yield base


def fetch(url: str, accept: str | None = None) -> tuple[str, str]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.headers["Content-Type"], resp.read().decode()


def families(text: str) -> set[str]:
    """Metric families by catalogue name (a counter's _total/_created series folded in)."""
    out = set()
    for m in re.finditer(r"^# TYPE (\S+) ", text, re.M):
        name = m.group(1)
        for suffix in ("_total", "_created"):
            if name.endswith(suffix) and name.removesuffix(suffix) in CATALOGUE:
                name = name.removesuffix(suffix)
        out.add(name)
    return out


def test_promtool_accepts_the_metrics(exchange):
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: `make test` installs it (scripts/install-tools.sh)"
    _ctype, text = fetch(exchange + "/metrics")
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), (result.stdout, result.stderr)


def test_promtool_catches_a_bad_metric():
    """The check above can fail: promtool flags a counter without _total."""
    bad = "# HELP loom_bad A counter.\n# TYPE loom_bad counter\nloom_bad 1\n"
    result = subprocess.run(["promtool", "check", "metrics"], input=bad, capture_output=True, text=True)
    assert "loom_bad" in result.stdout + result.stderr


def test_content_negotiation(exchange):
    ctype, text = fetch(exchange + "/metrics")
    assert ctype.startswith("text/plain"), ctype
    assert not text.rstrip().endswith("# EOF")
    ctype, text = fetch(exchange + "/metrics", "application/openmetrics-text; version=1.0.0")
    assert ctype.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")


def test_every_exposed_loom_metric_is_in_the_catalogue_and_back(exchange):
    _ctype, text = fetch(exchange + "/metrics")
    exposed = {f for f in families(text) if f.startswith("loom_")}
    assert exposed <= set(CATALOGUE), exposed - set(CATALOGUE)
    # Every catalogue family is exposed once the demo has run (labelled families appear
    # with their first sample).
    # A standalone node leaves out the cluster's families (only its role is exported), a node
    # not exporting traces the span counts.
    optional = {"loom_rate_limited", "loom_rejects", "loom_decode_errors"}
    assert set(CATALOGUE) - exposed <= optional | CLUSTER_ONLY | TRACING_ONLY, set(CATALOGUE) - exposed
    assert not exposed & CLUSTER_ONLY, exposed & CLUSTER_ONLY
    for line in text.splitlines():
        if line.startswith("loom_"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            assert name in declared_series(), name


def test_the_figures_are_alive(exchange):
    _ctype, text = fetch(exchange + "/metrics")

    def value(series: str) -> float:
        m = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
        assert m, series
        return float(m.group(1))

    assert value("loom_ready") == 1.0
    assert value('loom_cluster_role{role="standalone"}') == 1.0
    assert 'loom_cluster_role{role="leader"}' not in text
    assert value("loom_journal_last_seq") > 100
    # The start-up setup is journaled without passing the service: the demo's assets, its
    # instrument listings and the credit switch.
    setup = len(DEMO_ASSETS) + len(DEMO_INSTRUMENTS) + 1
    # Every command journaled by this scrape is counted once its batch is done. The demo flow
    # keeps committing: a batch written (on the journal thread, for a slow fdatasync or a busy
    # CPU) but not yet counted when a scrape runs is counted by a later one, so read again.
    journaled = value("loom_journal_last_seq") - setup
    deadline = time.monotonic() + 10
    counted = value("loom_commands_total")
    while counted < journaled and time.monotonic() < deadline:
        counted = float(re.search(r"^loom_commands_total (\S+)$", fetch(exchange + "/metrics")[1], re.M)[1])
    assert counted >= journaled, (counted, journaled)
    assert value('loom_stage_duration_seconds_count{stage="journal"}') > 0
    # The stages, in path order.
    stages = set(re.findall(r'^loom_stage_duration_seconds_count\{stage="([a-z_]+)"\}', text, re.M))
    assert stages == {"decode", "sequencer_wait", "risk", "journal", "match", "ack"}
    assert value("loom_journal_fsync_seconds_count") > 0
    assert value('loom_sessions{protocol="binary"}') == 0.0
    # A spread exists while the book has both sides; the demo's flow may have emptied one side
    # at the moment of a scrape (its market orders sweep), so read again until it has both.
    spread_line = r'^loom_book_spread\{symbol="BTC-USD"\} (\S+)$'
    deadline = time.monotonic() + 10
    while not re.search(spread_line, text, re.M) and time.monotonic() < deadline:
        text = fetch(exchange + "/metrics")[1]
    assert value('loom_book_spread{symbol="BTC-USD"}') > 0
    assert value("loom_data_disk_size_bytes") >= value("loom_data_disk_free_bytes") > 0


def test_risk_checks_are_timed_while_the_demo_has_limits_set(exchange):
    """The demo sets risk limits, so one batch in 8 times its orders' pre-trade checks."""
    deadline = time.monotonic() + 30
    count = 0.0
    while time.monotonic() < deadline and not count:
        m = re.search(
            r'^loom_stage_duration_seconds_count\{stage="risk"\} (\S+)$',
            fetch(exchange + "/metrics")[1],
            re.M,
        )
        count = float(m.group(1)) if m else 0.0
        if not count:
            time.sleep(0.1)
    assert count > 0
    _ctype, text = fetch(exchange + "/metrics")
    total = float(re.search(r'^loom_stage_duration_seconds_sum\{stage="risk"\} (\S+)$', text, re.M).group(1))
    assert 0 < total / count < 0.001, "a risk check takes microseconds, not milliseconds"


def test_catalogue_follows_prometheus_conventions():
    for name, spec in CATALOGUE.items():
        assert re.fullmatch(r"loom_[a-z0-9_]+", name), name
        assert not name.endswith("_total"), f"{name}: prometheus_client adds _total to counters"
        if spec.unit == "seconds":
            assert name.endswith("_seconds"), name
        if spec.unit == "bytes":
            assert name.endswith("_bytes"), name
        if spec.kind == HISTOGRAM:
            assert list(spec.buckets) == sorted(spec.buckets) and spec.buckets, name
        assert "order_id" not in spec.labels, f"{name}: order ids are never labels"
        assert spec.help.endswith(".") or spec.help.endswith(")"), name
        assert spec.kind in (COUNTER, HISTOGRAM) or not spec.buckets
