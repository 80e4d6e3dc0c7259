"""`loom bench fanout`'s node upgrades every subscriber (issue 16): the lost connections of
session 7's 10,000-subscriber runs (668-1,952 per run) were keyless WebSocket upgrades
answered 429 RATE_LIMITED by the per-IP limit on requests without a key (100/s, burst 200),
since the bench's 16 source addresses carry 625 subscribers each. Here 1,000 upgrades from
one address in a burst, against a real `loom run` with the bench's config."""

from __future__ import annotations

import asyncio
import collections

import aiohttp

from engine.bench.connections_bench import _metric_sum, _raise_nofile
from engine.bench.fanout_bench import _nofile, fanout_config
from engine.load.spawn import spawned_exchange

UPGRADES = 1_000  # from one address: five times the limit's burst


async def _upgrade_all(host: str, port: int) -> collections.Counter:
    """Each upgrade's status line, the sockets held open until every one is answered."""
    gate = asyncio.Semaphore(128)
    writers: list[asyncio.StreamWriter] = []

    async def one() -> str:
        async with gate:
            reader, writer = await asyncio.open_connection(host, port)
            writers.append(writer)
            writer.write(
                f"GET /v1/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            status = await asyncio.wait_for(reader.readline(), 30)
            return status.decode(errors="replace").strip()

    try:
        return collections.Counter(await asyncio.gather(*(one() for _ in range(UPGRADES))))
    finally:
        for w in writers:
            w.close()


async def _rate_limited(host: str, port: int) -> float:
    async with aiohttp.ClientSession() as session:
        return await _metric_sum(session, f"http://{host}:{port}", "loom_rate_limited_total")


def test_the_fanout_node_upgrades_a_burst_of_keyless_subscribers_from_one_address():
    _raise_nofile(UPGRADES + 512)
    config = fanout_config(UPGRADES)
    with spawned_exchange(config_text=config, nofile=_nofile(UPGRADES), fix_port=-1) as info:
        statuses = asyncio.run(_upgrade_all(info["host"], info["http"]))
        limited = asyncio.run(_rate_limited(info["host"], info["http"]))
    assert statuses == {"HTTP/1.1 101 Switching Protocols": UPGRADES}, statuses
    assert limited == 0
