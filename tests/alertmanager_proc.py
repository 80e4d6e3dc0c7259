"""Start the real Alertmanager as a subprocess for a test and stop it afterwards."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from prometheus_proc import free_port

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


def alertmanager_binary() -> str:
    found = ALERTMANAGER if Path(ALERTMANAGER).is_file() else shutil.which("alertmanager")
    assert found, "prometheus-alertmanager missing (apt-get install prometheus-alertmanager)"
    return found


class Alertmanager:
    """A running Alertmanager: `base` is its HTTP URL, `address` its host:port."""

    def __init__(self, base: str, proc: subprocess.Popen, log: Path):
        self.base = base
        self.address = base.removeprefix("http://")
        self.proc = proc
        self.log = log

    def alerts(self) -> list[dict]:
        with urllib.request.urlopen(self.base + "/api/v2/alerts", timeout=10) as resp:
            return json.loads(resp.read())

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


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
    token), starts Alertmanager on a free 127.0.0.1 port without clustering, yields an
    `Alertmanager` once /-/ready answers; SIGTERM on exit, SIGKILL if it does not stop."""
    binary = alertmanager_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "alertmanager.yml"
    config.write_text(json.dumps(webhook_config(webhook_url, bearer_token), indent=2))  # JSON is YAML
    port = free_port()
    log = workdir / "alertmanager.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
                f"--storage.path={workdir / 'data'}",
            ],
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    am = Alertmanager(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"alertmanager exited with {proc.returncode}:\n{am.tail()}")
            try:
                with urllib.request.urlopen(am.base + "/-/ready", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                last = exc
            if time.monotonic() > deadline:
                raise AssertionError(f"alertmanager not ready in {timeout} s; last: {last!r}\n{am.tail()}")
            time.sleep(0.1)
        yield am
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
