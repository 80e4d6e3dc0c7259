"""Start the real Prometheus server as a subprocess for a test and stop it afterwards."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

PROMETHEUS = "/usr/bin/prometheus"


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (bound to port 0, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prometheus_binary() -> str:
    found = PROMETHEUS if Path(PROMETHEUS).is_file() else shutil.which("prometheus")
    assert found, "prometheus missing: `make test` installs it (scripts/install-tools.sh)"
    return found


class Prometheus:
    """A running Prometheus: `base` is its HTTP URL; `get`/`query` call its HTTP API."""

    def __init__(self, base: str, proc: subprocess.Popen, log: Path):
        self.base = base
        self.proc = proc
        self.log = log

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

    def wait_for(self, what: str, probe, timeout: float = 60.0, interval: float = 0.25):
        """Polls `probe()` until it returns something truthy (returned) or the deadline
        passes (AssertionError naming `what`, the last value and the log's tail)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                last = probe()
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                last = exc
            else:
                if last:
                    return last
            time.sleep(interval)
        raise AssertionError(f"timed out waiting for {what}; last: {last!r}\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextmanager
def prometheus_run(workdir: Path, scrape_configs: list[dict], timeout: float = 60.0):
    """Writes prometheus.yml (1 s scrape and evaluation intervals) under `workdir`, starts
    Prometheus with exemplar storage on a free 127.0.0.1 port, yields a `Prometheus` once
    /-/ready answers; SIGTERM on exit, SIGKILL if it does not stop."""
    binary = prometheus_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": scrape_configs,
    }
    # JSON is YAML: no yaml dependency needed to write the config.
    (workdir / "prometheus.yml").write_text(json.dumps(config, indent=2))
    port = free_port()
    log = workdir / "prometheus.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--config.file={workdir / 'prometheus.yml'}",
                "--enable-feature=exemplar-storage",
            ],
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    try:

        def ready():
            with urllib.request.urlopen(prom.base + "/-/ready", timeout=5) as resp:
                return resp.status == 200

        prom.wait_for("prometheus /-/ready", ready, timeout=timeout)
        yield prom
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
