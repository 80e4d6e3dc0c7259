"""Bounded in-flight work per HTTP connection (REST pipelining, WebSocket sessions).

REST: aiohttp answers a connection's pipelined requests in order, parsing up to 32 ahead and
then pausing the socket. A client that keeps more than `MAX_PIPELINE` order-entry requests
queued on one connection gets the excess answered 503 OVERLOADED at once, before its key or
body is read, instead of each waiting its turn behind the others (measured before: REST at
15k/s offered answered in p50 5.6 s). Plain new orders (`plain_order`) have their own form
of the rule (engine.gateways.http_pipeline): up to MAX_PIPELINE of a connection's are
submitted together, ahead of their turn, and one parsed while that many are in flight is
refused.
The listener's socket buffers are kept small (engine.overload), so what a paused connection
sends waits in the client, not in the node.

A refused new order (POST /v1/orders, the flood's request) is answered from pre-encoded bytes
written straight to the connection (`PipelineShed`), before aiohttp's routing, middleware and
response machinery: that cycle made a refusal cost about what an accepted order does, so a
pipelining client at 4x capacity had the node spend itself refusing (BENCHMARKS.md, session 7).
Other order-entry routes keep the same rule through the middleware (`shed_pipeline`).

WebSocket: a session with `WS_MAX_IN_FLIGHT` (engine.overload) orders submitted and not yet
answered is not read until half of them are (engine.overload.InFlight), and its socket is
paused at once (`HeldSocket`): left to aiohttp, the socket was read on into aiohttp's message
queue (paused only past 512 KiB, counted with 128 B per message: ~1,800 orders at 4C), and each
of those orders waited, unseen by any rule, behind the bound's (BENCHMARKS.md "Session 8:
WebSocket p99 at 4C").
"""

from __future__ import annotations

import json

from aiohttp import HttpVersion11, web
from aiohttp.web_request import BaseRequest

from engine.gateways.http_auth import api_key
from engine.gateways.http_context import request_trace_id
from engine.overload import OVERLOADED, RETRY_AFTER_S, overloaded_text
from engine.service import Overloaded

MAX_PIPELINE = 16  # order-entry requests one connection may have queued behind the current one
ORDERS_PATH = "/v1/orders"  # where new orders are posted (http_app registers the route from here)
# A plain new order the pipeline rule admitted (engine.gateways.http_pipeline: fewer than
# MAX_PIPELINE in flight ahead of it), so the requests queued behind it do not refuse it.
PIPELINED = web.RequestKey("pipelined", bool)


class HeldSocket:
    """Pauses an upgraded aiohttp connection's socket while its WebSocket session's in-flight
    bound holds, so what the client sends waits in the kernel's small buffers and then in the
    client (TCP backpressure), not in aiohttp's queue. Only a pause made here is undone here:
    aiohttp pauses the same socket when its own queue is full, and resumes it as that drains."""

    __slots__ = ("held", "protocol")

    def __init__(self, protocol) -> None:
        self.protocol = protocol  # aiohttp's RequestHandler (a BaseProtocol), or None
        self.held = False

    def hold(self) -> None:
        protocol = self.protocol
        if protocol is not None and not protocol._reading_paused:  # aiohttp has no public flag
            protocol.pause_reading()
            self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            if self.protocol._reading_paused:
                self.protocol.resume_reading()


def pipeline_depth(request: web.Request) -> int:
    """Requests aiohttp has parsed on this connection and not yet started (0 if unknown, or
    for a request started ahead of its turn)."""
    if request.get(PIPELINED):
        return 0
    messages = getattr(request.protocol, "_messages", None)  # aiohttp keeps no public count
    return len(messages) if messages is not None else 0


def plain_order(request: BaseRequest) -> bool:
    """A new order whose answer may be written while its connection stays open and without
    an interim answer: POST /v1/orders over HTTP/1.1 keep-alive, no Expect (the requests a
    pipeline refuses cheaply, and starts ahead of their turn)."""
    return (
        request.method == "POST"
        and request.path == ORDERS_PATH
        and request.version == HttpVersion11
        and request.keep_alive
        and "Expect" not in request.headers
    )


def too_deep(depth: int) -> bool:
    """The pipeline rule: a request with `depth` requests queued behind it is refused."""
    return depth >= MAX_PIPELINE


def shed_pipeline(request: web.Request, service) -> None:
    """Raise Overloaded (503 OVERLOADED, Retry-After) when too many requests wait behind this
    one on its connection; counted as a REST overload refusal."""
    depth = pipeline_depth(request)
    if too_deep(depth):
        service.refused("rest", 1)
        raise Overloaded(
            f"{depth} requests pipelined behind this one (at most {MAX_PIPELINE}); "
            + overloaded_text(service.queued, service.max_queued_commands),
            service.queued,
        )


_BODY = json.dumps(
    {
        "error": {
            "code": OVERLOADED,
            "message": f"more than {MAX_PIPELINE} requests pipelined on this connection "
            f"(orders in flight); not accepted, retry in {RETRY_AFTER_S} s",
        }
    },
    separators=(",", ":"),
).encode()
_HEAD = (
    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    f"Content-Length: {len(_BODY)}\r\nRetry-After: {RETRY_AFTER_S}\r\nX-Trace-Id: "
).encode()


class PipelineShed:
    """The cheap refusal of a pipelined new order beyond the connection's MAX_PIPELINE in
    flight, asked by engine.gateways.http_pipeline before the request is routed."""

    __slots__ = ("service",)

    def __init__(self, service) -> None:
        self.service = service

    def refusal(self, request: BaseRequest) -> bytes | None:
        """The bytes refusing `request` (counted as a REST overload refusal), or None when
        it must go the ordinary way: not a plain new order (`plain_order`: its connection
        must stay open as these bytes leave it), or a request without a key (the
        middleware answers it as any unauthenticated one)."""
        if not plain_order(request) or not api_key(request):
            return None
        self.service.refused("rest", 1)
        return _HEAD + request_trace_id(request).encode() + b"\r\n\r\n" + _BODY
