"""REST admin endpoints of the risk controls and surveillance (admin key; an ops key reads the GETs):

    GET  /v1/admin/risk                 limits, kill switches, halts
    PUT  /v1/admin/risk/limits          set (or, all zero, remove) the limits of one scope
    POST /v1/admin/risk/kill-switch     engage or release a kill switch
    POST /v1/admin/risk/halt            halt or resume trading in a symbol
    GET  /v1/admin/surveillance         anomaly scores, top accounts per kind

Changes are journaled commands; the reply carries their events (or the core's rejection).
Input the core would refuse anyway is answered here first with a 400 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from aiohttp import web

from engine.core.commands import SetKillSwitch, SetRiskLimits, SetTradingHalt
from engine.core.domain import RiskLimits
from engine.gateways.http_answers import error, ok
from engine.gateways.http_auth import admin_action, admin_view
from engine.gateways.http_context import CTX
from engine.gateways.http_requests import INT64_MAX, decode_body
from engine.gateways.rest_orders import submit
from engine.risk_admin import SCOPES, risk_view

ADMIN = "admin"  # requested_by of a change made with the admin key (the audit trail)

Limit = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
Target = Annotated[str, msgspec.Meta(max_length=64)]
Reason = Annotated[str, msgspec.Meta(max_length=200)]
Scope = Literal["venue", "symbol", "account"]


class LimitsRequest(msgspec.Struct, forbid_unknown_fields=True):
    scope: Scope
    target: Target = ""
    max_order_qty: Limit = 0
    max_order_notional: Limit = 0
    price_band_bps: Limit = 0
    max_open_orders: Limit = 0
    max_open_notional: Limit = 0
    max_orders_per_sec: Limit = 0
    max_cancel_ratio: Limit = 0
    max_position: Limit = 0  # net position per account and symbol (engine/core/settlement.py)


class KillSwitchRequest(msgspec.Struct, forbid_unknown_fields=True):
    scope: Scope
    engaged: bool
    target: Target = ""
    reason: Reason = ""
    cancel_orders: bool = True


class HaltRequest(msgspec.Struct, forbid_unknown_fields=True):
    symbol: str
    halted: bool
    reason: Reason = ""


def _target_error(request: web.Request, scope: str, target: str) -> web.Response | None:
    if scope == "venue" and target:
        return error(400, "INVALID_REQUEST", "target must be empty for scope venue", field="target")
    if scope == "account" and not target:
        return error(400, "INVALID_REQUEST", "target must name the account for scope account", field="target")
    if scope == "symbol" and target not in request.app[CTX].engine.instruments:
        return error(400, "INVALID_REQUEST", f"target: unknown symbol {target!r}", field="target")
    return None


async def get_risk(request: web.Request) -> web.Response:
    admin_view(request)
    return ok(risk_view(request.app[CTX].engine))


async def put_limits(request: web.Request) -> web.Response:
    admin_action(request)
    req = await decode_body(request, LimitsRequest)
    problem = _target_error(request, req.scope, req.target)
    if problem is not None:
        return problem
    limits = RiskLimits(
        req.max_order_qty,
        req.max_order_notional,
        req.price_band_bps,
        req.max_open_orders,
        req.max_open_notional,
        req.max_orders_per_sec,
        req.max_cancel_ratio,
        req.max_position,
    )
    cmd = SetRiskLimits(SCOPES[req.scope], req.target, limits, requested_by=ADMIN)
    return await submit(request, cmd)


async def post_kill_switch(request: web.Request) -> web.Response:
    admin_action(request)
    req = await decode_body(request, KillSwitchRequest)
    problem = _target_error(request, req.scope, req.target)
    if problem is not None:
        return problem
    cmd = SetKillSwitch(
        SCOPES[req.scope], req.target, req.engaged, req.reason, req.cancel_orders, requested_by=ADMIN
    )
    return await submit(request, cmd)


async def post_halt(request: web.Request) -> web.Response:
    admin_action(request)
    req = await decode_body(request, HaltRequest)
    if req.symbol not in request.app[CTX].engine.instruments:
        return error(400, "INVALID_REQUEST", f"symbol: unknown symbol {req.symbol!r}", field="symbol")
    cmd = SetTradingHalt(req.symbol, req.halted, req.reason, requested_by=ADMIN)
    return await submit(request, cmd)


async def get_surveillance(request: web.Request) -> web.Response:
    admin_view(request)
    surveillance = request.app[CTX].surveillance
    if surveillance is None:
        return error(501, "NOT_AVAILABLE", "surveillance is not configured")
    return ok(surveillance.summary())  # as the worker last published it


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/admin/risk", get_risk)
    app.router.add_put("/v1/admin/risk/limits", put_limits)
    app.router.add_post("/v1/admin/risk/kill-switch", post_kill_switch)
    app.router.add_post("/v1/admin/risk/halt", post_halt)
    app.router.add_get("/v1/admin/surveillance", get_surveillance)
