"""Bounded in-flight work per HTTP connection (REST pipelining, WebSocket sessions).

REST: aiohttp answers a connection's pipelined requests in order, parsing up to 32 ahead and
then pausing the socket. A client that keeps more than `MAX_PIPELINE` order-entry requests
queued on one connection gets the excess answered 503 OVERLOADED at once, before its key or
body is read, instead of each waiting its turn behind the others (measured before: REST at
15k/s offered answered in p50 5.6 s). The listener's socket buffers are kept small
(engine.overload), so what a paused connection sends waits in the client, not in the node.

WebSocket: a session with `WS_MAX_IN_FLIGHT` orders submitted and not yet answered is not
read until half of them are (engine.overload.InFlight); aiohttp then stops reading the socket.
"""

from __future__ import annotations

from aiohttp import web

from engine.overload import overloaded_text
from engine.service import Overloaded

MAX_PIPELINE = 16  # order-entry requests one connection may have queued behind the current one
WS_MAX_IN_FLIGHT = 1024  # orders one WebSocket session may have submitted and not yet answered


def pipeline_depth(request: web.Request) -> int:
    """Requests aiohttp has parsed on this connection and not yet started (0 if unknown)."""
    messages = getattr(request.protocol, "_messages", None)  # aiohttp keeps no public count
    return len(messages) if messages is not None else 0


def shed_pipeline(request: web.Request, service) -> None:
    """Raise Overloaded (503 OVERLOADED, Retry-After) when too many requests wait behind this
    one on its connection; counted as a REST overload refusal."""
    depth = pipeline_depth(request)
    if depth >= MAX_PIPELINE:
        service.refused("rest", 1)
        raise Overloaded(
            f"{depth} requests pipelined behind this one (at most {MAX_PIPELINE}); "
            + overloaded_text(service.queued, service.max_queued_commands),
            service.queued,
        )
