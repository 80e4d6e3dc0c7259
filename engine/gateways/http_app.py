"""The REST/WebSocket app: every route, wired in one place. The handlers live by area
(rest_orders, rest_market, rest_admin, http_controls for the risk controls, ws_session for
/v1/ws) and share the gateway's common modules (http_context, http_requests, http_auth,
http_middleware, http_answers)."""

from __future__ import annotations

from aiohttp import web

from engine.gateways.http_context import CTX, MAX_BODY, SESSIONS, GatewayContext
from engine.gateways.http_controls import add_routes as add_risk_routes
from engine.gateways.http_middleware import json_errors
from engine.gateways.http_shed import ORDERS_PATH
from engine.gateways.landing import add_routes as add_landing_routes
from engine.gateways.rest_accounts import add_routes as add_account_routes
from engine.gateways.rest_admin import (
    admin_automation,
    admin_automation_audit,
    admin_cluster,
    admin_cluster_step_down,
    admin_faults,
    admin_snapshot,
    admin_stats,
)
from engine.gateways.rest_market import (
    get_book,
    get_candles,
    get_instruments,
    get_ticker,
    get_trades,
    healthz,
    metrics_endpoint,
    openapi,
    readyz,
)
from engine.gateways.rest_orders import (
    cancel_all,
    delete_order,
    delete_order_by_client_id,
    get_order,
    get_order_by_client_id,
    get_order_trace,
    list_orders,
    patch_order,
    post_order,
)
from engine.gateways.rest_risk_audit import add_routes as add_risk_audit_routes
from engine.gateways.rest_surveillance import add_routes as add_surveillance_routes
from engine.gateways.ws_session import websocket


def build_app(ctx: GatewayContext, serve_metrics: bool = True) -> web.Application:
    """The REST/WebSocket app; `serve_metrics` False when /metrics has its own listener
    (engine/gateways/metrics_listener.py)."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[json_errors])
    app[CTX] = ctx
    app[SESSIONS] = set()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/v1/openapi.json", openapi)
    if serve_metrics:
        app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_post(ORDERS_PATH, post_order)
    app.router.add_get("/v1/orders", list_orders)
    app.router.add_delete("/v1/orders", cancel_all)
    app.router.add_get("/v1/orders/{order_id}", get_order)
    # Before the trace route, which would otherwise take the client order id "trace".
    app.router.add_get("/v1/orders/by-client-id/{client_order_id}", get_order_by_client_id)
    app.router.add_get("/v1/orders/{order_id}/trace", get_order_trace)
    app.router.add_delete("/v1/orders/{order_id}", delete_order)
    app.router.add_patch("/v1/orders/{order_id}", patch_order)
    app.router.add_delete("/v1/orders/by-client-id/{client_order_id}", delete_order_by_client_id)
    app.router.add_get("/v1/book/{symbol}", get_book)
    app.router.add_get("/v1/trades/{symbol}", get_trades)
    app.router.add_get("/v1/candles/{symbol}", get_candles)
    app.router.add_get("/v1/ticker/{symbol}", get_ticker)
    app.router.add_get("/v1/instruments", get_instruments)
    app.router.add_post("/v1/admin/snapshot", admin_snapshot)
    app.router.add_get("/v1/admin/stats", admin_stats)
    app.router.add_post("/v1/admin/automation", admin_automation)
    app.router.add_get("/v1/admin/automation/audit", admin_automation_audit)
    app.router.add_post("/v1/admin/faults", admin_faults)
    app.router.add_get("/v1/admin/cluster", admin_cluster)
    app.router.add_post("/v1/admin/cluster/step-down", admin_cluster_step_down)
    app.router.add_get("/v1/ws", websocket)
    add_risk_routes(app)
    add_surveillance_routes(app)
    add_account_routes(app)
    add_risk_audit_routes(app)
    add_landing_routes(app)  # / and /docs/NAME
    return app
