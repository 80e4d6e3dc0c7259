"""`/metrics` on its own listener (`metrics_host`/`metrics_port`), for operators only.

By default the trading HTTP port serves `/metrics` too (simple to start with). A venue whose
trading port faces clients moves it off: with `metrics_port` set, the trading port no longer
answers `/metrics` (404) and this listener, bound where only the scraper reaches, does.
"""

from __future__ import annotations

from aiohttp import web

from engine.gateways.http_context import CTX, GatewayContext
from engine.gateways.http_errors import QuietAppRunner
from engine.gateways.http_middleware import json_errors
from engine.gateways.rest_market import healthz, metrics_endpoint


def build_metrics_app(ctx: GatewayContext) -> web.Application:
    app = web.Application(client_max_size=1024, middlewares=[json_errors])
    app[CTX] = ctx
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/healthz", healthz)  # the scraper's own liveness probe
    return app


async def start_metrics_listener(ctx: GatewayContext, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve /metrics on host:port; (the runner, the bound port)."""
    runner = QuietAppRunner(build_metrics_app(ctx), observer=ctx.observer, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner, runner.addresses[0][1]
