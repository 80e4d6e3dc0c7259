"""Metrics exposure (issue 13): /metrics on its own listener when `metrics_port` is set (the
trading port then answers 404), on the HTTP port by default; and no account names in any
metric label (surveillance scores carry no identities unless the operator opts in to ids)."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from engine.config import ConfigError, load_config
from engine.fuzz.node import FuzzNode


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_move_to_their_own_listener_when_metrics_port_is_set():
    with FuzzNode.start({"metrics_port": 0}) as node:
        assert "metrics" in node.ports and node.ports["metrics"] != node.ports["http"]
        status, body = fetch(f"http://127.0.0.1:{node.ports['http']}/metrics")
        assert status == 404 and '"code":"NOT_FOUND"' in body
        status, body = fetch(f"http://127.0.0.1:{node.ports['metrics']}/metrics")
        assert status == 200 and "loom_build_info" in body
        assert fetch(f"http://127.0.0.1:{node.ports['metrics']}/v1/instruments")[0] == 404  # metrics only
        assert node.order_works()


def test_metrics_stay_on_the_http_port_by_default():
    with FuzzNode.start() as node:
        assert "metrics" not in node.ports
        status, body = fetch(node.base + "/metrics")
        assert status == 200 and "loom_build_info" in body


def test_metrics_host_is_checked_like_host(tmp_path):
    conf = tmp_path / "loom.toml"
    conf.write_text('metrics_host = "0.0.0.0"\nmetrics_port = 9100\n')
    with pytest.raises(ConfigError, match=r"metrics_host '0\.0\.0\.0' is not a loopback address"):
        load_config(str(conf), env={})
    assert load_config(str(conf), env={"LOOM_ALLOW_PUBLIC_BIND": "1"}).metrics_port == 9100
    conf.write_text('metrics_host = "127.0.0.1"\n')
    with pytest.raises(ConfigError, match="metrics_host needs metrics_port"):
        load_config(str(conf), env={})
