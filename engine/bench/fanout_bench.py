"""`loom bench fanout`: N WebSocket L2 subscribers to one symbol on a real `loom run` (or on
`loom marketdata` processes fed over NATS, `--marketdata K`) while a binary session changes
the book R times a second.

The subscribers live in `--processes` client processes of their own (each raising its
RLIMIT_NOFILE), spread over the source addresses 127.0.0.2-17 so no one address runs out of
ports. Each reads raw WebSocket frames and, for every l2update received inside the measured
window, takes its lag: the receipt wall clock minus the update's `ts` (the newest durable
event's timestamp, from the sequencer's clock on this same machine).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

from engine.bench.connections_bench import SOURCES, _metric_sum, _raise_nofile, _rss_mb, _Trader
from engine.bench.stats import percentile_us, process_cpu_s
from engine.gateways.ws_frames import server_frames
from engine.load.spawn import LOAD_ACCOUNTS, _config_text, spawned_exchange

SYMBOL = "LOAD-USD"
CONNECTING_AT_ONCE = 128  # per client process
TICK_S = 0.001  # orders sent every millisecond, so each can be its own batch and book update


class _Update(msgspec.Struct):
    type: str
    seq: int = 0
    ts: int = 0


_decode = msgspec.json.Decoder(_Update).decode


class _Subscriber(asyncio.Protocol):
    """One WebSocket book subscriber: upgrade, subscribe, then parse server frames."""

    def __init__(self, host: str, max_rate: float, stats: dict, window, subscribed: asyncio.Future) -> None:
        self.host, self.max_rate, self.stats, self.window = host, max_rate, stats, window
        self.subscribed = subscribed
        self.buf = b""
        self.upgraded = False
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(
            f"GET /v1/ws HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def _send_text(self, payload: bytes) -> None:
        # A client frame must be masked; a zero mask leaves the payload as is (RFC 6455 5.3).
        n = len(payload)
        head = bytes((0x81, 0x80 | n)) if n < 126 else bytes((0x81, 0xFE)) + n.to_bytes(2, "big")
        self.transport.write(head + b"\0\0\0\0" + payload)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        buf = self.buf + data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.stats["refused"] += 1
                self.stats["errors"].append(buf[: min(end, 200)].decode(errors="replace"))
                self.transport.close()
                return
            self.upgraded = True
            buf = buf[end + 4 :]
            sub = {"op": "subscribe", "channel": "book", "symbol": SYMBOL, "max_rate": self.max_rate}
            self._send_text(msgspec.json.encode(sub))
        stats, window = self.stats, self.window
        frames, pos = server_frames(buf)
        for opcode, payload in frames:
            if opcode == 0x9:  # the node's ping
                self.transport.write(bytes((0x8A, 0x80 | len(payload))) + b"\0\0\0\0" + payload)
                continue
            if opcode != 0x1:
                continue
            msg = _decode(payload)
            if msg.type == "l2update":
                if window[0] <= now * 1e-9 < window[1]:
                    stats["frames"] += 1
                    stats["lags"].append(now - msg.ts)
                    stats["first_seq"] = min(stats["first_seq"], msg.seq)
                    stats["last_seq"] = max(stats["last_seq"], msg.seq)
            elif msg.type == "l2snapshot":
                if not self.subscribed.done():
                    self.subscribed.set_result(True)
            elif msg.type == "error":
                stats["errors"].append(payload[:200].decode(errors="replace"))
        self.buf = buf[pos:]

    def connection_lost(self, exc) -> None:
        self.stats["lost"] += 1
        if not self.subscribed.done():
            self.subscribed.set_result(False)


async def _subscribers(
    host: str, port: int, count: int, offset: int, max_rate: float, window, out, stop
) -> dict:
    loop = asyncio.get_running_loop()
    stats: dict[str, Any] = {
        "frames": 0,
        "lags": [],
        "first_seq": 1 << 62,
        "last_seq": 0,
        "refused": 0,
        "lost": 0,
    }
    stats["errors"] = []
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)

    async def one(n: int) -> bool:
        async with gate:
            done = loop.create_future()
            try:
                await asyncio.wait_for(
                    loop.create_connection(
                        lambda: _Subscriber(host, max_rate, stats, window, done),
                        host,
                        port,
                        local_addr=(SOURCES[n % len(SOURCES)], 0),
                    ),
                    30,
                )
                return await asyncio.wait_for(done, 30)
            except (OSError, TimeoutError):
                return False

    results = await asyncio.gather(*(one(offset + i) for i in range(count)))
    out.put(("subscribed", sum(results)))
    while not stop.is_set():
        await asyncio.sleep(0.1)
    stats["lags"].sort()
    stats["errors"] = stats["errors"][:5]
    return stats


def _client_process(
    host: str, port: int, count: int, offset: int, max_rate: float, window, out, stop, nice: int
) -> None:
    _raise_nofile(count + 256)
    if nice:  # subscribers elsewhere take none of the servers' CPU: these yield the shared cores
        os.nice(nice)
    runner: Callable[..., Any]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    out.put(("done", runner(_subscribers(host, port, count, offset, max_rate, window, out, stop))))


def fanout_config(subscribers: int) -> str:
    """The load node's config with room for the subscribers: one listener holds them all,
    spread over 16 source addresses; they only read, so no idle deadline or ping ends them.
    The subscribers carry no key, and each address stands for hundreds of clients, so the
    per-IP limit on keyless requests is off: at its default (100/s, burst 200) an address's
    625 upgrades of a 10,000 ramp faster than ~4 s were answered 429 RATE_LIMITED, the
    "lost" connections of session 7 (top-level key: it must precede the tables)."""
    admission = (
        "[admission]\n"
        f"max_connections = {subscribers + 1_000}\n"
        f"max_connections_per_ip = {subscribers + 1_000}\n"
        "session_idle_s = 3600\n"
        "ws_heartbeat_s = 3600\n"
    )
    return "preauth_rate_limit = 0\n" + _config_text() + admission


def _nofile(subscribers: int) -> int:
    """The servers' RLIMIT_NOFILE: all this process may give (the HTTP listener's share of
    it, two thirds with FIX off, must hold the subscribers), or what they need beyond it."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    need = subscribers * 3 // 2 + 4_096
    return 2 * need if hard == resource.RLIM_INFINITY else min(hard, 2 * need)


@contextmanager
def _serving(subscribers: int, marketdata: int) -> Iterator[tuple[dict, list[tuple[str, int, int]]]]:
    """The node (a one-node cluster with `marketdata` processes beside it), and where the
    subscribers connect: (host, http port, pid) of each server, the node first."""
    nofile = _nofile(subscribers)
    if marketdata:
        from engine.marketdata_spawn import clustered_marketdata

        with clustered_marketdata(fanout_config(subscribers), marketdata, nofile) as found:
            yield found
        return
    with spawned_exchange(config_text=fanout_config(subscribers), nofile=nofile, fix_port=-1) as info:
        yield info, [(info["host"], info["http"], info["pid"])]


async def _measure(
    info: dict,
    servers: list,
    subscribers: int,
    rate: int,
    seconds: float,
    max_rate: float,
    processes: int,
    client_nice: int = 0,
) -> dict:
    import aiohttp

    ctx = multiprocessing.get_context("spawn")
    out, stop = ctx.Queue(), ctx.Event()
    window = ctx.Array("d", [float("inf"), float("inf")], lock=False)
    share = -(-subscribers // processes)
    procs = []
    for i in range(processes):
        count = min(share, subscribers - i * share)
        if count <= 0:
            break
        host, port, _pid = servers[i % len(servers)]
        p = ctx.Process(
            target=_client_process,
            args=(host, port, count, i * share, max_rate, window, out, stop, client_nice),
            daemon=True,
        )
        p.start()
        procs.append(p)
    began = time.perf_counter()
    subscribed = 0
    for _ in procs:
        _kind, n = await asyncio.to_thread(out.get, True, 600)
        subscribed += n
    ramp_s = time.perf_counter() - began
    trader = _Trader()
    await trader.connect(info["host"], info["binary"], next(iter(LOAD_ACCOUNTS)))
    await trader.trade(rate, 1.0, TICK_S)  # warm up: the conflation groups and the client loops
    now = time.time()
    window[0], window[1] = now, now + seconds
    # Who had the CPU over the window: the servers, and the subscribers' own processes (which
    # share this machine's cores with them; clients elsewhere would not).
    pids = [pid for _h, _p, pid in servers] + [p.pid for p in procs]
    cpu_before, wall_before = [process_cpu_s(pid) for pid in pids], time.perf_counter()
    acks = await trader.trade(rate, seconds, TICK_S)
    wall = time.perf_counter() - wall_before
    cores = [(process_cpu_s(pid) - before) / wall for pid, before in zip(pids, cpu_before, strict=True)]
    rss = [_rss_mb(pid) for _h, _p, pid in servers]
    async with aiohttp.ClientSession() as session:
        slow = refused_by_node = timed_out = shed = rate_limited = 0.0
        for host, port, _pid in servers:
            base = f"http://{host}:{port}"
            slow += await _metric_sum(session, base, "loom_md_slow_consumer_drops_total")
            # Why a connection was lost, as the servers count it: admission caps, deadlines.
            refused_by_node += await _metric_sum(session, base, "loom_connections_refused_total")
            timed_out += await _metric_sum(session, base, "loom_connection_timeouts_total")
            shed += await _metric_sum(session, base, "loom_overload_refusals_total")
            rate_limited += await _metric_sum(session, base, "loom_rate_limited_total")  # 429s
    stop.set()
    results = [(await asyncio.to_thread(out.get, True, 120))[1] for _ in procs]
    for p in procs:
        p.join(10)
    lags = sorted(lag for r in results for lag in r["lags"])
    frames = sum(r["frames"] for r in results)
    first = min(r["first_seq"] for r in results)
    last = max(r["last_seq"] for r in results)
    acks.sort()
    return {
        "subscribers": subscribed,
        "updates_per_s": round(max(0, last - first) / seconds, 1),
        "frames_per_s": round(frames / seconds, 1),
        "lag_p50_ms": round(percentile_us(lags, 50) / 1000, 2) if lags else None,
        "lag_p99_ms": round(percentile_us(lags, 99) / 1000, 2) if lags else None,
        "slow_disconnects": int(slow),
        "rss_mb": round(sum(rss), 1),
        "rss_mb_by_server": [round(r, 1) for r in rss],
        "subscribers_requested": subscribers,
        "connections_lost": sum(r["lost"] for r in results),
        "connections_refused": sum(r["refused"] for r in results),  # answered, but not upgraded
        "server_refusals": int(refused_by_node),
        "server_timeouts": int(timed_out),
        "server_overload_refusals": int(shed),
        "server_rate_limited": int(rate_limited),
        "client_errors": [e for r in results for e in r["errors"]][:5],
        "order_rate": rate,
        "orders_acked": len(acks),
        "ack_p99_ms": round(percentile_us(acks, 99) / 1000, 2) if acks else None,
        "max_rate": max_rate,
        "seconds": seconds,
        "processes": len(procs),
        "marketdata_processes": len(servers) - 1 if len(servers) > 1 else 0,
        "ramp_s": round(ramp_s, 1),
        "client_nice": client_nice,
        "server_cpu_cores": [round(c, 2) for c in cores[: len(servers)]],  # each server's, over the window
        "client_cpu_cores": round(sum(cores[len(servers) :]), 2),  # the subscribers' processes, together
        "load_average_1m": round(os.getloadavg()[0], 2),  # the machine's, at the end
    }


def run_fanout_bench(
    subscribers: int = 1_000,
    rate: int = 1_000,
    seconds: float = 10.0,
    max_rate: float = 10.0,
    processes: int = 4,
    marketdata: int = 0,
    client_nice: int = 0,
) -> dict:
    _raise_nofile(_nofile(subscribers))
    with _serving(subscribers, marketdata) as (info, servers):
        return asyncio.run(
            _measure(info, servers, subscribers, rate, seconds, max_rate, processes, client_nice)
        )


def format_fanout(r: dict) -> str:
    where = (
        f"the node and {r['marketdata_processes']} loom marketdata"
        if r["marketdata_processes"]
        else "the node"
    )
    verdict = "within" if r["lag_p99_ms"] is not None and r["lag_p99_ms"] <= 100 else "ABOVE"
    return (
        f"{r['subscribers']:,} of {r['subscribers_requested']:,} book subscribers on {where} "
        f"(max_rate {r['max_rate']:g}, subscribed in {r['ramp_s']} s); book changed "
        f"{r['updates_per_s']:,}/s (orders {r['order_rate']:,}/s, ack p99 {r['ack_p99_ms']} ms)\n"
        f"frames received {r['frames_per_s']:,}/s; lag p50 {r['lag_p50_ms']} ms, p99 {r['lag_p99_ms']} ms "
        f"({verdict} the 100 ms target); slow-consumer disconnects {r['slow_disconnects']}; "
        f"connections lost {r['connections_lost']}; server RSS {r['rss_mb']} MB\n"
        f"CPU over the window (cores): servers {r['server_cpu_cores']}, subscriber processes "
        f"{r['client_cpu_cores']}; load average {r['load_average_1m']}"
    )
