"""`loom marketdata --cluster nats://...`: a process serving the node's market-data API
(WebSocket book/trades/ticker/candles, REST book/trades/ticker/candles/instruments, /metrics)
from what the cluster leader publishes to NATS (engine/marketdata_nats.py). Any number may
run: this is how book fan-out grows past the matching node's machine.

The handlers are the node's own (engine/gateways/rest_market.py, ws_session.py), over a
MarketData fed from NATS; orders are not taken here (no API key is known).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import nats
import nats.errors
from aiohttp import web

from engine.auth import Accounts
from engine.gateways.http_answers import error, ok
from engine.gateways.http_context import CTX, MAX_BODY, SESSIONS, GatewayContext
from engine.gateways.http_middleware import json_errors
from engine.gateways.rest_market import (
    get_book,
    get_candles,
    get_instruments,
    get_ticker,
    get_trades,
    healthz,
    metrics_endpoint,
    openapi,
)
from engine.gateways.ws_session import websocket
from engine.market_data import MarketData
from engine.marketdata_books import LevelBooks
from engine.marketdata_nats import NatsFeed

log = logging.getLogger("loom.marketdata")

CONNECT_TIMEOUT_S = 10.0


class StartFailed(Exception):
    """No NATS server answered, or the HTTP port could not be bound: said in one line, exit 1."""


REFUSAL = "a loom marketdata process serves market data only: send orders to the node"


class _Node:
    """What the gateway's handlers read of a node: the books (levels only)."""

    unresolved = None
    journal_ok = True

    def __init__(self, books: LevelBooks) -> None:
        self.engine = books


class MarketDataOnly:
    """Stands where the node's ExchangeService stands in the gateway's context."""

    accepting = False

    def __init__(self, books: LevelBooks, observer) -> None:
        self.node = _Node(books)
        self.observer = observer

    def refusal(self) -> str:
        return REFUSAL


async def readyz(request: web.Request) -> web.Response:
    feed: NatsFeed = request.app[FEED]
    if not feed.synced.is_set():
        return error(503, "NOT_READY", "not in sync with the cluster leader's market data yet")
    return ok({"status": "ready", "seq": feed.books.last_seq, "epoch": feed.epoch})


FEED = web.AppKey("marketdata_feed", NatsFeed)


def build_marketdata_app(ctx: GatewayContext, feed: NatsFeed) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[json_errors])
    app[CTX] = ctx
    app[SESSIONS] = set()
    app[FEED] = feed
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/v1/openapi.json", openapi)
    app.router.add_get("/v1/book/{symbol}", get_book)
    app.router.add_get("/v1/trades/{symbol}", get_trades)
    app.router.add_get("/v1/candles/{symbol}", get_candles)
    app.router.add_get("/v1/ticker/{symbol}", get_ticker)
    app.router.add_get("/v1/instruments", get_instruments)
    app.router.add_get("/v1/ws", websocket)
    return app


async def serve_marketdata(
    servers: list[str], stream: str, host: str, port: int, max_queued: int, book_max_rate: float
) -> None:
    from telemetry.collectors import MarketDataCollector
    from telemetry.metrics import ExchangeMetrics
    from telemetry.observer import MetricsObserver

    metrics = ExchangeMetrics()
    observer = MetricsObserver(metrics)
    books = LevelBooks()
    md = MarketData(books, observer=observer)  # type: ignore[arg-type]  # levels stand for the engine
    md.l3_available = False
    md.max_queued, md.book_max_rate = max_queued, book_max_rate
    metrics.registry.register(MarketDataCollector(md))

    async def quiet_error(exc: Exception) -> None:
        log.debug("nats: %s", exc)

    nc = nats.NATS()
    connecting = asyncio.ensure_future(
        nc.connect(
            servers,
            name="loom-marketdata",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,  # type: ignore[arg-type]  # typed int, slept as a float
            error_cb=quiet_error,
        )
    )
    # Not asyncio.wait_for: on 3.11 a cancel that meets the client's own connect timeout can
    # turn into a TimeoutError that its retry loop swallows, and wait_for then waits forever
    # (seen once in CI: the process hung past 60 s instead of this line and exit 1).
    await asyncio.wait({connecting}, timeout=CONNECT_TIMEOUT_S)
    if not connecting.done():
        nc.options["max_reconnect_attempts"] = 1  # ends the retry loop even if a cancel is lost
        connecting.cancel()
        await asyncio.wait({connecting}, timeout=CONNECT_TIMEOUT_S)
        raise StartFailed(f"no NATS server answered at {', '.join(servers)} within {CONNECT_TIMEOUT_S:g} s")
    failed = connecting.exception()
    if isinstance(failed, TimeoutError | OSError | nats.errors.Error):
        raise StartFailed(
            f"no NATS server answered at {', '.join(servers)} within {CONNECT_TIMEOUT_S:g} s ({failed!r})"
        ) from None
    if failed is not None:
        raise failed
    feed = NatsFeed(nc, stream, md, books)
    ctx = GatewayContext(
        service=MarketDataOnly(books, observer),  # type: ignore[arg-type]
        order_store=feed,  # type: ignore[arg-type]  # recent_trades, from the NATS trades
        market_data=md,
        router=None,  # type: ignore[arg-type]  # executions need an account: none here
        accounts=Accounts(),
        metrics=metrics,
    )
    runner = web.AppRunner(build_marketdata_app(ctx, feed), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await nc.close()
        raise StartFailed(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await feed.start()
    print(f"loom: ready on {host} (http {bound}); market data from NATS stream {stream}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await feed.close()
    with contextlib.suppress(Exception):
        await nc.close()
    await runner.cleanup()
