"""Start the real Alertmanager as a subprocess for a test and stop it afterwards."""

from __future__ import annotations

import json
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from serverproc import Server, run_server

from engine.stack import binaries
from engine.stack.configs import alertmanager_argv


class Alertmanager(Server):
    """A running Alertmanager: `base` is its HTTP URL, `address` its host:port."""

    name = "alertmanager"

    @property
    def address(self) -> str:
        return self.base.removeprefix("http://")

    def alerts(self) -> list[dict]:
        with urllib.request.urlopen(self.base + "/api/v2/alerts", timeout=10) as resp:
            return json.loads(resp.read())

    def post_alerts(self, alerts: list[dict]) -> None:
        """POST /api/v2/alerts, as Prometheus does (each: labels, annotations, startsAt...)."""
        req = urllib.request.Request(
            self.base + "/api/v2/alerts",
            json.dumps(alerts).encode(),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200, resp.status


def webhook_config(url: str, bearer_token: str) -> dict:
    """Routes every alert straight to one webhook (no waiting: group_wait 0s)."""
    return {
        "route": {
            "receiver": "automation",
            "group_by": ["alertname", "automation", "job", "instance"],
            "group_wait": "0s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {
                "name": "automation",
                "webhook_configs": [
                    {
                        "url": url,
                        "send_resolved": True,
                        "http_config": {"authorization": {"type": "Bearer", "credentials": bearer_token}},
                    }
                ],
            }
        ],
    }


@contextmanager
def alertmanager_run(workdir: Path, webhook_url: str, bearer_token: str, timeout: float = 30.0):
    """Writes alertmanager.yml under `workdir` (everything to `webhook_url` with the bearer
    token) and runs Alertmanager with it (`alertmanager_serve`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "alertmanager.yml"
    config.write_text(json.dumps(webhook_config(webhook_url, bearer_token), indent=2))  # JSON is YAML
    with alertmanager_serve(workdir, config, timeout) as am:
        yield am


@contextmanager
def alertmanager_serve(workdir: Path, config: Path, timeout: float = 30.0):
    """Starts Alertmanager with `config` on a free 127.0.0.1 port without clustering, yields
    an `Alertmanager` once /-/ready answers; SIGTERM on exit, SIGKILL if it does not stop."""
    binary = binaries.alertmanager()  # the one `loom stack` runs, with the same flags
    workdir.mkdir(parents=True, exist_ok=True)

    def argv(port: int) -> list[str]:
        return alertmanager_argv(binary, port, workdir, config)

    with run_server(Alertmanager, argv, workdir, timeout) as am:
        yield am
