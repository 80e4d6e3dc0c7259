"""`loom bench failover`: high-availability figures on a local 3-server NATS cluster
(real nats-server processes, R3 stream, `sync_interval: always`).

    publish  sequential one-command appends to the replicated journal: publish→PubAck
    durable  the engine workload through an ExchangeNode on the replicated journal
             (sequencer, R3 PubAck per group-commit batch, engine): orders/s
    failover two `loom run --cluster` nodes and a REST client; SIGKILL the leader, time to
             the first order the new leader accepts; the killed node comes back as the
             standby; repeated `kills` times
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path

from engine import progress
from engine.bench.stats import percentile_us
from engine.bench.workload import INSTRUMENT, generate
from engine.cluster.drill import NodeProcess, OrderSender, failover_once, in_sync, wait_for
from engine.cluster.journal import NatsJournal
from engine.cluster.link import NatsLink
from engine.cluster.natsserver import LocalNatsCluster
from engine.exchange import ExchangeNode, NodeConfig


def _publish_latency(link: NatsLink, appends: int) -> dict:
    journal = NatsJournal(link, "BENCH_PUBLISH", "loom.bench.publish")
    commands = generate(appends, 3, "deep").commands
    samples = []
    progress.phase("failover bench: sequential publishes", len(commands))
    for cmd in commands:
        t0 = time.perf_counter_ns()
        journal.append([cmd])
        samples.append(time.perf_counter_ns() - t0)
        progress.advance()
    samples.sort()
    return {
        "appends": appends,
        "p50_us": percentile_us(samples, 50),
        "p99_us": percentile_us(samples, 99),
        "max_us": round(samples[-1] / 1000, 1),
    }


def _durable_throughput(link: NatsLink, orders: int, batch: int, workdir: Path) -> dict:
    journal = NatsJournal(link, "BENCH_DURABLE", "loom.bench.durable")
    node = ExchangeNode(
        NodeConfig(workdir / "durable", (INSTRUMENT,), snapshot_every_commands=0, snapshot_every_s=0),
        journal=journal,
    )
    commands = generate(orders, 1, "deep").commands
    started = time.perf_counter()
    progress.phase("failover bench: orders through the replicated journal", len(commands))
    for i in range(0, len(commands), batch):
        node.submit(commands[i : i + batch])
        progress.update(i + batch)
    elapsed = time.perf_counter() - started
    node.close()
    return {
        "orders": orders,
        "batch": batch,
        "seconds": round(elapsed, 3),
        "orders_per_s": round(orders / elapsed),
    }


def _failovers(urls: list[str], workdir: Path, kills: int) -> dict:
    nodes = [NodeProcess(n, urls, workdir, "BENCH_FAILOVER") for n in ("a", "b")]
    sender = OrderSender(nodes)
    thread = threading.Thread(target=sender.run, daemon=True)
    runs = []
    try:
        nodes[0].start()
        wait_for("a to lead", lambda: nodes[0].status().get("role") == "leader")
        nodes[1].start()
        thread.start()
        progress.phase("failover bench: leader kills", kills)
        for _ in range(kills):
            figures = failover_once(nodes, sender)
            runs.append(figures)
            killed = next(n for n in nodes if n.node_id == figures["killed"])
            killed.start()  # back as the standby, recovering from its snapshot + the stream
            wait_for("the restarted node in sync", lambda: in_sync(nodes), timeout=60)
            progress.advance()
    finally:
        sender.stop.set()
        if thread.is_alive():
            thread.join(10)
        for node in nodes:
            node.stop()
    times = sorted(r["failover_s"] for r in runs)
    return {
        "kills": len(runs),
        "failover_p50_s": round(statistics.median(times), 3),
        "failover_max_s": times[-1],
        "failover_s": [r["failover_s"] for r in runs],
        "orders_acked": len(sender.acked),
        "refusals_seen_by_client": sender.refused,
    }


def run_failover_bench(kills: int = 5, appends: int = 1000, orders: int = 100_000, batch: int = 512) -> dict:
    with tempfile.TemporaryDirectory(prefix="loom-ha-bench-") as tmp:
        workdir = Path(tmp)
        with LocalNatsCluster(workdir / "nats") as cluster:
            link = NatsLink(cluster.urls, "bench")
            try:
                publish = _publish_latency(link, appends)
                durable = _durable_throughput(link, orders, batch, workdir)
            finally:
                link.close()
            failover = _failovers(cluster.urls, workdir, kills)
    return {"nats_servers": 3, "replicas": 3, "publish": publish, "durable": durable, "failover": failover}


def format_failover(result: dict) -> str:
    p, d, f = result["publish"], result["durable"], result["failover"]
    return "\n".join(
        [
            f"replicated journal: {result['nats_servers']} nats-servers, R{result['replicas']}, sync always",
            f"  publish→PubAck (1 command, sequential, {p['appends']}): "
            f"p50 {p['p50_us']} µs, p99 {p['p99_us']} µs, max {p['max_us']} µs",
            f"  durable orders through the replicated journal (batch {d['batch']}): "
            f"{d['orders_per_s']:,} orders/s ({d['orders']:,} in {d['seconds']} s)",
            f"failover (SIGKILL leader → first order accepted by the new leader), {f['kills']} kills: "
            f"p50 {f['failover_p50_s']} s, max {f['failover_max_s']} s  {f['failover_s']}",
            f"  orders acked by the REST client: {f['orders_acked']}; refusals it retried: "
            f"{f['refusals_seen_by_client']}",
        ]
    )
