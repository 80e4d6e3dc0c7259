"""A by-hand throughput check of the durable binary path (not a test):

    python -m engine.gateways.binary.bench --orders 200000 --window 2000

A server process (ExchangeNode with fdatasync group commit + ExchangeService +
ExecutionRouter + binary gateway, journal in a temporary directory) and a load generator
process (BinaryClient connections, one account each, orders pre-encoded and pipelined with
a bounded number in flight). An order counts when its Accepted or Rejected frame arrives;
the latency is from the write of its chunk to the read that brought its ack.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing as mp
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from engine.bench.stats import percentile_us
from engine.core.domain import Instrument, OrderType, SelfTradePrevention, TimeInForce
from engine.gateways.binary import protocol as p

SYMBOL = "LOOM-USD"
MID = 100_000


def _key(i: int) -> str:
    return f"bench-key-{i:04d}-" + "x" * 17


def _serve(conn, connections: int, fsync: bool, pin: int | None) -> None:
    if pin is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {pin})
    asyncio.run(_serve_async(conn, connections, fsync))


async def _serve_async(conn, connections: int, fsync: bool) -> None:
    from engine.auth import Accounts
    from engine.exchange import ExchangeNode, NodeConfig
    from engine.gateways.binary.server import start_binary_server, stop_binary_server
    from engine.routing import ExecutionRouter
    from engine.service import ExchangeService

    tmp = Path(tempfile.mkdtemp(prefix="loom-binbench-"))
    node = ExchangeNode(
        NodeConfig(
            tmp,
            (Instrument(SYMBOL, max_qty=1_000_000),),
            snapshot_every_commands=0,
            snapshot_every_s=0,
            fsync=fsync,
        )
    )
    service = ExchangeService(node)
    router = ExecutionRouter()
    service.add_listener(router.on_batch)
    service.start()
    accounts = Accounts({_key(i): f"acct{i}" for i in range(connections)})
    server = await start_binary_server(service, router, accounts, "127.0.0.1", 0, rate=0)
    gc.collect()
    gc.freeze()
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_reader(conn.fileno(), lambda: stop.done() or stop.set_result(conn.recv()))
    conn.send(server.sockets[0].getsockname()[1])
    cpu0 = time.process_time()
    await stop
    cpu = time.process_time() - cpu0
    loop.remove_reader(conn.fileno())
    await stop_binary_server(server)
    await service.stop()
    conn.send(
        {
            "batches": service.batches,
            "commands": service.commands,
            "journal_last_seq": node.journal.last_seq,
            "server_cpu_s": cpu,
        }
    )
    node.close()
    shutil.rmtree(tmp, ignore_errors=True)


def _orders(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    limit, gtc, stp = int(OrderType.LIMIT), int(TimeInForce.GTC), int(SelfTradePrevention.CANCEL_NEWEST)
    enc = p.encode_new_order
    return [
        enc(
            ref,
            SYMBOL,
            rng.choice((1, 2)),
            limit,
            gtc,
            False,
            stp,
            MID + rng.randint(-10, 10),
            rng.randint(1, 10),
        )
        for ref in range(1, n + 1)
    ]


async def _load(port: int, orders: int, connections: int, window: int, chunk: int) -> dict:
    from engine.gateways.binary.client import BinaryClient

    per = orders // connections
    frames = [_orders(per, seed) for seed in range(connections)]
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    clock = time.perf_counter_ns
    lat: list[int] = []
    state = {"acked": 0, "rejected": 0, "frames": 0}
    per_window = max(chunk, window // connections)

    class Feed:
        def __init__(self, frames: list[bytes]) -> None:
            self.frames = frames
            self.next = 0  # index of the next order to send
            self.acked = 0
            self.sent_at = [0] * (len(frames) + 1)
            self.client: BinaryClient | None = None

        def pump(self) -> None:
            if self.client is None:
                return
            while self.next < len(self.frames) and self.next - self.acked + chunk <= per_window:
                end = min(self.next + chunk, len(self.frames))
                now = clock()
                sent_at = self.sent_at
                for ref in range(self.next + 1, end + 1):
                    sent_at[ref] = now
                self.client.send(b"".join(self.frames[self.next : end]))
                self.next = end

        def on_frames(self, batch: list) -> None:
            now = clock()
            sent_at = self.sent_at
            n = 0
            for f in batch:
                kind = type(f)
                if kind is p.Accepted or kind is p.Rejected:
                    n += 1
                    lat.append(now - sent_at[f.client_ref])
                    if kind is p.Rejected:
                        state["rejected"] += 1
            state["frames"] += len(batch)
            self.acked += n
            state["acked"] += n
            if state["acked"] >= per * connections and not done.done():
                done.set_result(None)
            self.pump()

    feeds = [Feed(f) for f in frames]
    clients = []
    for i, feed in enumerate(feeds):
        feed.client = await BinaryClient.connect("127.0.0.1", port, _key(i), on_frames=feed.on_frames)
        clients.append(feed.client)
    gc.collect()
    gc.freeze()
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    for feed in feeds:
        feed.pump()
    await asyncio.wait_for(done, 600)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    for c in clients:
        await c.aclose()
    lat.sort()
    total = per * connections
    return {
        "orders": total,
        "elapsed_s": round(elapsed, 3),
        "orders_per_s": round(total / elapsed),
        "rejected": state["rejected"],
        "frames_received": state["frames"],
        "loadgen_cpu_s": round(cpu, 2),
        "ack_p50_us": percentile_us(lat, 50),
        "ack_p99_us": percentile_us(lat, 99),
        "ack_p999_us": percentile_us(lat, 99.9),
        "ack_max_us": percentile_us(lat, 100),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=200_000)
    parser.add_argument("--connections", type=int, default=2, help="one account each")
    parser.add_argument("--window", type=int, default=2000, help="orders in flight, all connections")
    parser.add_argument("--chunk", type=int, default=100, help="orders per write")
    parser.add_argument("--no-fsync", action="store_true", help="journal without fdatasync")
    parser.add_argument("--pin", action="store_true", help="server on CPU 0, load generator on CPU 1")
    args = parser.parse_args(argv)

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(
        target=_serve, args=(child, args.connections, not args.no_fsync, 0 if args.pin else None), daemon=True
    )
    server.start()
    try:
        port = parent.recv()
        if args.pin and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {1})
        result = asyncio.run(_load(port, args.orders, args.connections, args.window, args.chunk))
        parent.send("stop")
        stats = parent.recv()
    finally:
        server.join(30)
        if server.is_alive():
            server.kill()
    result.update(stats)
    result["avg_batch"] = round(stats["commands"] / max(1, stats["batches"]), 1)
    result["server_cpu_s"] = round(stats["server_cpu_s"], 2)
    for k, v in result.items():
        print(f"{k:>18}: {v:,}" if isinstance(v, int) else f"{k:>18}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
