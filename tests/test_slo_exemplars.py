"""Honest SLIs through a fault drill, against the real `loom run`: while the journal refuses
every write (POST /v1/admin/faults), refused orders are neither order-to-ack samples nor
exemplars, so every exemplar on /metrics (OpenMetrics) names the trace of an order the
exchange accepted. Before the fix a refused batch was observed with the trace id derived
from a sequence number it gave back, which a later order then reused (issue 12)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

from loomproc import loom_run

KEY = "demo-alice-key-000000"
ADMIN = "demo-admin-key-000000"
EXEMPLAR = re.compile(
    r'^loom_order_to_ack_seconds_bucket\{[^}]*protocol="rest"[^}]*\} \S+ # \{trace_id="([0-9a-f]{32})"\}',
    re.M,
)
COUNT = re.compile(r'^loom_order_to_ack_seconds_count\{[^}]*protocol="rest"[^}]*\} (\S+)', re.M)


def _post(url: str, body: dict, key: str = KEY) -> tuple[int, dict, dict]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"X-API-Key": key, "Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def _order(base: str, clid: str) -> tuple[int, dict, dict]:
    body = {"symbol": "BTC-USD", "side": "buy", "qty": 1, "price": 6_000_000, "client_order_id": clid}
    return _post(base + "/v1/orders", body)


def _metrics(base: str) -> str:
    req = urllib.request.Request(base + "/metrics", headers={"Accept": "application/openmetrics-text"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        return resp.read().decode()


def _rest_samples(text: str) -> float:
    return float(COUNT.search(text).group(1))


def _accept(base: str, clids: list[str], accepted: dict[str, str]) -> None:
    for clid in clids:
        status, headers, body = _order(base, clid)
        assert status == 201, body
        accepted[headers["X-Trace-Id"]] = clid


def test_a_journal_fault_drill_leaves_no_exemplar_on_a_refused_order(tmp_path):
    args = ["--demo", "--rate", "1", "--data-dir", str(tmp_path / "data"), "--http-port", "0"]
    args += ["--fix-port", "-1", "--binary-port", "-1"]
    with loom_run(args, {}) as base:
        accepted: dict[str, str] = {}  # trace id -> client order id, of every accepted REST order
        _accept(base, [f"before-{i}" for i in range(20)], accepted)
        before = _rest_samples(_metrics(base))

        status, _h, _b = _post(base + "/v1/admin/faults", {"journal_write_errors": True}, ADMIN)
        assert status == 200
        for i in range(40):
            status, _h, body = _order(base, f"refused-{i}")
            assert status == 503 and body["error"]["code"] == "JOURNAL_WRITE_FAILED", body
        during = _metrics(base)
        # refusals are no order-to-ack samples; the demo trader's orders are not REST ones
        assert _rest_samples(during) == before
        assert 'reason="journal_write_failed"' in during  # they are counted as refusals instead
        # every exemplar still names an order accepted before the fault (not a refused one,
        # whose given-back seq no order owns yet)
        exemplars = EXEMPLAR.findall(during)
        assert exemplars, "no exemplar on the REST order-to-ack histogram"
        assert set(exemplars) <= set(accepted), set(exemplars) - set(accepted)

        status, _h, _b = _post(base + "/v1/admin/faults", {"journal_write_errors": False}, ADMIN)
        assert status == 200
        _accept(base, [f"after-{i}" for i in range(20)], accepted)
        after = _metrics(base)
        assert _rest_samples(after) == before + 20
        exemplars = EXEMPLAR.findall(after)
        assert set(exemplars) <= set(accepted), set(exemplars) - set(accepted)
