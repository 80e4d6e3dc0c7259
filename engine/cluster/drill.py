"""A failover drill on real processes: `loom run --cluster` nodes on a local NATS cluster,
a REST client that follows the leader, and SIGKILL. Used by the end-to-end test
(tests/test_failover.py, functional assertions) and by `loom bench failover` (figures).

The client sends resting limit orders one at a time with unique client order ids and
keeps every acknowledged one; when its node refuses (NOT_LEADER, connection refused) it
tries the others. After a kill, "failover time" is from the SIGKILL to the first order a
new leader accepts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from engine.load.spawn import parse_ready

ADMIN_KEY = "drill-admin-key-0000000"
TRADER_KEY = "drill-alice-key-0000000"
SYMBOL = "BTC-USD"
CONFIG = f"""
admin_key = "{ADMIN_KEY}"
rate_limit = 0.0

[[accounts]]
name = "alice"
api_key = "{TRADER_KEY}"

[[instruments]]
symbol = "{SYMBOL}"
tick_size = 1
lot_size = 1
"""


def http(method: str, url: str, body: dict | None = None, key: str = ADMIN_KEY, timeout: float = 2.0):
    """(status, decoded JSON body); (0, {}) when nothing answered."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data, method=method, headers={"X-API-Key": key})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, {}


class NodeProcess:
    """One `loom run --cluster` subprocess; `base` once it printed its readiness line."""

    def __init__(
        self,
        node_id: str,
        urls: list[str],
        workdir: Path,
        stream: str,
        extra_config: str = "",
        listeners: bool = False,
        settings: str = "",
    ) -> None:
        self.node_id = node_id
        self.urls = urls
        self.workdir = workdir
        self.stream = stream
        self.extra_config = extra_config  # TOML appended to the drill's configuration
        self.settings = settings  # top-level TOML keys, put before the drill's tables
        self.listeners = listeners  # FIX and binary listeners too (on free ports)
        self.ports: dict[str, int] = {}  # by protocol, from the readiness line
        self.proc: subprocess.Popen | None = None
        self.base = ""
        self.log = workdir / f"{node_id}.log"

    def start(self, timeout: float = 60.0) -> NodeProcess:
        config = self.workdir / f"loom-{self.node_id}.toml"
        config.write_text(self.settings + CONFIG + self.extra_config)
        argv = [sys.executable, "-m", "engine.cli", "run", "--config", str(config)]
        argv += ["--cluster", ",".join(self.urls), "--node-id", self.node_id]
        argv += ["--data-dir", str(self.workdir / self.node_id), "--http-port", "0"]
        off = "0" if self.listeners else "-1"
        argv += ["--fix-port", off, "--binary-port", off]
        env = {**_env(), "LOOM_CLUSTER_STREAM": self.stream, "PYTHONUNBUFFERED": "1"}
        offset = self.log.stat().st_size if self.log.exists() else 0  # a restart appends
        self.base = ""
        out = open(self.log, "a")  # noqa: SIM115 (the child writes it for its whole life)
        self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=_repo())
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node {self.node_id} exited with {self.proc.returncode}:\n{self.tail()}")
            with open(self.log, "rb") as f:
                f.seek(offset)
                lines = f.read().decode(errors="replace").splitlines()
            for line in lines:
                ready = parse_ready(line)
                if ready:
                    self.ports = ready[1]
                    self.base = f"http://127.0.0.1:{self.ports['http']}"
            if self.base:
                return self
            time.sleep(0.02)
        raise TimeoutError(f"node {self.node_id} printed no readiness line:\n{self.tail()}")

    def status(self) -> dict:
        return http("GET", self.base + "/v1/admin/cluster")[1] if self.alive() else {}

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _repo() -> str:
    return str(Path(__file__).resolve().parents[2])


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def wait_for(what: str, probe, timeout: float = 30.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


def leader_of(nodes: list[NodeProcess]) -> NodeProcess | None:
    for node in nodes:
        if node.alive() and node.status().get("role") == "leader":
            return node
    return None


def in_sync(nodes: list[NodeProcess]) -> bool:
    """One leader, every live standby applied as far as it."""
    leader = leader_of(nodes)
    if leader is None:
        return False
    seq = leader.status().get("applied_seq", 0)
    for node in nodes:
        if node is not leader and node.alive():
            status = node.status()  # asked after the leader: caught up means at least its seq
            if status.get("role") != "standby" or status.get("applied_seq", -1) < seq:
                return False
    return True


@dataclass
class OrderSender:
    """Sends resting buy orders, one at a time, to whichever node accepts them."""

    nodes: list[NodeProcess]
    acked: dict[str, int] = field(default_factory=dict)  # client order id -> order id
    accepted_at: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, node id)
    refused: int = 0
    counter: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        target = 0
        clid = ""
        while not self.stop.is_set():
            if not clid:
                self.counter += 1
                clid = f"o{self.counter}"
            node = self.nodes[target % len(self.nodes)]
            order = {"symbol": SYMBOL, "side": "buy", "qty": 1, "price": 1000 + self.counter % 100}
            status, body = http(
                "POST", node.base + "/v1/orders", {**order, "client_order_id": clid}, TRADER_KEY
            )
            if status == 201:
                self.acked[clid] = body["order"]["order_id"]
                self.accepted_at.append((time.monotonic(), node.node_id))
                clid = ""
            elif status == 409:  # an earlier try of this id landed without its ack reaching us
                clid = ""
            else:  # not the leader, or gone: the next node (after a breath)
                self.refused += 1
                target += 1
                time.sleep(0.005)

    def first_ack_after(self, t: float, not_by: str) -> float | None:
        """When a node other than `not_by` first acknowledged an order after `t`."""
        return next((at for at, node in self.accepted_at if at > t and node != not_by), None)


def failover_once(nodes: list[NodeProcess], sender: OrderSender, before: int = 20, after: int = 20) -> dict:
    """Let `before` orders be acked, SIGKILL the leader, wait for `after` more; returns
    the figures of this kill. The sender must be running."""
    leader = wait_for("a leader", lambda: leader_of(nodes))
    wait_for("the standby in sync", lambda: in_sync(nodes))
    start = len(sender.acked)
    wait_for(f"{before} acked orders", lambda: len(sender.acked) >= start + before)
    killed_at = time.monotonic()
    leader.kill()
    first = wait_for(
        "an order accepted by another node", lambda: sender.first_ack_after(killed_at, leader.node_id)
    )
    acked_at_kill = len(sender.acked)
    wait_for(f"{after} acked orders after the kill", lambda: len(sender.acked) >= acked_at_kill + after)
    new_leader = leader_of(nodes)
    return {
        "killed": leader.node_id,
        "new_leader": new_leader.node_id if new_leader else "",
        "failover_s": round(first - killed_at, 3),
    }
