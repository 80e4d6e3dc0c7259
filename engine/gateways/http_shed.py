"""Bounded in-flight work per HTTP connection (REST pipelining, WebSocket sessions).

REST: aiohttp answers a connection's pipelined requests in order, parsing up to 32 ahead and
then pausing the socket. Plain new orders (`plain_order`) are bounded by orders in flight
(engine.gateways.http_pipeline): up to MAX_ORDERS_IN_FLIGHT of a connection's are admitted (and
submitted together); one read while that many are in flight is refused 503 OVERLOADED at
once, as it is parsed, from pre-encoded bytes (`PipelineShed`), and leaves aiohttp's queue,
so the connection is read as fast as the client sends. Other order-entry requests (cancel,
amend) keep the depth rule through the middleware (`shed_pipeline`): refused when
MAX_PIPELINE requests wait behind them. The listener's socket buffers are kept small
(engine.overload), so what a paused connection sends waits in the client, not in the node.

A refusal is built from the parsed message's headers alone, before aiohttp's request object,
routing, middleware, key check, JSON decode and response machinery: that cycle made a
refusal cost about what an accepted order does, so a pipelining client at 4x capacity had
the node spend itself refusing (BENCHMARKS.md, session 7).

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
from aiohttp.http import RawRequestMessage

from engine.gateways.http_auth import api_key_in
from engine.gateways.http_context import trace_id_in
from engine.overload import OVERLOADED, RETRY_AFTER_S, overloaded_text
from engine.service import Overloaded

MAX_PIPELINE = 16  # order-entry requests one connection may have queued behind the one handled
# Plain new orders one connection may have in flight (admitted, not yet answered): a wait of
# about 32 x 8 / capacity with the load generator's 32 connections (Little's law; 16 allowed
# a p99 near the 200 ms target at 4x capacity), and 256 orders a commit batch, enough to batch.
MAX_ORDERS_IN_FLIGHT = 8
ORDERS_PATH = "/v1/orders"  # where new orders are posted (http_app registers the route from here)
# A plain new order the pipeline rule admitted (engine.gateways.http_pipeline: fewer than
# MAX_ORDERS_IN_FLIGHT in flight when it was read), so the depth rule does not refuse it.
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


def plain_order(message: RawRequestMessage) -> bool:
    """A new order whose answer may be written while its connection stays open and without
    an interim answer: POST /v1/orders over HTTP/1.1 keep-alive, no Expect, no upgrade (the
    requests a pipeline admits ahead of their turn, or refuses cheaply)."""
    return (
        message.method == "POST"
        and message.version == HttpVersion11
        and not message.should_close
        and not message.upgrade
        and message.url.path == ORDERS_PATH
        and "Expect" not in message.headers
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


def _encoded(why: str) -> tuple[bytes, bytes]:
    """A pre-encoded 503 OVERLOADED for a refused pipelined order: the bytes before its
    X-Trace-Id and those after it."""
    body = json.dumps(
        {"error": {"code": OVERLOADED, "message": f"{why}; not accepted, retry in {RETRY_AFTER_S} s"}},
        separators=(",", ":"),
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: {RETRY_AFTER_S}\r\nX-Trace-Id: "
    ).encode()
    return head, b"\r\n\r\n" + body


IN_FLIGHT_TEXT = f"{MAX_ORDERS_IN_FLIGHT} new orders in flight on this connection"
_IN_FLIGHT = _encoded(IN_FLIGHT_TEXT)
_QUEUE = _encoded("the exchange is overloaded (its commit queue refuses new orders)")


class PipelineShed:
    """The cheap refusal of a pipelined new order read while its connection has
    MAX_ORDERS_IN_FLIGHT in flight, asked by engine.gateways.http_pipeline as it is parsed."""

    __slots__ = ("service",)

    def __init__(self, service) -> None:
        self.service = service

    def refusal(self, message: RawRequestMessage, queue: bool = False) -> bytes | None:
        """The bytes refusing the plain new order `message` (`plain_order`) for its
        connection's orders in flight (or, `queue`, for the commit queue's rule), with
        Retry-After and its own X-Trace-Id; None for a request without a key (the middleware
        answers it as any unauthenticated one). The caller counts what it refused (`count`)."""
        return self.refusal_for(message.headers, queue)

    def refusal_for(self, headers, queue: bool = False) -> bytes | None:
        """`refusal` from a request's headers alone: a parsed message's, or those read from
        its raw bytes before the parser (engine.gateways.http_raw.RawHeaders)."""
        if not api_key_in(headers):
            return None
        head, tail = _QUEUE if queue else _IN_FLIGHT
        return head + trace_id_in(headers).encode() + tail

    def count(self, n: int) -> None:
        """n refusals as REST overload refusals (loom_overload_refusals_total), counted once
        per read: counting each cost a twentieth of the node's time at 4x capacity."""
        self.service.refused("rest", n)
