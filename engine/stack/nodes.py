"""The exchange of a stack: one `loom run` node, or (cluster) 3 nats-servers and 2 nodes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import engine
from engine.cluster.natsserver import LocalNatsCluster, NatsServerMissing
from engine.demo import DEMO_INSTRUMENTS
from engine.stack.layout import Component
from engine.stack.procs import Proc, StackError, free_port, http_ok, spawn, start_time, wait_until

# The package's parent: the nodes import the same engine as the `loom` that started them.
SOURCE_ROOT = str(Path(engine.__file__).resolve().parent.parent)
NODE_IDS = ("a", "b")


def exchange_config(admin_key: str, demo: bool) -> str:
    """The nodes' TOML: loopback, the stack's admin key, and (without --demo, which brings
    its own) the demo instruments so the node starts."""
    lines = ['host = "127.0.0.1"', f'admin_key = "{admin_key}"']
    if not demo:
        for inst in DEMO_INSTRUMENTS:
            lines += [
                "[[instruments]]",
                f'symbol = "{inst.symbol}"',
                f"tick_size = {inst.tick_size}",
                f"lot_size = {inst.lot_size}",
                f"min_qty = {inst.min_qty}",
                f"max_qty = {inst.max_qty}",
            ]
    return "\n".join(lines) + "\n"


def node_component(
    name: str,
    workdir: Path,
    config: Path,
    token: str,
    http_port: int,
    demo: bool,
    rate: int | None,
    cluster: list[str] = (),
    node_id: str = "",
) -> Component:
    """A node's component record, not yet started (pid 0): start() runs its argv."""
    argv = [sys.executable, "-m", "engine.cli", "run", "--config", str(config)]
    argv += ["--data-dir", str(workdir / "data"), "--http-port", str(http_port)]
    argv += ["--fix-port", str(free_port()), "--binary-port", str(free_port())]
    if demo:
        argv += ["--demo"] + (["--rate", str(rate)] if rate else [])
    if cluster:
        argv += ["--cluster", ",".join(cluster), "--node-id", node_id]
    path = os.pathsep.join(p for p in (SOURCE_ROOT, os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "LOOM_AUTOMATION_TOKEN": token}
    return Component(
        name,
        0,
        0,
        f"http://127.0.0.1:{http_port}",
        "/healthz",
        str(workdir / "loom.log"),
        argv,
        str(workdir),
        env,
    )


def start(node: Component, timeout: float = 90.0) -> Component:
    """Starts (or starts again) the node and waits until /healthz answers; updates its pid."""
    Path(node.cwd).mkdir(parents=True, exist_ok=True)
    proc = spawn(node.argv, Path(node.log), Path(node.cwd), {**os.environ, **node.env})
    node.pid, node.started = proc.pid, proc.started
    wait_until(
        f"{node.name} {node.url}/healthz",
        lambda: http_ok(node.url + "/healthz"),
        timeout,
        proc=proc,
        log=Path(node.log),
    )
    return node


def wait_ready(nodes: list[Component], timeout: float = 90.0) -> Component:
    """Until one node answers /readyz 200 (the single node; in a cluster, the leader)."""

    def leader():
        return next((n for n in nodes if http_ok(n.url + "/readyz")), None)

    return wait_until(
        "a node ready to take orders (/readyz)", leader, timeout, interval=0.1, log=Path(nodes[0].log)
    )


def start_nats(workdir: Path) -> list[Component]:
    """Three nats-servers (JetStream, one cluster), each in its own session, ready."""
    try:
        cluster = LocalNatsCluster(workdir, detach=True)
    except NatsServerMissing as exc:
        raise StackError(str(exc)) from None
    try:
        cluster.start()
    except (RuntimeError, TimeoutError) as exc:
        cluster.stop()
        raise StackError(str(exc)) from None
    components = []
    for i, n in enumerate(cluster.nodes):
        started = start_time(n.proc.pid)
        n.proc.returncode = 0  # detached: stop_group reaps it, not Popen
        components.append(
            Component(
                f"nats-{i}",
                n.proc.pid,
                started or 0,
                f"http://127.0.0.1:{n.monitor_port}",
                "/healthz?js-enabled-only=true",
                str(n.log),
                [cluster.binary, "-c", str(n.config)],
                str(n.config.parent),
                client_url=n.url,
            )
        )
    return components


def nats_urls(components: list[Component]) -> list[str]:
    return [c.client_url for c in components]


def procs(components: list[Component]) -> list[Proc]:
    return [c.proc for c in components]
