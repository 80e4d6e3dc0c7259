"""REST surveillance report (admin key; an ops key reads it too):

    GET /v1/admin/surveillance/report   wash trades, spoofing, layering and price-move
                                        findings; the anomaly model's top accounts; the
                                        indicator scores; the analysis buffer

Unlike the metrics, it names owners and accounts. The analysis runs off the order path in the
desk's worker thread (engine/surveillance_desk.py); this read serves what it last published,
never analysing inline: `analysed_through_seq` and `age_s` say how current it is, `buffer`
how far behind the worker runs.
"""

from __future__ import annotations

from aiohttp import web

from engine.gateways.http_answers import error, ok
from engine.gateways.http_auth import admin_view
from engine.gateways.http_context import CTX


async def get_report(request: web.Request) -> web.Response:
    admin_view(request)
    desk = request.app[CTX].surveillance
    if desk is None or not hasattr(desk, "report"):
        return error(501, "NOT_AVAILABLE", "surveillance is not configured")
    return ok(desk.report())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/admin/surveillance/report", get_report)
