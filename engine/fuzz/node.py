"""A throwaway `loom run` for a fuzz campaign: its own data directory and config (every
listener on a free loopback port), its log in a file to read afterwards, and a stop."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ALICE_KEY = "fuzz-alice-key-0123456789"
BOB_KEY = "fuzz-bob-key-01234567890"
ADMIN_KEY = "fuzz-admin-key-012345678"
SYMBOL = "BTC-USD"
_RUN = (sys.executable, "-m", "engine.cli", "run")
_READY = re.compile(r"loom: ready on \S+ \(([^)]*)\)")
_PORT = re.compile(r"(\w+) (\d+)")
# Limits off: a campaign sends as fast as it can from one address (FuzzNode.start overrides).
SETTINGS: dict[str, object] = {
    "host": "127.0.0.1",
    "http_port": 0,
    "fix_port": 0,
    "binary_port": 0,
    "admin_key": ADMIN_KEY,
    "fsync": False,
    "rate_limit": 0,
    "preauth_rate_limit": 0,
    "binary_rate_limit": 0,
}
TABLES = f"""
[[instruments]]
symbol = "{SYMBOL}"
tick_size = 5
[[accounts]]
name = "alice"
api_key = "{ALICE_KEY}"
[[accounts]]
name = "bob"
api_key = "{BOB_KEY}"
"""


def _toml(settings: dict[str, object]) -> str:
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())


@dataclass
class FuzzNode:
    """A running node: its ports by protocol, its process and its log file."""

    proc: subprocess.Popen
    log: Path
    ports: dict[str, int] = field(default_factory=dict)
    workdir: tempfile.TemporaryDirectory | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    @classmethod
    def start(
        cls, settings: dict[str, object] | None = None, tables: str = "", timeout: float = 60.0
    ) -> FuzzNode:
        """A node with SETTINGS updated by `settings`, and `tables` ([[accounts]] ...) added."""
        workdir = tempfile.TemporaryDirectory(prefix="loom-fuzz-")
        root = Path(workdir.name)
        (root / "loom.toml").write_text(_toml({**SETTINGS, **(settings or {})}) + TABLES + tables)
        log = root / "node.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [*_RUN, "--config", str(root / "loom.toml"), "--data-dir", str(root / "data")],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"},
                cwd=Path(__file__).resolve().parents[2],
            )
        node = cls(proc, log, workdir=workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = _READY.search(log.read_text())
            if m:
                node.ports = {name: int(port) for name, port in _PORT.findall(m.group(1))}
                return node
            if proc.poll() is not None:
                break
            time.sleep(0.05)  # polling for the readiness line, not a fixed wait
        node.stop()
        raise RuntimeError(f"loom run did not become ready:\n{log.read_text()[-2000:]}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def request(self, method: str, path: str, body: dict | None = None, key: str = ALICE_KEY):
        """(status, JSON body) of one REST request."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("X-API-Key", key)
        if data:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def order_works(self) -> bool:
        """A normal order is accepted and can be read back."""
        order = {"symbol": SYMBOL, "side": "buy", "qty": 1, "price": 100}
        try:
            status, body = self.request("POST", "/v1/orders", order)
            if status != 201:
                return False
            oid = body["order"]["order_id"]
            return self.request("GET", f"/v1/orders/{oid}")[0] == 200
        except (OSError, ValueError, KeyError):
            return False

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def cleanup(self) -> None:
        self.stop()
        if self.workdir is not None:
            self.workdir.cleanup()
            self.workdir = None

    def __enter__(self) -> FuzzNode:
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()
