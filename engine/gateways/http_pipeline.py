"""A REST connection's pipelined new orders: admitted up to a bound in flight and submitted
together, refused beyond it as they are read, every answer in request order.

aiohttp handles a connection's requests one at a time: each order awaited its commit before
the next one on the connection was even routed, so a connection put at most one order in
each commit cycle (32 connections: batches of at most 32, goodput capped near 32 per cycle).
And every parsed request holds a slot in its queue (`_messages`, 32 slots) until its answer
is written, refused ones included, so a connection whose queue is full is not read: the
client's later orders waited in the socket buffers, and their latency with them (session 8:
acked p99 3-6 s at 8-32k/s offered; BENCHMARKS.md "Session 8: REST under overload").

Here, as each read is parsed (`Pipeline.received`, from the handler's data_received), every
plain new order (`http_shed.plain_order`, whole body read) is dealt with at once:
- admitted while fewer than MAX_ORDERS_IN_FLIGHT of the connection's orders are in flight
  (admitted and not yet answered); an admitted order with only admitted orders ahead of it is
  started
  (`start`: a task running the app's handler: middleware, key, decode, submit), so the
  connection's orders reach the commit queue in this turn of the event loop, in the order
  sent, and share a batch; its answer is written when aiohttp's loop reaches its request;
- refused beyond the bound, or while the commit queue refuses new orders
  (`ExchangeService.refuses_orders`, the rule every gateway sheds by): its pre-encoded 503
  OVERLOADED (`http_shed.PipelineShed`) is taken out of aiohttp's queue (so the connection
  is read as fast as the client sends) and held as a trailer of the request before it,
  written right after that request's answer (`answered`): in request order, without
  waiting for anything but the answers ahead of it.
While the connection cannot admit one, a plain new order is refused so before it is even
parsed, from its raw bytes (engine/gateways/http_raw.py, http_errors.QuietRequestHandler._read),
when its framing is beyond doubt; the same bytes, held and counted the same way.
Anything else (a cancel, an amend, a read, an order without its whole body) keeps its turn:
it waits for every request before it, and no order behind it is started before it is
answered (so a cancel sees the orders sent before it, and none sent after). A request that
closes the connection, an upgrade, or one aiohttp could not parse ends the dealing for the
connection: what follows goes the ordinary way. Refusals held past `HELD_BYTES` (a client
not reading its answers) pause reading the socket until they are written.

It leans on aiohttp 3.14 internals (pinned by constraints.txt and by
tests/test_rest_pipeline_internals.py): `RequestHandler._messages`, the deque of parsed
(message, payload) pairs (`_ErrInfo` for one that did not parse) that its `start` loop pops
in order; `_parser.message_consumed()`, which frees the parser's slot of a message taken
out of that queue (the parser stops at 32 unconsumed); `_request_factory` (None once the
connection is lost) and `_task_handler`, with which that loop builds each request;
`_buffer_paused`, `_reading_paused`, `_pause_transport_reading` and
`_resume_transport_reading`/`_resume_reading_for_buffer` (BaseProtocol's read pauses); a
request's `_message`, to know it again; and, to answer a run of started orders whose
answers are ready without a pass of that loop each (`ready`), `_force_close`,
`_msg_queue_resume_size` and `_resume_reading_if_drained`, which that loop uses as it pops;
and `_waiter`, the future that loop awaits while the queue is empty, `_upgraded` and
`_payload_parser` (engine/gateways/http_errors.py wakes the loop itself after a read is
dealt with); and `_keepalive_timeout` and `_next_keepalive_close_time`, to push the
keep-alive deadline back for a read whose orders were refused (`refused_read`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, cast

from aiohttp.http import RawRequestMessage, StreamWriter
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest

from engine.gateways.http_raw import Framer
from engine.gateways.http_shed import MAX_ORDERS_IN_FLIGHT, PIPELINED, PipelineShed, plain_order

Handler = Callable[[BaseRequest], Coroutine[Any, Any, Any]]
# Refusal bytes one connection may hold for answers not yet written before it is no longer
# read (~300 refusals): a pipelining client that does not read its answers is pushed back
# (TCP), not buffered for.
HELD_BYTES = 64 * 1024


def _retrieved(task: asyncio.Task) -> None:
    # Its answer is awaited when its turn comes; if the connection goes first, nobody
    # awaits it, and an error it raised must not be logged as never retrieved.
    if not task.cancelled():
        task.exception()


def refused_read(handler: RequestHandler, shed: PipelineShed, n: int) -> None:
    """n orders of one read refused (as parsed, or from raw bytes): counted, and the
    connection's keep-alive deadline pushed back as an answered request pushes it. aiohttp
    only does that as its loop answers a request, which a refusal never passes through: a
    client whose every order was refused for `http_idle_s` (the commit queue refusing) was
    closed as idle while it sent."""
    shed.count(n)
    if handler._keepalive_timeout:
        handler._next_keepalive_close_time = asyncio.get_running_loop().time() + handler._keepalive_timeout


class Early:
    """An admitted new order started ahead of its turn (`task` builds its answer)."""

    __slots__ = ("request", "task")

    def __init__(self, request: BaseRequest, task: asyncio.Task) -> None:
        self.request, self.task = request, task


class Pipeline:
    """One connection's pipelined new orders: those admitted and not yet answered, those
    started ahead of their turn, and the refusals held until the answer before each is
    written. Messages are known by id(): each is alive (in aiohttp's queue, or the request
    being answered holds it) until its answer is written, when it is forgotten here."""

    __slots__ = (
        "admitted",
        "early",
        "last",
        "trailers",
        "held_bytes",
        "held",
        "ordinary",
        "framing",
        "framer",
        "carry",
        "owed",
        "fed",
    )

    def __init__(self) -> None:
        self.admitted: set[int] = set()  # each admitted order's message
        # the admitted orders started ahead of their turn, by message: in aiohttp's queue,
        # or (one) just taken off it by its loop and not yet handed to _handle_request
        self.early: dict[int, Early] = {}
        self.last: object | None = None  # the last request queued here, until it is answered
        # (the message whose answer they follow, refusal bytes), in request order
        self.trailers: deque[tuple[object, list[bytes]]] = deque()
        self.held_bytes = 0
        self.held = False  # reading paused for refusals held (HELD_BYTES)
        self.ordinary = False  # dealing ended: a closing, upgrade or unparsable request came
        # Raw framing (engine.gateways.http_raw, QuietRequestHandler._read): on until a
        # request outside its grammar; a head not all read yet, kept from the parser; the
        # bytes of a framed request still to go to the parser; the requests given to it whole.
        self.framing = True
        self.framer = Framer()
        self.carry = b""
        self.owed = 0
        self.fed = 0

    def full(self) -> bool:
        """The bound holds: a plain new order read now is refused."""
        return len(self.admitted) >= MAX_ORDERS_IN_FLIGHT

    def is_admitted(self, request: BaseRequest) -> bool:
        return id(request._message) in self.admitted

    def take(self, request: BaseRequest) -> Early | None:
        """The started order `request` was built from (aiohttp's loop reached it), or None."""
        return self.early.pop(id(request._message), None) if self.early else None

    def ready(self, handler: RequestHandler) -> Early | None:
        """The started order at the front of aiohttp's queue if its answer is ready, taken
        off the queue as aiohttp's loop would take it (its parser slot freed, reading
        resumed if the queue held it), to be answered by the caller; else None."""
        messages = handler._messages
        if not messages or not self.early or handler._parser is None or handler._force_close:
            return None
        key = id(messages[0][0])
        early = self.early.get(key)
        if early is None or not early.task.done():
            return None
        messages.popleft()
        del self.early[key]
        handler._parser.message_consumed()
        if handler._buffer_paused and len(messages) <= handler._msg_queue_resume_size:
            handler._resume_reading_if_drained()
        return early

    def received(self, handler: RequestHandler, queued: int, shed: PipelineShed) -> None:
        """Deal with the requests a read appended to `handler._messages` (those from index
        `queued` on): each plain new order admitted or refused; then parse on as far as the
        refusals freed the parser's slots, and resume reading if aiohttp paused it for a
        queue the refusals have since emptied."""
        messages = handler._messages
        total = 0
        queue_refuses: bool | None = None  # the commit queue's rule, asked once per read
        while True:
            fresh = [messages.pop() for _ in range(len(messages) - queued)]
            refused = 0
            admitted = self.admitted
            for item in reversed(fresh):
                message, payload = item
                if self.ordinary or isinstance(message, _ErrInfo) or message.should_close or message.upgrade:
                    self.ordinary = True  # what follows may not be answered on this connection
                elif plain_order(message) and payload.is_eof():
                    if queue_refuses is None:
                        queue_refuses = shed.service.refuses_orders(1)
                    if not queue_refuses and not self.full():
                        admitted.add(id(message))
                    elif (refusal := shed.refusal(message, queue_refuses)) is not None:
                        if (parser := handler._parser) is not None:  # its slot: the parser reads on
                            parser.message_consumed()
                        self.hold(handler, refusal)
                        refused += 1
                        continue
                messages.append(item)
                self.last = message
            total += refused
            if not refused or handler._parser is None:
                break
            queued = len(messages)
            RequestHandler.data_received(handler, b"")  # the rest of the read, if the parser stopped
            if len(messages) == queued:
                break
        if total:
            refused_read(handler, shed, total)
        if handler._buffer_paused and len(messages) < handler._max_msg_queue_size and not self.held:
            handler._resume_reading_for_buffer()

    def hold(self, handler: RequestHandler, refusal: bytes) -> None:
        """Hold `refusal` until the answer of the request before it is written: the last
        one queued, else the last one aiohttp's loop took off the queue (being answered, or
        about to be) if not answered yet; with none unanswered it is written now."""
        messages = handler._messages
        before = messages[-1][0] if messages else self.last
        if before is None:
            transport = handler.transport
            if transport is not None and not transport.is_closing():
                transport.write(refusal)
            return
        trailers = self.trailers
        if trailers and trailers[-1][0] is before:
            trailers[-1][1].append(refusal)
        else:
            trailers.append((before, [refusal]))
        self.held_bytes += len(refusal)
        if self.held_bytes > HELD_BYTES and not self.held:
            self.held = True
            handler._pause_transport_reading()

    def answered(self, handler: RequestHandler, request: BaseRequest) -> bool:
        """`request`'s answer is written: count it out of the bound and write the refusals
        that follow it. True when some were written (the caller waits while the client is
        not reading)."""
        message = request._message
        self.admitted.discard(id(message))
        if self.last is message:
            self.last = None
        trailers = self.trailers
        if not trailers or trailers[0][0] is not message:
            return False
        _, refusals = trailers.popleft()
        self.held_bytes -= sum(len(r) for r in refusals)
        transport = handler.transport
        if transport is not None and not transport.is_closing():
            transport.write(b"".join(refusals))
        if self.held and self.held_bytes <= HELD_BYTES // 2:
            self.held = False
            if not handler._reading_paused and not handler._buffer_paused:
                handler._resume_transport_reading()
        return True

    def start(self, handler: RequestHandler, request_handler: Handler) -> None:
        """Start the admitted orders queued behind the request being handled (which must be
        an admitted order, so that everything ahead of them is submitted first), up to the
        first request that is not one; those started already are passed over."""
        factory = handler._request_factory  # None once the connection is lost
        if factory is None or handler.transport is None:
            return
        early = self.early
        admitted = self.admitted
        loop = asyncio.get_running_loop()
        for message, payload in handler._messages:
            key = id(message)
            if key in early:
                continue
            if key not in admitted:
                return
            # Only parsed messages are admitted, and the handler's task runs this very loop.
            raw = cast(RawRequestMessage, message)
            request = factory(
                raw, payload, handler, StreamWriter(handler, loop), cast(asyncio.Task, handler._task_handler)
            )
            request[PIPELINED] = True
            task: asyncio.Task = loop.create_task(request_handler(request))
            task.add_done_callback(_retrieved)
            early[key] = Early(request, task)

    def cancel(self) -> None:
        """The connection is gone: nothing started will be answered (a task not yet run
        submits nothing; one awaiting its commit stops waiting, as aiohttp's own handler
        would with handler cancellation)."""
        for e in self.early.values():
            e.task.cancel()
        self.early.clear()
        self.admitted.clear()
        self.trailers.clear()
        self.held_bytes = 0
        self.last = None
        self.framing, self.carry = False, b""
