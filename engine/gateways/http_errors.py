"""Malformed HTTP answered in the JSON error format, quietly.

aiohttp answers a request it cannot parse (bad request line, bad header, bad chunking, a
line beyond 8190 bytes) itself, before any middleware: a text/plain 400 and an ERROR line
with a traceback in the log per request (1,000 such requests wrote 568 KB of log in 1.1 s).
This request handler answers them as every other error (`{"error": {"code", "message"}}`),
counts them in loom_decode_errors and notes them in the bad-input log (one line, then a
summary), never with a traceback.

It leans on two aiohttp internals, pinned by tests/test_http_errors.py: the
`RequestHandler.handle_error` hook, and that a parse error met while a request's body is
being read is queued as a new message (the handler waiting for the body would hang until
the client gave up); here it fails that body read instead. Pipelined new orders
(engine/gateways/http_pipeline.py: admitted and started together, or refused as they are
read) lean on the internals named there, and on `_handle_request`'s signature and
`_drain_helper`; tests/test_rest_pipeline_internals.py and constraints.txt's aiohttp
version pin them, as they pin `_request_count` and `_close`, which the refusals taken
before the parser (`_read`, engine/gateways/http_raw.py) lean on.
"""

from __future__ import annotations

import logging
from typing import cast

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from engine.bad_input_log import BAD_INPUT
from engine.gateways.http_answers import error
from engine.gateways.http_pipeline import Pipeline, refused_read
from engine.gateways.http_raw import DOUBT, INCOMPLETE
from engine.gateways.http_shed import PIPELINED, PipelineShed
from engine.observer import NULL_OBSERVER, Observer

log = logging.getLogger("loom.http")


def describe(exc: BaseException | None) -> tuple[int, str, str]:
    """(status, code, message) for a request aiohttp could not parse. The message names what
    is wrong, never echoing the client's bytes back."""
    if isinstance(exc, LineTooLong):
        return 431, "HEADERS_TOO_LARGE", "the request line or a header is longer than 8190 bytes"
    if isinstance(exc, HttpProcessingError):
        first = (exc.message or "").strip().splitlines()
        what = first[0].rstrip(":") if first else type(exc).__name__
        return 400, "MALFORMED_REQUEST", f"malformed HTTP request: {what}"
    return 400, "MALFORMED_REQUEST", "malformed HTTP request"


class QuietRequestHandler(RequestHandler):
    # engine.observer.Observer; engine.gateways.http_shed.PipelineShed (None: not an
    # order-entry listener); the connection's pipelined new orders (engine.gateways.http_pipeline)
    __slots__ = ("observer", "shed", "pipeline")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.observer: Observer = NULL_OBSERVER
        self.shed: PipelineShed | None = None
        self.pipeline = Pipeline()

    async def _handle_request(self, request, start_time, request_handler):
        pipeline = self.pipeline
        early = pipeline.take(request)
        if early is None and self.shed is not None and pipeline.is_admitted(request):
            # Its handler submits it before yielding (its body is here), so the orders
            # started behind it reach the commit queue after it, in this loop turn.
            request[PIPELINED] = True
            pipeline.start(self, request_handler)
        response, reset = await self._answer(request, start_time, request_handler, early)
        # The started orders queued right behind it whose answers are ready are answered now,
        # in order, rather than one per pass of aiohttp's loop (two event-loop turns each,
        # and a request object built again for each: at 4x capacity a connection's 16
        # answers waited out 32 turns, each parsing every connection's reads).
        while not reset and response.keep_alive and (ready := pipeline.ready(self)) is not None:
            start = self._loop.time() if self._logging_enabled else None
            response, reset = await self._answer(ready.request, start, request_handler, ready)
        return response, reset

    async def _answer(self, request, start_time, request_handler, early):
        """Handle `request` (or await the answer of the order started for it), write its
        answer and the refusals that follow it."""
        if early is not None:  # started ahead of its turn: its answer is due now
            request, task = early.request, early.task
            self.pipeline.start(self, request_handler)  # the admitted orders queued behind it since
            try:
                response, reset = await super()._handle_request(request, start_time, lambda _: task)
            finally:
                request._task = None  # as aiohttp's loop does for its own: no reference cycle
        else:
            response, reset = await super()._handle_request(request, start_time, request_handler)
        if self.pipeline.answered(self, request) and not reset:
            try:  # refusals written after it: wait while the client is not reading, as for any answer
                await self._drain_helper()
            except ConnectionError:
                reset = True
        return response, reset

    def _resume_transport_reading(self) -> None:
        if not self.pipeline.held:  # aiohttp's own resumes wait for the refusals held to go out
            super()._resume_transport_reading()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.pipeline.cancel()
        super().connection_lost(exc)

    def handle_error(self, request, status: int = 500, exc=None, message=None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: an answer is already on the wire
            raise ConnectionError("response already sent; the connection is closed")
        if not isinstance(exc, HttpProcessingError):
            # Not bad input: the json_errors middleware answers every handler error, so this
            # is aiohttp's own failure (or its handler timeout, 504); keep it loud.
            log.error("error serving %s: HTTP %d", request.remote, status, exc_info=exc)
            response = error(status, "INTERNAL" if status == 500 else "TIMEOUT", "internal error (logged)")
        else:
            status, code, text = describe(exc)
            self.observer.decode_error("rest", code)
            BAD_INPUT.note("http", request.remote, text)
            response = error(status, code, text)
        response.force_close()
        return response

    def data_received(self, data: bytes) -> None:
        if self.shed is None or self._upgraded or self._payload_parser is not None:
            self._received(data)
            return
        # aiohttp wakes its loop for any request parsed; a read whose orders are all refused
        # leaves none to handle, and the woken loop would pop an empty queue: it is woken
        # here instead, once the read is dealt with, if a request is left.
        waiter, self._waiter = self._waiter, None
        try:
            if self.pipeline.framing:
                self._read(data)
            else:
                self._received(data)
        finally:
            if waiter is not None:
                self._waiter = waiter
                if self._messages and not waiter.done():
                    waiter.set_result(None)

    def _read(self, data: bytes) -> None:
        """Frame the read into whole requests (engine.gateways.http_raw) and refuse each plain
        new order the connection cannot admit now from its raw bytes, never parsed: held
        behind the answer before it as a parsed refusal is (Pipeline.hold), and counted. The
        rest goes to the parser in order, whole requests only (a head not all here is kept
        for the next read; a framed request's body may be split), so the parser never holds
        part of a request a refusal skips; anything outside the grammar ends the framing."""
        pipeline, shed = self.pipeline, cast(PipelineShed, self.shed)
        if pipeline.carry:
            data, pipeline.carry = pipeline.carry + data, b""
        n = fed_to = len(data)  # the parser gets data[fed_from:fed_to]
        pos = fed_from = refused = 0
        if pipeline.owed:  # the rest of a framed request the parser has the head of
            pos = min(pipeline.owed, n)
            pipeline.owed -= pos
            pipeline.fed += not pipeline.owed
        queue_refuses: bool | None = None  # the commit queue's rule, asked once per read
        frame = pipeline.framer.frame
        while pos < n:
            end, headers = frame(data, pos)
            if end == INCOMPLETE:
                pipeline.carry, fed_to = data[pos:], pos
                break
            if end == DOUBT:
                pipeline.framing = False
                break
            if end > n:
                pipeline.owed = end - n
                break
            if headers is not None:
                if fed_from < pos:  # what precedes it first: it may change the rule
                    self._received(data[fed_from:pos])
                    fed_from = pos
                if queue_refuses is None:
                    queue_refuses = shed.service.refuses_orders(1)
                if self._refuses(queue_refuses) and (refusal := shed.refusal_for(headers, queue_refuses)):
                    pipeline.hold(self, refusal)
                    refused += 1
                    pos = fed_from = end
                    continue
            pipeline.fed += 1
            pos = end
        if fed_from < fed_to:
            self._received(data[fed_from:fed_to])
        if refused:
            refused_read(self, shed, refused)

    def _refuses(self, queue_refuses: bool) -> bool:
        """A plain new order read now, at a request boundary, is refused: the bound holds
        (or the commit queue refuses), and its refusal can be held in request order (the
        parser has emitted every request given to it, none of which ended the dealing)."""
        pipeline = self.pipeline
        if pipeline.ordinary or self._force_close or self._close or self._request_count != pipeline.fed:
            return False
        messages = self._messages
        if messages and isinstance(messages[-1][0], _ErrInfo):
            return False
        return queue_refuses or pipeline.full()

    def _received(self, data: bytes) -> None:
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) <= queued:
            return
        current = self._current_request
        last = self._messages[-1][0]
        if current is not None and isinstance(last, _ErrInfo) and not current.content.is_eof():
            # A parse error in the body of the request being handled (a bad chunk): fail
            # its body read (the handler answers 400) rather than queue a second answer.
            self._messages.pop()
            current.content.set_exception(last.exc or BadHttpMessage(last.message))
            current.content.feed_eof()
            return
        shed, request_handler = self.shed, self._request_handler
        if shed is None or request_handler is None:
            return
        pipeline = self.pipeline
        pipeline.received(self, queued, shed)  # each new order admitted or refused, as it is read
        if pipeline.early or (current is not None and current.get(PIPELINED)):
            # Behind an admitted order (submitted): the admitted orders this read brought
            # are started now, to join the next commit batch.
            pipeline.start(self, request_handler)


class QuietServer(web.Server):
    observer: Observer = NULL_OBSERVER
    shed: PipelineShed | None = None  # the cheap refusal of pipelined orders (order-entry listeners)

    def __call__(self) -> RequestHandler:
        handler = QuietRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.observer = self.observer
        handler.shed = self.shed
        return handler


class QuietAppRunner(web.AppRunner):
    """An AppRunner whose connections use QuietRequestHandler."""

    def __init__(
        self,
        app: web.Application,
        observer: Observer = NULL_OBSERVER,
        shed: PipelineShed | None = None,
        **kwargs,
    ) -> None:
        super().__init__(app, **kwargs)
        self._observer = observer
        self._shed = shed

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        server = QuietServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            **plain._kwargs,
        )
        server.observer = self._observer
        server.shed = self._shed
        return server
