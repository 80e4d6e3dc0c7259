"""OpenTelemetry semantic conventions on the exported spans (issue 12): the receive span of a
REST order has http.request.method, url.path, http.response.status_code,
network.protocol.name, server.address and server.port; the resource has service.name,
service.version, service.instance.id and deployment.environment (--environment). A real
`loom run` exports to a receiver that decodes the real OTLP/HTTP protobuf."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from loomproc import loom_run
from otlp_receiver import OtlpReceiver

from engine import __version__

KEY = "alice-key-0123456789abcdef"
CONFIG = f"""
[[instruments]]
symbol = "BTC-USD"
tick_size = 5
[[accounts]]
name = "alice"
api_key = "{KEY}"
"""


def post(base: str, price: int) -> tuple[int, str]:
    body = json.dumps({"symbol": "BTC-USD", "side": "buy", "qty": 1, "price": price}).encode()
    req = urllib.request.Request(
        base + "/v1/orders",
        data=body,
        method="POST",
        headers={"X-API-Key": KEY, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers["X-Trace-Id"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["X-Trace-Id"]


def test_receive_spans_and_resource_carry_the_semantic_conventions(tmp_path):
    (tmp_path / "loom.toml").write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    with OtlpReceiver() as rx:
        env.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_BSP_SCHEDULE_DELAY="50",
            LOOM_TRACE_SAMPLING="all",
        )
        args = [
            "--config",
            str(tmp_path / "loom.toml"),
            "--data-dir",
            str(tmp_path / "data"),
            "--http-port",
            "0",
        ]
        with loom_run(
            [*args, "--fix-port", "-1", "--binary-port", "-1", "--environment", "staging"], env
        ) as base:
            port = int(base.rsplit(":", 1)[1])
            accepted = post(base, 100)
            rejected = post(base, 101)  # off the tick: 422
            assert accepted[0] == 201 and rejected[0] == 422
            wanted = {accepted[1], rejected[1]}

            def roots(spans):
                return {s.trace_id: s for s in spans if s.name == "order" and s.trace_id in wanted}

            def receives(spans):
                return {s.trace_id: s for s in spans if s.name == "receive/decode" and s.trace_id in wanted}

            spans = rx.wait_for(lambda spans: len(roots(spans)) == 2 and len(receives(spans)) == 2)
    for trace_id, status in ((accepted[1], 201), (rejected[1], 422)):
        for span in (roots(spans)[trace_id], receives(spans)[trace_id]):
            attrs = span.attributes
            assert attrs["network.protocol.name"] == "http", (span.name, attrs)
            assert attrs["http.request.method"] == "POST" and attrs["url.path"] == "/v1/orders"
            assert attrs["http.response.status_code"] == status
            assert attrs["server.address"] == "127.0.0.1" and attrs["server.port"] == port
            resource = span.resource
            assert resource["service.name"] == "loom-exchange", resource
            assert resource["service.version"] == __version__
            assert resource["service.instance.id"] == f"127.0.0.1:{port}"
            assert resource["deployment.environment"] == "staging"
