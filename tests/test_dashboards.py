"""The dashboards: the committed JSON is what the sources generate, every query names only
catalogue metrics, and every query answers against the real Prometheus scraping a real
`loom run --demo`."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse

import pytest
from loomproc import REPO, loom_run
from natsproc import unique_stream
from prometheus_proc import prometheus_run

from dashboards.build import GENERATED, build, differences, render
from dashboards.catalogue_queries import UndeclaredMetric, m, referenced_metrics, undeclared
from engine.cli import main as loom_main
from engine.cluster.drill import TRADER_KEY, NodeProcess, http, in_sync, wait_for
from telemetry.catalogue import CATALOGUE, CLUSTER_ONLY, declared_series

# Queries that are empty while nothing is wrong, with the reason. Each must still parse.
EMPTY_OUTSIDE_INCIDENTS = {
    "sum by (protocol) (rate(loom_rate_limited_total[1m]))": (
        "loom_rate_limited has per-protocol children only once a rate limit has refused a request; "
        "the demo traders stay under their limits"
    ),
    "sum by (protocol, code) (rate(loom_decode_errors_total[1m]))": (
        "loom_decode_errors has children only once a gateway has refused unreadable input; the demo "
        "flow sends well-formed commands (tests/test_decode_errors.py covers the counter)"
    ),
    "max by (kind, rank) (loom_surveillance_top_score)": (
        "top scores are exported only while an account scores at least 0.5; the demo traders "
        "behave (tests/test_surveillance.py drives the scores)"
    ),
}


# Boards whose series only a `loom run --cluster` node exports: queried against a real
# two-node cluster below instead of the standalone demo.
CLUSTER_BOARDS = {"loom-cluster"}


def board_targets(uids: set[str] | None = None) -> list[tuple[str, str, str]]:
    """(board uid, panel title, expr) for every target of every committed board (or of
    the boards named)."""
    found = []
    for path in sorted(GENERATED.glob("*.json")):
        if uids is not None and path.stem not in uids:
            continue
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for t in panel.get("targets", []):
                if t.get("expr"):
                    found.append((board["uid"], panel["title"], t["expr"]))
    return found


def runnable(expr: str) -> str:
    """The expression as Prometheus itself takes it: Grafana's variables filled in."""
    out = expr.replace("${__rate_interval}", "1m").replace("$__rate_interval", "1m")
    out = out.replace("${datasource}", "").replace("$datasource", "")
    assert "$" not in out, f"unsubstituted variable in {expr!r}"
    return out


# -- (a) staleness -------------------------------------------------------------------------


def test_committed_json_matches_the_sources():
    assert differences() == [], "dashboards/generated is stale: run `loom dashboards build` (make dashboards)"
    assert sorted(p.name for p in GENERATED.glob("*.json")) == sorted(render())


def test_build_is_deterministic_and_check_detects_drift(tmp_path, capsys):
    first = {p.name: p.read_text() for p in build(tmp_path)}
    second = {p.name: p.read_text() for p in build(tmp_path)}
    assert first == second
    assert set(first) == {
        "loom-overview.json",
        "loom-matching.json",
        "loom-persistence.json",
        "loom-gateways.json",
        "loom-cluster.json",
        "loom-order-lookup.json",
        "loom-risk.json",
    }
    assert loom_main(["dashboards", "build", "--out", str(tmp_path), "--check"]) == 0
    (tmp_path / "loom-overview.json").write_text(first["loom-overview.json"].replace("loom_", "lööm_", 1))
    assert loom_main(["dashboards", "build", "--out", str(tmp_path), "--check"]) == 1
    assert "loom-overview.json is stale" in capsys.readouterr().err


def test_every_board_has_panels_and_a_prometheus_datasource_variable():
    for path in sorted(GENERATED.glob("*.json")):
        board = json.loads(path.read_text())
        assert board["uid"] == path.stem
        names = {v["name"]: v for v in board["templating"]["list"]}
        assert names["datasource"]["type"] == "datasource"
        assert names["datasource"]["query"] == "prometheus"
        assert board["panels"], board["uid"]
        for panel in board["panels"]:
            if panel.get("targets"):
                assert panel["datasource"] == "${datasource}", (board["uid"], panel["title"])


def test_order_lookup_links_to_the_trace_lookup_and_the_trace_ui():
    board = json.loads((GENERATED / "loom-order-lookup.json").read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["order_id"]["type"] == "textbox"
    urls = {link["url"] for panel in board["panels"] for link in panel.get("links", [])}
    assert "${loom_url}/v1/orders/${order_id}/trace" in urls
    assert "${trace_ui}/trace/${trace_id}" in urls


# -- (b) only catalogue metrics --------------------------------------------------------------


def test_every_query_references_only_declared_series():
    targets = board_targets()
    assert len(targets) >= 30, len(targets)
    declared = declared_series()
    for uid, title, expr in targets:
        names = referenced_metrics(expr)
        assert names, (uid, title, expr)
        assert names <= declared, (uid, title, expr, names - declared)


def test_the_check_catches_undeclared_names():
    assert undeclared("sum by (symbol) (rate(loom_orders_total[1m]))") == set()
    assert undeclared("rate(loom_orders_totl[1m])") == {"loom_orders_totl"}
    assert undeclared('sum(node_cpu_seconds_total{mode="idle"})') == {"node_cpu_seconds_total"}
    assert undeclared("histogram_quantile(0.99, sum by (le) (rate(loom_order_to_ack_bucket[5m])))") == {
        "loom_order_to_ack_bucket"
    }
    # A counter's bare name is not a series: Prometheus only has `_total`.
    assert undeclared("loom_orders") == {"loom_orders"}
    with pytest.raises(UndeclaredMetric):
        m("loom_orders_totl")
    assert m("loom_orders_total") == "loom_orders_total"


# -- (c) every query answers against the real exchange ---------------------------------------


def assert_every_query_answers(prom, queries: list[str], empty_ok: set[str]) -> None:
    """Runs every query until each has data (those in `empty_ok` need only parse)."""
    # rate() and deriv() need two scrapes in their window.
    prom.wait_for("two scrapes of loom", lambda: prom.query("count_over_time(up[1m]) >= 2"), 30)
    pending = set(queries)
    answered: dict[str, list] = {}
    deadline = time.monotonic() + 20
    while pending and time.monotonic() < deadline:
        for q in sorted(pending):
            try:
                result = prom.query(q)
            except urllib.error.HTTPError as exc:  # a PromQL error: fail at once
                raise AssertionError(f"prometheus refused {q!r}: {exc.read()!r}") from exc
            answered[q] = result
            if result:
                pending.discard(q)
        if pending - empty_ok:
            time.sleep(0.5)
        else:
            break
    missing = pending - empty_ok
    assert not missing, f"queries with no data after the deadline: {sorted(missing)}"
    # Every allowlisted query was run (so it parses).
    assert empty_ok & set(queries) <= answered.keys()


def scrape_config(*bases: str) -> list[dict]:
    targets = [urllib.parse.urlsplit(base).netloc for base in bases]
    return [{"job_name": "loom", "metrics_path": "/metrics", "static_configs": [{"targets": targets}]}]


METRIC_OF = {series: spec.name for spec in CATALOGUE.values() for series in spec.series_names}


def cluster_only(expr: str) -> bool:
    """A query of metrics only `loom run --cluster` nodes export: checked against a cluster."""
    names = referenced_metrics(expr)
    return bool(names) and all(METRIC_OF.get(n) in CLUSTER_ONLY for n in names)


def test_every_query_returns_data_from_a_real_exchange(tmp_path):
    uids = {json.loads(p.read_text())["uid"] for p in GENERATED.glob("*.json")} - CLUSTER_BOARDS
    queries = sorted({runnable(expr) for _, _, expr in board_targets(uids) if not cluster_only(expr)})
    assert set(EMPTY_OUTSIDE_INCIDENTS) <= set(queries), "allowlist names a query no board has"
    args = ["--demo", "--rate", "500", "--data-dir", str(tmp_path / "data"), "--http-port", "0"]
    args += ["--fix-port", "-1", "--binary-port", "-1"]
    with (
        loom_run(args, dict(os.environ)) as base,
        prometheus_run(tmp_path / "prometheus", scrape_config(base)) as prom,
    ):
        assert_every_query_answers(prom, queries, set(EMPTY_OUTSIDE_INCIDENTS))


def test_every_cluster_query_returns_data_from_a_real_cluster(nats_cluster, tmp_path):
    """The Cluster board, and the cluster panels of the others, against a leader and a
    standby on a real 3-server NATS cluster, with orders flowing through the replicated
    journal and a snapshot replicated."""
    queries = sorted({runnable(expr) for _, _, expr in board_targets(CLUSTER_BOARDS)})
    queries += sorted({runnable(expr) for _, _, expr in board_targets() if cluster_only(expr)} - set(queries))
    assert len(queries) >= 10, queries
    assert any("loom_replication_publish_seconds" in q for q in queries if "loom_journal" not in q)
    stream, _prefix = unique_stream()
    nodes = [NodeProcess(n, nats_cluster.urls, tmp_path, stream) for n in ("a", "b")]
    try:
        nodes[0].start()
        wait_for("a to lead", lambda: nodes[0].status().get("role") == "leader")
        nodes[1].start()
        wait_for("b to follow a", lambda: in_sync(nodes))
        with prometheus_run(tmp_path / "prometheus", scrape_config(*(n.base for n in nodes))) as prom:
            for i in range(20):  # replicated appends for the publish→PubAck histogram
                order = {
                    "client_order_id": f"dash-{i}",
                    "symbol": "BTC-USD",
                    "side": "buy",
                    "qty": 1,
                    "price": 5,
                }
                status, body = http("POST", nodes[0].base + "/v1/orders", order, key=TRADER_KEY)
                assert status == 201, body
            status, body = http("POST", nodes[0].base + "/v1/admin/snapshot")  # replicated by the leader
            assert status == 200, body
            assert_every_query_answers(prom, queries, set())
            leaders = prom.query(runnable('sum(loom_cluster_role{role="leader"})'))
            assert float(leaders[0]["value"][1]) == 1.0
    finally:
        for node in nodes:
            node.stop()


def test_generated_dir_is_inside_the_repo():
    assert GENERATED.parent == REPO / "dashboards"
