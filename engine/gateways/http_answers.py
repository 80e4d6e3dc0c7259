"""The JSON answers of the HTTP gateway, in one place: every error is
`{"error": {"code": ..., "message": ...}}`, every success a JSON body.

Their own module so the middleware (http_errors, http_limits), the REST handlers
(rest_*, http_controls) and the WebSocket session (ws_session) share one format without importing each other.
"""

from __future__ import annotations

import math

import msgspec
from aiohttp import web

from engine.core.events import OrderRejected
from engine.gateways.json_events import event_json
from engine.reason_texts import reject_code, reject_status, reject_text
from engine.service import NotLeader

_json = msgspec.json.Encoder()


def error(status: int, code: str, message: str, retry_after: int = 1, **extra) -> web.Response:
    body = {"error": {"code": code, "message": message, **extra}}
    headers = {"Retry-After": str(retry_after)} if status in (429, 503) else None
    return web.Response(
        status=status, body=_json.encode(body), content_type="application/json", headers=headers
    )


def ok(body, status: int = 200) -> web.Response:
    return web.Response(status=status, body=_json.encode(body), content_type="application/json")


def not_leader_fields(exc: NotLeader) -> dict:
    """A NOT_LEADER answer's fields (REST error body, WebSocket error): the message, the leader
    (its url, fix and binary endpoints) or, during an election, election true and the
    seconds to wait."""
    return {
        "message": exc.text("rest"),
        "leader": exc.leader,
        "election": exc.election,
        "retry_after_s": exc.retry_after_s,
    }


def not_leader(exc: NotLeader) -> web.Response:
    """503 NOT_LEADER; Retry-After is the election's wait, rounded up (1 with a leader known)."""
    fields = not_leader_fields(exc)
    message = fields.pop("message")
    return error(503, "NOT_LEADER", message, max(1, math.ceil(exc.retry_after_s)), **fields)


def rejection(ev: OrderRejected) -> web.Response:
    return error(
        reject_status(ev.reason),
        reject_code(ev.reason),
        reject_text(ev.reason),
        events=[event_json(ev)],
    )
