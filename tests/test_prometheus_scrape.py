"""The real Prometheus scrapes a real `loom run --demo`: the target is up, the order-to-ack
histogram answers a p99 query, the journal gauge is there, and the exemplars Prometheus
stores (it negotiates OpenMetrics itself) carry the trace ids a REST order returns."""

from __future__ import annotations

import json
import math
import os
import re
import time
import urllib.parse
import urllib.request

from loomproc import loom_run
from prometheus_proc import prometheus_run

JOB = "loom"
KEY = "demo-alice-key-000000"
TRACE_ID = re.compile(r"[0-9a-f]{32}")


def submit_order(base: str, clid: str) -> str:
    """POST one REST order; returns the X-Trace-Id the exchange answers with."""
    body = {"symbol": "BTC-USD", "side": "buy", "qty": 1, "price": 6_000_000, "client_order_id": clid}
    req = urllib.request.Request(
        base + "/v1/orders",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"X-API-Key": KEY, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 201, resp.status
        trace_id = resp.headers["X-Trace-Id"]
    assert trace_id and TRACE_ID.fullmatch(trace_id), trace_id
    return trace_id


def scalar(result: list[dict]) -> float | None:
    """The value of a one-element instant vector, or None when there is no sample."""
    return float(result[0]["value"][1]) if len(result) == 1 else None


def test_prometheus_scrapes_the_exchange(tmp_path):
    started = time.time()
    args = [
        "--demo",
        "--rate",
        "500",
        "--data-dir",
        str(tmp_path / "data"),
        "--http-port",
        "0",
        "--fix-port",
        "-1",
        "--binary-port",
        "-1",
    ]
    with loom_run(args, dict(os.environ)) as base:
        target = urllib.parse.urlsplit(base).netloc
        scrape = [{"job_name": JOB, "metrics_path": "/metrics", "static_configs": [{"targets": [target]}]}]
        with prometheus_run(tmp_path / "prometheus", scrape) as prom:
            # Some REST orders, so the protocol="rest" series exist by the first scrape.
            rest_ids = {submit_order(base, f"prom-{i}") for i in range(5)}

            def target_up():
                active = prom.get("/api/v1/targets", state="active")["activeTargets"]
                mine = [t for t in active if t["labels"].get("job") == JOB]
                assert len(mine) <= 1, mine
                return mine and mine[0]["health"] == "up" and mine[0]

            up_target = prom.wait_for("the loom target to be up", target_up)
            assert up_target["scrapeUrl"] == f"{base}/metrics", up_target
            assert up_target["lastError"] == "", up_target

            assert scalar(prom.query(f'up{{job="{JOB}"}}')) == 1.0

            # rate() needs two samples in its window: poll until p99 is a finite number.
            p99_query = "histogram_quantile(0.99, sum by (le) (rate(loom_order_to_ack_seconds_bucket[1m])))"

            def p99():
                value = scalar(prom.query(p99_query))
                return value is not None and math.isfinite(value) and value > 0 and value

            p99_value = prom.wait_for("a finite p99 of loom_order_to_ack_seconds", p99)
            assert 0 < p99_value < 60, p99_value

            rest = prom.wait_for(
                "the rest order-to-ack series",
                lambda: prom.query('loom_order_to_ack_seconds_count{protocol="rest"}'),
            )
            assert scalar(rest) >= len(rest_ids), rest

            # Filtered in PromQL: an empty result until a scrape has seen a durable command.
            last_seq = prom.wait_for(
                "loom_journal_last_seq > 0", lambda: prom.query(f'loom_journal_last_seq{{job="{JOB}"}} > 0')
            )
            assert scalar(last_seq) > 0, last_seq

            def exemplars(protocol: str | None = None) -> list[dict]:
                selector = f'{{protocol="{protocol}"}}' if protocol else ""
                query = "loom_order_to_ack_seconds_bucket" + selector
                data = prom.get(
                    "/api/v1/query_exemplars",
                    query=query,
                    start=f"{started - 60:.3f}",
                    end=f"{time.time() + 60:.3f}",
                )
                return [ex for series in data for ex in series["exemplars"]]

            stored = prom.wait_for("any stored exemplar", exemplars)
            assert any(TRACE_ID.fullmatch(ex["labels"].get("trace_id", "")) for ex in stored), stored[:5]

            # A REST exemplar is per submission: the last order observed in a bucket is that
            # bucket's exemplar, so after the scrape that follows an order its trace id is
            # stored. Submit, wait a few scrapes for it, submit again if a later order won.
            def rest_trace_stored():
                ids = {ex["labels"].get("trace_id") for ex in exemplars("rest")}
                return ids & rest_ids

            deadline = time.monotonic() + 60
            matched: set[str] = set()
            while not matched and time.monotonic() < deadline:
                rest_ids.add(submit_order(base, f"prom-x-{len(rest_ids)}"))
                try:
                    matched = prom.wait_for("a REST trace id among the exemplars", rest_trace_stored, 5)
                except AssertionError:
                    continue
            assert matched, (
                f"no exemplar carries an X-Trace-Id of the {len(rest_ids)} REST orders "
                f"(prometheus exit code {prom.proc.poll()}):\n{prom.tail()}"
            )
