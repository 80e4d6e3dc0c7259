"""The JSON answers of the HTTP gateway, in one place: every error is
`{"error": {"code": ..., "message": ...}}`, every success a JSON body.

Their own module so the middleware (http_errors, http_limits), the admin routes
(http_controls) and the gateway (http) share one format without importing each other.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

_json = msgspec.json.Encoder()


def error(status: int, code: str, message: str, retry_after: int = 1, **extra) -> web.Response:
    body = {"error": {"code": code, "message": message, **extra}}
    headers = {"Retry-After": str(retry_after)} if status in (429, 503) else None
    return web.Response(
        status=status, body=_json.encode(body), content_type="application/json", headers=headers
    )


def ok(body, status: int = 200) -> web.Response:
    return web.Response(status=status, body=_json.encode(body), content_type="application/json")
