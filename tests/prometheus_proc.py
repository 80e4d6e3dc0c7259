"""Start the real Prometheus server as a subprocess for a test and stop it afterwards."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from serverproc import Server, free_port, run_server

from engine.stack import binaries
from engine.stack.configs import prometheus_argv, prometheus_config

__all__ = ["Prometheus", "free_port", "prometheus_run"]


class Prometheus(Server):
    """A running Prometheus: `base` is its HTTP URL; `get`/`query` call its HTTP API."""

    name = "prometheus"

    def get(self, path: str, **params: str) -> dict:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        assert body.get("status") == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict]:
        """An instant query's vector result (a list of {"metric": ..., "value": [ts, "v"]})."""
        data = self.get("/api/v1/query", query=promql)
        assert data["resultType"] == "vector", data
        return data["result"]


@contextmanager
def prometheus_run(workdir: Path, scrape_configs: list[dict], timeout: float = 60.0):
    """Writes prometheus.yml (1 s scrape and evaluation intervals) under `workdir`, starts
    Prometheus with exemplar storage on a free 127.0.0.1 port, yields a `Prometheus` once
    /-/ready answers; SIGTERM on exit, SIGKILL if it does not stop."""
    binary = binaries.prometheus()  # the one `loom stack` runs, with the same flags
    workdir.mkdir(parents=True, exist_ok=True)
    # JSON is YAML: no yaml dependency needed to write the config.
    (workdir / "prometheus.yml").write_text(json.dumps(prometheus_config(scrape_configs, "1s"), indent=2))

    def argv(port: int) -> list[str]:
        return prometheus_argv(binary, port, workdir)

    with run_server(Prometheus, argv, workdir, timeout) as prom:
        yield prom
