"""`loom bench marketdata`: the market data fan-out in one process, without sockets.

A real matching engine and MarketData; N book subscribers, each a bounded queue as a
WebSocket session's outbox (frames appended, drained once per batch as its writer would).
Orders arrive one per batch (each a book update), so the figures are per update:

- `updates_per_s`, `frames_per_s`: book updates built and queued to every subscriber, with
  each update encoded once and its bytes shared (what the node does);
- `encode_once_us` vs `per_subscriber_us`: the cost per update of the fan-out step alone,
  shared bytes against encoding the message for each subscriber (the cost it avoids);
- the same run with subscribers at `--max-rate` (conflated): updates folded, frames sent.

Socket writes are not included: `loom bench fanout` (issue 16, later) measures end to end.
"""

from __future__ import annotations

import asyncio
import gc
import time

from engine.bench.workload import INSTRUMENT, SYMBOL
from engine.core.batch_events import BatchEvents
from engine.core.commands import NewOrder
from engine.core.domain import OrderType, Side
from engine.core.matcher import MatchingEngine
from engine.gateways.ws_frames import json_frame
from engine.market_data import MarketData


class _Queue:
    """A subscriber as a session holds it: a list of frames, bounded."""

    __slots__ = ("frames", "received")

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.received = 0

    def push(self, frame: bytes, _published_at: float) -> None:
        self.frames.append(frame)

    def drain(self) -> None:
        self.received += len(self.frames)
        self.frames.clear()


def _orders(n: int) -> list[NewOrder]:
    """Resting orders that each change one of the top 40 levels of a side."""
    out = []
    for i in range(n):
        side = Side.BUY if i % 2 else Side.SELL
        price = 10_000 - 1 - i % 40 if side == Side.BUY else 10_000 + 1 + i % 40
        out.append(NewOrder(f"mm{i % 50:02d}", "", SYMBOL, side, OrderType.LIMIT, price, 1))
    return out


async def _run(subscribers: int, updates: int, max_rate: float) -> dict:
    engine = MatchingEngine([INSTRUMENT])
    md = MarketData(engine)
    queues = [_Queue() for _ in range(subscribers)]
    for q in queues:
        md.subscribe_book(SYMBOL, q, max_rate)
    orders = _orders(updates)
    ts = time.time_ns()
    gc.collect()
    started = time.perf_counter()
    seq = engine.last_seq
    for cmd in orders:
        seq += 1
        cmd.seq, cmd.ts = seq, ts + seq
        results = [engine.apply(cmd)]
        md.on_events([cmd], results, BatchEvents(results))
        for q in queues:
            q.drain()
        if max_rate:
            await asyncio.sleep(0)  # the conflation timers run on the loop, as in the node
    elapsed = time.perf_counter() - started
    if max_rate:
        await asyncio.sleep(1.5 / max_rate)  # the last folded update
        for q in queues:
            q.drain()
    frames = sum(q.received for q in queues)
    return {"elapsed_s": elapsed, "updates": md.updates_published, "frames": frames}


def _fanout_cost(subscribers: int, messages: int) -> tuple[float, float]:
    """µs per message to queue one update to every subscriber: encoded once and shared,
    against encoded for each."""
    message = {"type": "l2update", "symbol": SYMBOL, "seq": 1, "prev_seq": 0, "changes": [["bid", 9_999, 12]]}
    queues = [_Queue() for _ in range(subscribers)]
    started = time.perf_counter()
    for _ in range(messages):
        frame = json_frame(message)
        for q in queues:
            q.push(frame, 0.0)
        for q in queues:
            q.frames.clear()
    once = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(messages):
        for q in queues:
            q.push(json_frame(message), 0.0)
        for q in queues:
            q.frames.clear()
    each = time.perf_counter() - started
    return once / messages * 1e6, each / messages * 1e6


def run_marketdata_bench(subscribers: int, updates: int, max_rate: float) -> dict:
    full = asyncio.run(_run(subscribers, updates, 0))
    conflated = asyncio.run(_run(subscribers, updates, max_rate))
    once_us, each_us = _fanout_cost(subscribers, max(1, min(updates, 2_000)))
    return {
        "subscribers": subscribers,
        "updates": full["updates"],
        "updates_per_s": round(full["updates"] / full["elapsed_s"]),
        "frames_per_s": round(full["frames"] / full["elapsed_s"]),
        "encode_once_us": round(once_us, 2),
        "per_subscriber_us": round(each_us, 2),
        "encode_once_speedup": round(each_us / once_us, 2),
        "max_rate": max_rate,
        "conflated_updates_per_s": round(conflated["updates"] / conflated["elapsed_s"]),
        "conflated_frames": conflated["frames"],
        "unconflated_frames": full["frames"],
    }


def format_marketdata(r: dict) -> str:
    return "\n".join(
        [
            f"market data fan-out: {r['subscribers']} book subscribers, {r['updates']} updates",
            f"  every update:  {r['updates_per_s']:,} updates/s, {r['frames_per_s']:,} frames/s queued",
            f"  per update:    encode once + share {r['encode_once_us']} µs, "
            f"encode per subscriber {r['per_subscriber_us']} µs ({r['encode_once_speedup']}x)",
            f"  max_rate {r['max_rate']:g}/s: {r['conflated_updates_per_s']:,} updates/s, "
            f"{r['conflated_frames']:,} frames sent instead of {r['unconflated_frames']:,}",
        ]
    )
