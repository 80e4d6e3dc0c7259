"""A trace for every order, end to end: the real `loom run` exporting OTLP/HTTP to a
receiver that decodes the real protobuf; the trace id the order's lookup returns is the
one on the spans; an incoming traceparent is continued; exemplars carry trace ids."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from loomproc import loom_run
from otlp_receiver import OtlpReceiver

REPO = Path(__file__).resolve().parent.parent
KEY = "demo-alice-key-000000"


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    data = tmp_path_factory.mktemp("traced") / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    with OtlpReceiver() as rx:
        env.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_BSP_SCHEDULE_DELAY="50",
            LOOM_TRACE_SAMPLING="all",  # export every order: the test follows single orders
        )
        args = [
            "--demo",
            "--rate",
            "20",
            "--data-dir",
            str(data),
            "--http-port",
            "0",
            "--fix-port",
            "-1",
            "--binary-port",
            "-1",
        ]
        with loom_run(args, env) as base:
            yield base, rx


def call(method: str, url: str, body: dict | None = None, headers: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"X-API-Key": KEY, **(headers or {})})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, dict(resp.headers), resp.read()


def order_body(clid: str) -> dict:
    return {"symbol": "BTC-USD", "side": "buy", "qty": 1, "price": 6_000_000, "client_order_id": clid}


def test_an_incoming_traceparent_is_continued_and_the_lookup_names_the_same_trace(traced):
    base, rx = traced
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    status, headers, body = call(
        "POST", base + "/v1/orders", order_body("t-1"), {"traceparent": f"00-{trace_id}-{parent}-01"}
    )
    assert status == 201 and headers["X-Trace-Id"] == trace_id
    order_id = json.loads(body)["order"]["order_id"]
    _s, _h, looked = call("GET", f"{base}/v1/orders/{order_id}/trace")
    found = json.loads(looked)
    assert found["trace_id"] == trace_id and str(trace_id) in found["trace_url"]
    spans = rx.wait_for(lambda spans: {s.name for s in spans if s.trace_id == trace_id} >= {"order", "ack"})
    mine = {s.name: s for s in spans if s.trace_id == trace_id}
    root = mine["order"]
    assert root.parent_span_id == parent  # continued from the caller's span
    assert root.attributes["exchange.order.id"] == order_id
    assert root.attributes["exchange.client_order.id"] == "t-1"
    assert root.attributes["exchange.account"] == "alice"
    assert root.attributes["exchange.protocol"] == "rest"
    for stage in ("receive/decode", "journal", "match", "ack"):
        assert mine[stage].parent_span_id == root.span_id, stage
        assert root.start_ns <= mine[stage].start_ns <= mine[stage].end_ns <= root.end_ns, stage
    assert mine["journal"].end_ns <= mine["match"].start_ns + 1


def test_an_order_without_traceparent_starts_a_trace(traced):
    base, rx = traced
    status, headers, body = call("POST", base + "/v1/orders", order_body("t-2"))
    trace_id = headers["X-Trace-Id"]
    assert status == 201 and re.fullmatch(r"[0-9a-f]{32}", trace_id) and int(trace_id, 16)
    spans = rx.wait_for(lambda spans: any(s.trace_id == trace_id and s.name == "order" for s in spans))
    root = next(s for s in spans if s.trace_id == trace_id and s.name == "order")
    assert root.parent_span_id == ""
    # The journal holds the trace id too: the lookup from the journal (not the store) agrees.
    order_id = json.loads(body)["order"]["order_id"]
    assert journal_lookup(base, order_id)["trace_id"] == trace_id


def journal_lookup(base: str, order_id: int) -> dict:
    """`loom trace ID --json` on the running node's data directory: the journal alone."""
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "trace", str(order_id), "--json", "--data-dir", _data_dir(base)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _data_dir(base: str) -> str:
    _s, _h, body = call("GET", base + "/v1/admin/stats", headers={"X-API-Key": "demo-admin-key-000000"})
    return json.loads(body)["data_dir"]


def test_exemplars_carry_trace_ids_in_openmetrics(traced):
    base, _rx = traced
    _status, headers, _body = call("POST", base + "/v1/orders", order_body("t-3"))
    assert headers["X-Trace-Id"]
    req = urllib.request.Request(base + "/metrics", headers={"Accept": "application/openmetrics-text"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read().decode()
    exemplars = re.findall(
        r'^loom_order_to_ack_seconds_bucket\{[^}]*protocol="rest"[^}]*\} \S+ # \{trace_id="([0-9a-f]{32})"\}',
        text,
        re.M,
    )
    assert exemplars, "no exemplar on the REST order-to-ack histogram"


def test_a_foreign_order_has_no_trace_for_this_account(traced):
    base, _rx = traced
    _s, _h, body = call("POST", base + "/v1/orders", order_body("t-4"))
    order_id = json.loads(body)["order"]["order_id"]
    with pytest.raises(urllib.error.HTTPError) as err:
        call("GET", f"{base}/v1/orders/{order_id}/trace", headers={"X-API-Key": "demo-bob-key-000000"})
    assert err.value.code == 404


def test_the_lookup_gives_stage_timings_from_the_store_and_the_same_from_the_journal(traced):
    base, _rx = traced
    _s, _h, body = call("POST", base + "/v1/orders", order_body("t-5"))
    order_id = json.loads(body)["order"]["order_id"]
    call("POST", base + "/v1/orders", order_body("t-6"))  # a later batch: it journals t-5's durations
    _s, _h, looked = call("GET", f"{base}/v1/orders/{order_id}/trace")
    found = json.loads(looked)
    assert found["source"] == "order-store"
    stages = found["stages"]
    for key in ("receive_to_sequenced_us", "journal_us", "match_us", "ack_us"):
        assert stages[key] is not None and stages[key] >= 0, key
    assert stages["received_ns"] <= stages["sequenced_ns"]
    assert journal_lookup(base, order_id)["stages"] == stages


def test_risk_checks_appear_as_spans_inside_match_on_a_sample_of_batches(traced):
    """The demo sets risk limits; one batch in 8 has its orders' pre-trade checks timed,
    and a traced order of such a batch gets a "risk" span within its "match" span."""
    base, rx = traced
    for i in range(24):  # one REST order per batch at this rate: at least 3 timed batches
        status, _h, _b = call("POST", base + "/v1/orders", order_body(f"risk-{i}"))
        assert status == 201
    spans = rx.wait_for(lambda spans: any(s.name == "risk" for s in spans), timeout=30)
    risk = next(s for s in spans if s.name == "risk")
    family = {s.name: s for s in spans if s.trace_id == risk.trace_id}
    assert risk.parent_span_id == family["order"].span_id
    match = family["match"]
    # A real duration inside match's: a unit slip (ms counted as µs) would overrun the match span.
    assert match.start_ns <= risk.start_ns < risk.end_ns <= match.end_ns


def test_after_a_restart_an_amended_resting_order_keeps_its_own_trace(tmp_path):
    """A resting order that lost its time priority to an amend (so the book's seq is the
    amend's) and then outlived a restart: the lookup still names the trace the order was
    sent with, read from the journal, not one derived from the amend's seq."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LOOM_"))}
    args = ["--demo", "--rate", "5", "--data-dir", str(tmp_path / "data")]
    args += ["--http-port", "0", "--fix-port", "-1", "--binary-port", "-1"]
    trace_id, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    with loom_run(args, env) as base:
        body = {"symbol": "BTC-USD", "side": "buy", "qty": 1, "price": 10_000, "client_order_id": "amended-1"}
        status, _h, raw = call(
            "POST", base + "/v1/orders", body, {"traceparent": f"00-{trace_id}-{parent}-01"}
        )
        assert status == 201
        order_id = json.loads(raw)["order"]["order_id"]
        status, _h, _raw = call("PATCH", f"{base}/v1/orders/{order_id}", {"price": 10_100})
        assert status == 200
    with loom_run(args, env) as base:
        status, _h, raw = call("GET", f"{base}/v1/orders/{order_id}")
        assert status == 200 and json.loads(raw)["status"] == "open"  # it survived, in the store
        status, _h, raw = call("GET", f"{base}/v1/orders/{order_id}/trace")
        found = json.loads(raw)
        assert status == 200 and found["trace_id"] == trace_id, found
        assert found["source"] != "order-store"
