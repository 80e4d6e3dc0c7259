"""REST surveillance report (admin key; an ops key reads it too):

    GET /v1/admin/surveillance/report   wash trades, spoofing, layering and price-move
                                        findings; the anomaly model's top accounts; the
                                        indicator scores; the analysis buffer

Unlike the metrics, it names owners and accounts. The analysis runs off the order path
(engine/surveillance_desk.py); this read drains the desk's buffer first, in a worker thread,
so the report is current to the last durable batch.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from engine.gateways.http_answers import error, ok
from engine.gateways.http_auth import admin_view
from engine.gateways.http_context import CTX


async def get_report(request: web.Request) -> web.Response:
    admin_view(request)
    desk = request.app[CTX].surveillance
    if desk is None or not hasattr(desk, "report"):
        return error(501, "NOT_AVAILABLE", "surveillance is not configured")
    return ok(await asyncio.to_thread(desk.report, time.time_ns()))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/admin/surveillance/report", get_report)
