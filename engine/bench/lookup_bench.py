"""`loom bench lookup`: what order lookups of unknown ids cost the rest of a node.

Against a real `loom run` (started here on a temporary data directory with `--preload`
finished orders in its journal, or an existing node with --url/--key): `/healthz` latency
measured at a steady pace while idle, then while `--concurrency` clients loop on trace
lookups of ids that were never assigned (`GET /v1/orders/{id}/trace`, the lookup that
reads history), each client `--rate` lookups a second (0: back to back, which saturates
the node's event loop whatever the request: compare `--healthz-load`, the same clients on
/healthz itself). The target: the loaded p99 at most 2x the idle p99.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import random
import time
from collections import Counter

from engine import progress
from engine.bench.stats import percentile_us
from engine.load.spawn import spawned_exchange

KEY = "bench-lookup-key-000000"
CONFIG = f"""
admin_key = "bench-lookup-admin-0000"
rate_limit = 0.0

[[accounts]]
name = "bench"
api_key = "{KEY}"

[[instruments]]
symbol = "BTC-USD"
tick_size = 1
lot_size = 1
"""
PROBE_EVERY_S = 0.01
UNKNOWN_BASE = 10**12  # far past any id a bench node assigns


async def _preload(session, base: str, key: str, orders: int) -> None:
    """Finished orders in the journal: placed and cancelled, 32 at a time."""
    sem = asyncio.Semaphore(32)

    async def one(n: int) -> None:
        async with sem:
            body = {"symbol": "BTC-USD", "side": "buy", "qty": 1, "price": 10 + n % 50}
            async with session.post(f"{base}/v1/orders", json=body, headers={"X-API-Key": key}) as r:
                oid = (await r.json())["order"]["order_id"]
            async with session.delete(f"{base}/v1/orders/{oid}", headers={"X-API-Key": key}) as r:
                await r.read()

    await asyncio.gather(*(one(n) for n in range(orders)))


async def _probe_healthz(session, base: str, seconds: float) -> list[int]:
    samples: list[int] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter_ns()
        async with session.get(f"{base}/healthz") as r:
            await r.read()
        samples.append(time.perf_counter_ns() - started)
        await asyncio.sleep(PROBE_EVERY_S)
    return sorted(samples)


async def _client(session, base: str, key: str, ids, pause: float, until: float, statuses: Counter):
    await asyncio.sleep(random.random() * pause)  # clients out of step, as real ones are
    while time.monotonic() < until:
        path = f"/v1/orders/{next(ids)}/trace" if ids is not None else "/healthz"
        try:
            async with session.get(base + path, headers={"X-API-Key": key}) as r:
                await r.read()
                statuses[r.status] += 1
        except Exception as exc:  # a refused or reset connection is part of the figure
            statuses[type(exc).__name__] += 1
        if pause:
            await asyncio.sleep(pause)


async def _load(base: str, key: str, seconds: float, concurrency: int, rate: float, healthz: bool) -> Counter:
    import aiohttp

    statuses: Counter = Counter()
    ids = None if healthz else itertools.count(UNKNOWN_BASE)
    pause = 1 / rate if rate else 0.0
    until = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        await asyncio.gather(
            *(_client(s, base, key, ids, pause, until, statuses) for _ in range(concurrency))
        )
    return statuses


def _load_process(args: tuple, out) -> None:
    out.put(dict(asyncio.run(_load(*args))))


async def _measure(
    base: str,
    key: str,
    seconds: float,
    concurrency: int,
    preload: int,
    rate: float,
    healthz_load: bool,
    rounds: int,
) -> dict:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        if preload:
            await _preload(session, base, key, preload)
        # Idle and loaded phases alternate `rounds` times and are pooled: this VM's speed
        # drifts, and side by side is the only fair comparison.
        idle: list[int] = []
        loaded: list[int] = []
        statuses: Counter = Counter()
        ctx = multiprocessing.get_context("spawn")
        ramp = 1.0
        progress.phase("lookup bench: idle and loaded phases", 2 * rounds)
        for _ in range(rounds):
            idle += await _probe_healthz(session, base, seconds)
            progress.advance()
            # The load runs in its own process: its client work must not delay the probe's.
            out = ctx.Queue()
            args = (base, key, seconds + 2 * ramp, concurrency, rate, healthz_load)
            load = ctx.Process(target=_load_process, args=(args, out))
            load.start()
            await asyncio.sleep(ramp)
            loaded += await _probe_healthz(session, base, seconds)
            statuses.update(await asyncio.to_thread(out.get, True, 120))
            load.join()
            progress.advance()
        idle.sort()
        loaded.sort()
    idle_p99 = percentile_us(idle, 99) / 1000
    loaded_p99 = percentile_us(loaded, 99) / 1000
    total = sum(statuses.values())
    return {
        "healthz_p50_ms_idle": round(percentile_us(idle, 50) / 1000, 3),
        "healthz_p99_ms_idle": round(idle_p99, 3),
        "healthz_p50_ms_lookups": round(percentile_us(loaded, 50) / 1000, 3),
        "healthz_p99_ms_lookups": round(loaded_p99, 3),
        "healthz_max_ms_lookups": round(loaded[-1] / 1e6, 3) if loaded else 0.0,
        "p99_ratio": round(loaded_p99 / idle_p99, 2) if idle_p99 else 0.0,
        "lookups": total,
        "lookups_per_s": round(total / rounds / (seconds + 2 * ramp), 1),
        "lookup_statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
        "concurrency": concurrency,
        "rate_per_client": rate,
        "load": "healthz" if healthz_load else "unknown-id trace lookups",
        "seconds": seconds,
        "rounds": rounds,
        "preloaded_orders": preload,
    }


def run_lookup_bench(
    seconds: float = 10.0,
    concurrency: int = 50,
    preload: int = 2000,
    url: str = "",
    key: str = "",
    rate: float = 10.0,
    healthz_load: bool = False,
    rounds: int = 3,
) -> dict:
    load = (seconds, concurrency)
    if url:
        measured = _measure(url.rstrip("/"), key or KEY, *load, 0, rate, healthz_load, rounds)
        return {"target": url, **asyncio.run(measured)}
    with spawned_exchange(config_text=CONFIG) as info:
        base = f"http://{info['host']}:{info['http']}"
        return {
            "target": "loom run",
            **asyncio.run(_measure(base, KEY, *load, preload, rate, healthz_load, rounds)),
        }


def format_lookup(r: dict) -> str:
    verdict = "within" if r["p99_ratio"] <= 2 else "ABOVE"
    return (
        f"/healthz p99 idle {r['healthz_p99_ms_idle']} ms, under {r['concurrency']} concurrent "
        f"clients ({r['load']}, {r['rate_per_client'] or 'unpaced'}/s each) "
        f"{r['healthz_p99_ms_lookups']} ms (x{r['p99_ratio']}, {verdict} the 2x target); "
        f"{r['lookups']} requests ({r['lookups_per_s']}/s): {r['lookup_statuses']}"
    )
