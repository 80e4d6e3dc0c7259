"""REST market data and reference (book, trades, instruments) and the probes and documents
(/healthz, /readyz, /metrics, /v1/openapi.json): what needs no trading key.
"""

from __future__ import annotations

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE

from engine.candles import INTERVALS, candle_json
from engine.gateways.http_answers import error, ok
from engine.gateways.http_context import CTX
from engine.gateways.http_requests import int_query
from engine.gateways.json_events import event_json
from engine.gateways.openapi import OPENAPI


async def get_book(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    symbol = request.match_info["symbol"]
    book = ctx.engine.books.get(symbol)
    if book is None:
        return error(404, "UNKNOWN_SYMBOL", f"unknown symbol {symbol!r}")
    depth = int_query(request, "depth", 10, 1, 1000)
    return ok(
        {
            "symbol": symbol,
            "seq": ctx.engine.last_seq,
            "md_seq": ctx.market_data.feed(symbol).seq,  # lines up with the WebSocket l2update seq
            "bids": [list(level) for level in book.bids.depth(depth)],
            "asks": [list(level) for level in book.asks.depth(depth)],
        }
    )


async def get_trades(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    symbol = request.match_info["symbol"]
    if symbol not in ctx.engine.books:
        return error(404, "UNKNOWN_SYMBOL", f"unknown symbol {symbol!r}")
    limit = int_query(request, "limit", 100, 1, 1000)
    trades = ctx.order_store.recent_trades(symbol, limit)
    return ok({"symbol": symbol, "trades": [event_json(t) for t in trades]})


async def get_candles(request: web.Request) -> web.Response:
    """OHLCV candles from the durable trades: `interval` 1m, 5m or 1h; `start`/`end` (ns
    since the epoch, the events' clock) bound the bucket starts, [start, end); `limit` the
    newest that many. `partial`: candles from before this node's start are still being read
    back from the journal."""
    ctx = request.app[CTX]
    symbol = request.match_info["symbol"]
    if symbol not in ctx.engine.books:
        return error(404, "UNKNOWN_SYMBOL", f"unknown symbol {symbol!r}")
    interval = request.query.get("interval", "1m")
    if interval not in INTERVALS:
        return error(
            400, "INVALID_QUERY", f"interval must be one of {', '.join(INTERVALS)}, not {interval!r}"
        )
    start = int_query(request, "start", 0, 0, 2**63 - 1)
    end = int_query(request, "end", 0, 0, 2**63 - 1)
    if end and end <= start:
        return error(400, "INVALID_QUERY", "end must be after start")
    limit = int_query(request, "limit", 1000, 1, 10_000)
    md = ctx.market_data
    found = md.candles.query(symbol, interval, start, end, limit)
    return ok(
        {
            "symbol": symbol,
            "interval": interval,
            "partial": not md.candles_complete,
            "candles": [candle_json(symbol, interval, b) for b in found],
        }
    )


async def get_ticker(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    symbol = request.match_info["symbol"]
    if symbol not in ctx.engine.books:
        return error(404, "UNKNOWN_SYMBOL", f"unknown symbol {symbol!r}")
    ticker = ctx.market_data.ticker(symbol)
    del ticker["type"]
    return ok({**ticker, "partial": not ctx.market_data.candles_complete})


async def get_instruments(request: web.Request) -> web.Response:
    engine = request.app[CTX].engine
    return ok({"instruments": [msgspec.to_builtins(i) for i in engine.instruments.values()]})


async def healthz(_request: web.Request) -> web.Response:
    return ok({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    problems = []
    if not ctx.service.accepting:
        refusal = ctx.service.refusal
        problems.append(str(refusal()) if refusal else "not accepting orders (starting or shutting down)")
    unresolved = ctx.service.node.unresolved
    if unresolved is not None:
        problems.append(f"the outcome of the journal write of seq {unresolved.seqs} is unknown (resolving)")
    elif not ctx.service.node.journal_ok:
        problems.append("the last journal write failed")
    if problems:
        return error(503, "NOT_READY", "; ".join(problems))
    return ok({"status": "ready", "seq": ctx.engine.last_seq})


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus text, or OpenMetrics (which carries exemplars) when the scraper asks."""
    ctx = request.app[CTX]
    if ctx.metrics is None:
        return error(404, "NOT_AVAILABLE", "metrics are not configured")
    if "application/openmetrics-text" in request.headers.get("Accept", ""):
        body, content_type = ctx.metrics.openmetrics.render(), OPENMETRICS_CONTENT_TYPE
    else:
        body, content_type = ctx.metrics.text.render(), PROMETHEUS_CONTENT_TYPE
    return web.Response(body=body, headers={"Content-Type": content_type})


async def openapi(_request: web.Request) -> web.Response:
    return ok(OPENAPI)
