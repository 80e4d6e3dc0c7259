"""The CPU cost of one refused REST order, refused from its raw bytes (before aiohttp's parser:
engine/gateways/http_raw.py) against refused after parsing (the path before it), in-process.

A real aiohttp listener with the REST gateway's QuietRequestHandler and PipelineShed; one
connection is given MAX_ORDERS_IN_FLIGHT orders (admitted, left in flight), then reads of
BATCH orders each, every one refused. The two paths are interleaved (A B B A ...) and each
read timed; prints JSON: microseconds a refusal, per path (median and best of the rounds).

    python scripts/bench_rest_refusal.py [--rounds 20] [--batch 200]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

from engine.core.domain import Instrument
from engine.exchange import ExchangeNode, NodeConfig
from engine.gateways.http_errors import QuietAppRunner, QuietRequestHandler
from engine.gateways.http_shed import MAX_ORDERS_IN_FLIGHT, ORDERS_PATH, PipelineShed
from engine.service import ExchangeService

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
order = importlib.import_module("test_rest_pipeline_shed").order  # the tests' keyed order: one builder


async def admitted(request: web.Request) -> web.Response:
    return web.json_response({}, status=201)  # admitted orders are never run here


def refuse_batch(handler: QuietRequestHandler, data: bytes, raw: bool) -> float:
    """Seconds to refuse the orders of one read, by the raw path or the parsed one."""
    pipeline = handler.pipeline
    pipeline.framing = raw
    started = time.perf_counter()
    handler.data_received(data)
    elapsed = time.perf_counter() - started
    assert not handler._messages or len(handler._messages) == MAX_ORDERS_IN_FLIGHT, "an order was not refused"
    pipeline.trailers.clear()  # as if written: the next read starts alike
    pipeline.held_bytes, pipeline.held = 0, False
    pipeline.fed = handler._request_count
    return elapsed


async def run(rounds: int, batch: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="loom-bench-refusal-"))
    node = ExchangeNode(
        NodeConfig(tmp / "data", (Instrument("LOAD-USD"),), snapshot_every_commands=0, snapshot_every_s=0)
    )
    service = ExchangeService(node)  # not started: the bound, not the queue, refuses
    app = web.Application()
    app.router.add_post(ORDERS_PATH, admitted)
    runner = QuietAppRunner(app, shed=PipelineShed(service), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = socket.create_connection(("127.0.0.1", port))
    try:
        while not runner.server.connections:  # type: ignore[union-attr]
            await asyncio.sleep(0.001)
        handler = runner.server.connections[0]  # type: ignore[union-attr]
        assert isinstance(handler, QuietRequestHandler)
        # The admitted orders: parsed, started, never run (nothing here yields to them).
        handler.data_received(b"".join(order(k) for k in range(MAX_ORDERS_IN_FLIGHT)))
        for early in handler.pipeline.early.values():
            early.task.cancel()
        data = b"".join(order(1000 + k) for k in range(batch))
        times: dict[str, list[float]] = {"raw": [], "parsed": []}
        for r in range(rounds):
            for path in ("raw", "parsed") if r % 2 == 0 else ("parsed", "raw"):
                times[path].append(refuse_batch(handler, data, path == "raw") / batch * 1e6)
        return {
            "batch": batch,
            "rounds": rounds,
            **{f"{p}_us_median": round(statistics.median(t), 2) for p, t in times.items()},
            **{f"{p}_us_best": round(min(t), 2) for p, t in times.items()},
        }
    finally:
        client.close()
        await runner.cleanup()
        node.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run(args.rounds, args.batch))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
