"""The dashboards: the committed JSON is what the sources generate and valid under Grafana's
dashboard schema; every query names only catalogue metrics and is scoped by `$instance`
(and `$node`); panels carry the SLO config's thresholds, value mappings and units; every
query, variable and annotation answers against the real Prometheus scraping a real
`loom run --demo` (and a real cluster)."""

from __future__ import annotations

import copy
import json
import os
import re
import time
import urllib.error
import urllib.parse

import jsonschema
import pytest
from loomproc import REPO, loom_run
from natsproc import unique_stream
from prometheus_proc import prometheus_run
from snapshot_request import request_snapshot

from alerts.slo import CONFIG
from dashboards.build import GENERATED, build, differences, render
from dashboards.catalogue_queries import (
    UndeclaredMetric,
    m,
    referenced_metrics,
    undeclared,
)
from engine.cli import main as loom_main
from engine.cluster.drill import ADMIN_KEY, TRADER_KEY, NodeProcess, http, in_sync, wait_for
from telemetry.catalogue import CATALOGUE, CLUSTER_ONLY, declared_series
from telemetry.collectors import ROLES

# Queries that are empty while nothing is wrong, with the reason. Each must still parse.
EMPTY_OUTSIDE_INCIDENTS = {
    'sum by (protocol) (rate(loom_rate_limited_total{job="loom",instance=~".*"}[1m]))': (
        "loom_rate_limited has per-protocol children only once a rate limit has refused a request; "
        "the demo traders stay under their limits"
    ),
    'sum by (protocol, code) (rate(loom_decode_errors_total{job="loom",instance=~".*"}[1m]))': (
        "loom_decode_errors has children only once a gateway has refused unreadable input; the demo "
        "flow sends well-formed commands (tests/test_decode_errors.py covers the counter)"
    ),
    'max by (kind, rank) (loom_surveillance_top_score{job="loom",instance=~".*"})': (
        "top scores are exported only while an account scores at least 0.5; the demo traders "
        "behave (tests/test_surveillance.py drives the scores)"
    ),
}


# Boards whose series only a `loom run --cluster` node exports: queried against a real
# two-node cluster below instead of the standalone demo.
CLUSTER_BOARDS = {"loom-cluster"}


def boards() -> dict[str, dict]:
    """Every committed board's JSON by uid."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(GENERATED.glob("*.json"))}


def board_targets(uids: set[str] | None = None) -> list[tuple[str, str, str]]:
    """(board uid, panel title, expr) for every Prometheus target of every committed board
    (or of the boards named)."""
    found = []
    for uid, board in boards().items():
        if uids is not None and uid not in uids:
            continue
        for panel in board["panels"]:
            for t in panel.get("targets", []):
                if t.get("expr"):
                    found.append((uid, panel["title"], t["expr"]))
    return found


def board_annotations() -> list[tuple[str, str, str]]:
    """(board uid, annotation name, expr) for every Prometheus annotation."""
    return [
        (uid, a["name"], a["expr"])
        for uid, board in boards().items()
        for a in board.get("annotations", {}).get("list", [])
        if a.get("expr")
    ]


def panel(uid: str, title: str) -> dict:
    found = [p for p in boards()[uid]["panels"] if p.get("title") == title]
    assert len(found) == 1, (uid, title, [p.get("title") for p in boards()[uid]["panels"]])
    return found[0]


def runnable(expr: str) -> str:
    """The expression as Prometheus itself takes it: Grafana's variables filled in (the
    scope variables as "All", their allValue)."""
    out = expr.replace("${__rate_interval}", "1m").replace("$__rate_interval", "1m")
    out = out.replace("${datasource}", "").replace("$datasource", "")
    out = out.replace("$instance", ".*").replace("$node", ".*")
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


PROMETHEUS_DS = {"type": "prometheus", "uid": "${datasource}"}


def test_every_board_has_panels_a_prometheus_datasource_and_scope_variables():
    for uid, board in boards().items():
        names = {v["name"]: v for v in board["templating"]["list"]}
        assert names["datasource"]["type"] == "datasource"
        assert names["datasource"]["query"] == "prometheus"
        for scope, series in (("instance", "loom_ready"), ("node", "loom_standby_applied_seq")):
            var = names[scope]
            assert var["type"] == "query" and var["datasource"] == PROMETHEUS_DS, (uid, var)
            assert re.fullmatch(rf"label_values\({series}\{{[^}}]*\}}, {scope}\)", var["query"]["query"])
            assert var["includeAll"] and var["multi"] and var["allValue"] == ".*"
        assert board["panels"], uid
        for p in board["panels"]:
            if any("expr" in t for t in p.get("targets", [])):
                assert p["datasource"] == PROMETHEUS_DS, (uid, p["title"])
                assert all(t["datasource"] == PROMETHEUS_DS for t in p["targets"]), (uid, p["title"])


def test_per_node_rows_repeat_by_the_scope_variables():
    repeats = {
        (uid, p["title"], p["repeat"])
        for uid, board in boards().items()
        for p in board["panels"]
        if p["type"] == "row" and p.get("repeat")
    }
    assert ("loom-overview", "Runtime: $instance", "instance") in repeats
    assert ("loom-cluster", "Standby $node", "node") in repeats


def test_order_lookup_reads_any_order_through_a_data_source_holding_the_ops_key():
    board = boards()["loom-order-lookup"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["order_id"]["type"] == "textbox"
    lookup = variables["lookup"]
    assert lookup["type"] == "datasource" and lookup["query"] == "yesoreyeram-infinity-datasource"
    # The trace endpoint is queried by Grafana's server through that data source...
    queried = [
        t
        for p in board["panels"]
        for t in p.get("targets", [])
        if t.get("url") == "${loom_url}/v1/orders/${order_id}/trace"
    ]
    assert queried and all(t["datasource"] == {"type": lookup["query"], "uid": "${lookup}"} for t in queried)
    # ...never by a browser link, which has no key (401), and no key is in any URL.
    text = json.dumps(board)
    urls = [link["url"] for p in board["panels"] for link in p.get("links", [])] + [t["url"] for t in queried]
    assert not any("/v1/" in u for u in urls if "${loom_url}" in u and u not in {t["url"] for t in queried})
    assert not re.search(r"(?i)(api_?key|token|key)=", text)
    assert "${trace_ui}/trace/${trace_id}" in urls
    content = next(p["options"]["content"] for p in board["panels"] if p["type"] == "text")
    assert "httpHeaderName1: X-API-Key" in content and "secureJsonData" in content and "ops key" in content


# -- (b) only catalogue metrics --------------------------------------------------------------


def test_every_query_references_only_declared_series():
    targets = board_targets()
    assert len(targets) >= 30, len(targets)
    declared = declared_series()
    for uid, title, expr in targets:
        names = referenced_metrics(expr)
        assert names, (uid, title, expr)
        assert names <= declared, (uid, title, expr, names - declared)
    for uid, name, expr in board_annotations():
        assert referenced_metrics(expr) <= declared, (uid, name, expr)


SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?")
NODE_LABELLED = {n for spec in CATALOGUE.values() if "node" in spec.labels for n in spec.series_names}


def unscoped(expr: str) -> list[str]:
    """Every metric in `expr` whose selector lacks the job, `$instance` (or, for a series
    labelled by node, `$node`) matcher."""
    metrics = referenced_metrics(expr)
    bad = []
    for name, sel in SELECTOR.findall(expr):
        if name not in metrics:
            continue
        need = [CONFIG.selector(), 'instance=~"$instance"'] + (
            ['node=~"$node"'] if name in NODE_LABELLED else []
        )
        if not sel or not all(n in sel for n in need):
            bad.append(f"{name}{sel}")
    return bad


def test_every_query_and_annotation_is_scoped_by_instance_and_node():
    for uid, title, expr in board_targets() + board_annotations():
        assert not unscoped(expr), (uid, title, expr)
    # The check itself: a bare series, one without $instance, a node series without $node.
    assert unscoped("sum(rate(loom_orders_total[1m]))") == ["loom_orders_total"]
    assert unscoped('loom_ready{job="loom"}') == ['loom_ready{job="loom"}']
    assert unscoped('loom_standby_lag_commands{job="loom",instance=~"$instance"}')
    assert not unscoped(m("loom_standby_lag_commands"))


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
    assert m("loom_orders_total") == 'loom_orders_total{job="loom",instance=~"$instance"}'
    assert m("loom_ready", 'x="1"') == 'loom_ready{job="loom",instance=~"$instance",x="1"}'


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


def variable_values(prom, uid: str, name: str) -> list[str]:
    """What Grafana lists for a `label_values(series, label)` variable of a board."""
    var = next(v for v in boards()[uid]["templating"]["list"] if v["name"] == name)
    series, label = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"]["query"]).groups()
    return prom.get(f"/api/v1/label/{label}/values", **{"match[]": runnable(series)})


def annotation_queries(only: set[str] | None = None) -> dict[str, str]:
    return {name: runnable(expr) for _, name, expr in board_annotations() if only is None or name in only}


def test_every_query_returns_data_from_a_real_exchange(tmp_path):
    uids = set(boards()) - CLUSTER_BOARDS
    exprs = [expr for _, _, expr in board_targets(uids) if not cluster_only(expr)]
    queries = sorted({runnable(e) for e in exprs})
    assert set(EMPTY_OUTSIDE_INCIDENTS) <= set(queries), "allowlist names a query no board has"
    # Restarts, failovers, automation: empty here, they must parse. A snapshot is taken below.
    quiet = set(annotation_queries()) - {"Snapshots"}
    annotations = set(annotation_queries(quiet).values())
    args = ["--demo", "--rate", "500", "--data-dir", str(tmp_path / "data"), "--http-port", "0"]
    args += ["--fix-port", "-1", "--binary-port", "-1"]
    with (
        loom_run(args, {**os.environ, "LOOM_ADMIN_KEY": ADMIN_KEY}) as base,
        prometheus_run(tmp_path / "prometheus", scrape_config(base)) as prom,
    ):
        # After two scrapes, so that increase() sees the snapshot count rise.
        prom.wait_for("two scrapes of loom", lambda: prom.query("count_over_time(up[1m]) >= 2"), 30)
        status, body = request_snapshot(base)
        assert status == 200, body
        snapshots = annotation_queries({"Snapshots"})["Snapshots"]
        assert_every_query_answers(
            prom, [*queries, snapshots, *annotations], set(EMPTY_OUTSIDE_INCIDENTS) | annotations
        )
        assert variable_values(prom, "loom-overview", "instance") == [urllib.parse.urlsplit(base).netloc]


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
            status, body = request_snapshot(nodes[0].base)  # replicated by the leader
            assert status == 200, body
            assert_every_query_answers(prom, queries, set())
            leaders = prom.query(runnable('sum(loom_cluster_role{role="leader"})'))
            assert float(leaders[0]["value"][1]) == 1.0
            assert len(variable_values(prom, "loom-cluster", "instance")) == 2
            wait_for(
                "the leader to report its standby", lambda: variable_values(prom, "loom-cluster", "node")
            )
            assert variable_values(prom, "loom-cluster", "node") == ["b"]
            roles = prom.query(runnable(panel("loom-cluster", "Role by instance")["targets"][0]["expr"]))
            assert sorted(ROLES[int(float(r["value"][1]))] for r in roles) == ["leader", "standby"]
    finally:
        for node in nodes:
            node.stop()


def test_generated_dir_is_inside_the_repo():
    assert GENERATED.parent == REPO / "dashboards"


# -- (d) thresholds, value mappings and units from the SLO config ------------------------------

# Where each of CONFIG.thresholds() is drawn: (board uid, panel title). A new key in the
# config fails test_every_config_threshold_is_on_a_panel until a board shows it.
SLO_MS = f"{CONFIG.latency_threshold_s * 1000:g} ms"
THRESHOLD_PANELS = {
    "order_to_ack_s": [
        ("loom-overview", "Order to ack (p50 / p99 / p99.9) by protocol"),
        ("loom-gateways", "Order to ack by protocol (p50 / p99 / p99.9)"),
        ("loom-order-lookup", "Order to ack p99 by protocol (exemplars link to traces)"),
    ],
    "latency_target_ratio": [("loom-overview", f"Orders acked within {SLO_MS} ({CONFIG.slo_period})")],
    "availability_target_ratio": [("loom-overview", f"Commands served ({CONFIG.slo_period})")],
    "fast_burn_factor": [("loom-overview", "Error budget burn rate (1 = spent exactly in the SLO period)")],
    "slow_burn_factor": [("loom-overview", "Error budget burn rate (1 = spent exactly in the SLO period)")],
    "journal_fsync_p99_s": [
        ("loom-persistence", "Durability latency: fdatasync or replicated PubAck (p50 / p99 / p99.9)")
    ],
    "disk_free_ratio_warning": [("loom-persistence", "Data disk free ratio")],
    "disk_free_ratio_critical": [("loom-persistence", "Data disk free ratio")],
    "snapshot_age_s": [("loom-persistence", "Snapshot age")],  # the stat and the series
    "recovery_s": [("loom-persistence", "Recovery duration")],
    "reject_ratio": [("loom-overview", "Rejected share of orders")],
    "replication_lag_commands": [("loom-cluster", "Replication lag (commands) by node")],
    "standby_report_age_s": [("loom-cluster", "Standby report age")],
    "decode_errors_per_s": [("loom-gateways", "Unreadable messages refused/s by protocol and code")],
    "anomaly_score": [("loom-risk", "Anomaly score by kind (highest account)")],
    "flow_zscore": [("loom-risk", "Order-flow z-score by feature (highest account)")],
    "insufficient_balance_per_s": [("loom-risk", "Insufficient-balance rejects/s by symbol")],
}


def threshold_values(p: dict) -> list[float]:
    return [s["value"] for s in p["fieldConfig"]["defaults"]["thresholds"]["steps"] if s["value"] is not None]


def panels_titled(uid: str, title: str) -> list[dict]:
    found = [p for p in boards()[uid]["panels"] if p.get("title") == title]
    assert found, (uid, title)
    return found


def test_every_config_threshold_is_on_a_panel():
    assert set(THRESHOLD_PANELS) == set(CONFIG.thresholds()), "map every SLO config threshold to its panels"
    for key, value in CONFIG.thresholds().items():
        for uid, title in THRESHOLD_PANELS[key]:
            for p in panels_titled(uid, title):
                assert value in threshold_values(p), (key, value, uid, title, threshold_values(p))
                if p["type"] == "timeseries":  # drawn, not only used for colour
                    assert p["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off"


def test_the_threshold_check_fails_on_a_panel_without_them():
    broken = copy.deepcopy(panel("loom-persistence", "Data disk free ratio"))
    broken["fieldConfig"]["defaults"]["thresholds"]["steps"] = [{"color": "green", "value": None}]
    assert CONFIG.thresholds()["disk_free_ratio_warning"] not in threshold_values(broken)


def mapped_texts(p: dict) -> dict[str, str]:
    texts = {}
    for mapping in p["fieldConfig"]["defaults"]["mappings"]:
        if mapping["type"] == "value":
            texts |= {v: r["text"] for v, r in mapping["options"].items()}
        elif mapping["type"] == "range":
            texts[f"{mapping['options']['from']:g}.."] = mapping["options"]["result"]["text"]
    return texts


def test_ready_role_and_kill_switch_show_words_not_numbers():
    ready = panel("loom-overview", "Ready")
    assert mapped_texts(ready) == {"1": "ready", "0": "NOT READY"}
    assert {s["color"] for s in ready["fieldConfig"]["defaults"]["mappings"][0]["options"].values()} == {
        "green",
        "red",
    }
    for uid, title in (("loom-overview", "Role"), ("loom-cluster", "Role by instance")):
        assert mapped_texts(panel(uid, title)) == {str(i): r for i, r in enumerate(ROLES)}
    for uid, title in (("loom-overview", "Venue kill switch"), ("loom-risk", "Account kill switches")):
        assert mapped_texts(panel(uid, title)) == {"0": "off", "1..": "ENGAGED"}


def test_every_panel_has_a_unit_and_seconds_and_bytes_are_labelled():
    for uid, board in boards().items():
        for p in board["panels"]:
            if p["type"] not in ("timeseries", "stat"):
                continue
            unit = p["fieldConfig"]["defaults"].get("unit")
            assert unit, (uid, p["title"])
            exprs = [t["expr"] for t in p["targets"]]
            names = set().union(*(referenced_metrics(e) for e in exprs))
            if all(e.startswith("histogram_quantile(") for e in exprs) and all(
                "_seconds_" in n for n in names
            ):
                assert unit == "s", (uid, p["title"], unit)
            if names and all(n.endswith("_bytes") for n in names) and not any("/" in e for e in exprs):
                assert unit == "bytes", (uid, p["title"], unit)
    spread = panel("loom-matching", "Spread by symbol")["fieldConfig"]["defaults"]
    assert spread["unit"] == "suffix: price units" and spread["decimals"] == 0


def test_annotations_mark_restarts_failovers_snapshots_and_automation():
    wanted = {
        "Restarts": "process_start_time_seconds",
        "Failovers": "loom_failovers_total",
        "Leader changes": "loom_leader_changes_total",
        "Snapshots": "loom_snapshot_duration_seconds_count",
        "Snapshot failures": "loom_snapshot_failures_total",
        "Replicated snapshots": "loom_replicated_snapshot_uploads_total",
        "Automation": "loom_automation_actions_total",
    }
    for uid, board in boards().items():
        found = {a["name"]: a for a in board["annotations"]["list"]}
        assert set(wanted) <= set(found), uid
        for name, series in wanted.items():
            a = found[name]
            assert a["datasource"] == PROMETHEUS_DS and a["enable"] and a["expr"].endswith("> 0")
            assert referenced_metrics(a["expr"]) == {series}, (uid, name, a["expr"])


# -- (e) Grafana's published dashboard schema ---------------------------------------------------

SCHEMA_DIR = REPO / ".tools" / "grafana-schema"


@pytest.fixture(scope="module")
def dashboard_schema() -> jsonschema.protocols.Validator:
    """Grafana's dashboard schema (the `Dashboard` type of the npm package @grafana/schema,
    as JSON Schema: scripts/install-tools.sh makes it). One deliberate change: Grafana's CUE
    kind leaves AnnotationQuery open (`...`: "datasources ... spread their query into the
    base object", which is how a Prometheus annotation carries its `expr`); the TypeScript
    types the JSON Schema comes from lost that openness."""
    path = SCHEMA_DIR / "dashboard.schema.json"
    if not path.is_file():
        pytest.fail(f"{path} missing: scripts/install-tools.sh installs it (`make test` runs it)")
    schema = json.loads(path.read_text())
    assert schema["$ref"] == "#/definitions/Dashboard"
    assert schema["definitions"]["Panel"]["additionalProperties"] is False  # a strict schema
    schema["definitions"]["AnnotationQuery"]["additionalProperties"] = True
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_errors(validator, board: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(board)]


def test_every_board_is_valid_under_grafanas_dashboard_schema(dashboard_schema):
    version = (SCHEMA_DIR / "VERSION").read_text().strip()
    assert boards()
    for uid, board in boards().items():
        assert schema_errors(dashboard_schema, board) == [], f"{uid} against @grafana/schema {version}"


def test_the_schema_rejects_what_grafana_would_not_read(dashboard_schema):
    """The defects of the old boards: empty thresholds, a string data source, unknown fields."""
    good = boards()["loom-overview"]
    for breaks in (
        lambda b: b["panels"][1]["fieldConfig"]["defaults"]["thresholds"].update(steps=""),
        lambda b: b["panels"][1].update(datasource="${datasource}"),
        lambda b: b.update(rows=[], sharedCrosshair=True),
        lambda b: b["panels"][1]["fieldConfig"]["defaults"].update(mappings=[{"type": "value"}]),
        lambda b: b["templating"]["list"][1].update(type="dropdown"),
    ):
        board = copy.deepcopy(good)
        breaks(board)
        assert schema_errors(dashboard_schema, board), breaks
