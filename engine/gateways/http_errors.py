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
the client gave up); here it fails that body read instead. The pipelined-order refusal
(`QuietRequestHandler._handle_request`, engine/gateways/http_shed.py) leans on a third:
`_handle_request`'s signature and `_drain_helper`, pinned by tests/test_rest_pipeline_shed.py
and by constraints.txt's aiohttp version. Pipelined new orders submitted together
(engine/gateways/http_pipeline.py) lean on the internals named there.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from engine.bad_input_log import BAD_INPUT
from engine.gateways.http_answers import error
from engine.gateways.http_pipeline import Pipeline
from engine.gateways.http_shed import PIPELINED, PipelineShed, plain_order
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


class _Sent:
    """What `_handle_request` returns for an answer already written (aiohttp's loop reads only
    whether the connection stays open)."""

    keep_alive = True


_SENT = _Sent()
_REFUSALS_PER_SEND = 64  # refused pipelined orders written together at most (~13 KB)


class QuietRequestHandler(RequestHandler):
    # engine.observer.Observer; engine.gateways.http_shed.PipelineShed; refusals not yet
    # written; orders started ahead of their turn (engine.gateways.http_pipeline)
    __slots__ = ("observer", "shed", "_refusals", "pipeline")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.observer: Observer = NULL_OBSERVER
        self.shed: PipelineShed | None = None
        self._refusals: list[bytes] = []
        self.pipeline = Pipeline()

    async def _handle_request(self, request, start_time, request_handler):
        early = self.pipeline.take(request)
        if early is not None and early.refusal is not None:
            return await self._refuse(request, early.refusal)
        if self._refusals:  # answers go out in request order
            await self._write_refusals()
        if early is not None:  # started ahead of its turn: its answer is due now
            request, task = early.request, early.task
            self.pipeline.start(self, request_handler, self.shed)  # the orders queued behind it since
            try:
                return await super()._handle_request(request, start_time, lambda _: task)
            finally:
                request._task = None  # as aiohttp's loop does for its own: no reference cycle
        if self.shed is not None and plain_order(request) and request.content.is_eof():
            # Its handler submits it before yielding (its body is here), so the orders
            # started behind it reach the commit queue after it, in this loop turn. Nothing is
            # in flight ahead of it: the pipeline rule admits it.
            request[PIPELINED] = True
            self.pipeline.start(self, request_handler, self.shed)
        return await super()._handle_request(request, start_time, request_handler)

    async def _refuse(self, request, refusal: bytes):
        """A pipelined order refused before routing: its pre-encoded answer, written with the
        refusals after it in one send (one send each cost half the node's time refusing),
        or now when nothing more is queued (the next answer, or the close, would write it)."""
        request._finish()
        if self.transport is None:
            return _SENT, True
        self._refusals.append(refusal)
        if (
            len(self._refusals) >= _REFUSALS_PER_SEND or not self._messages
        ) and not await self._write_refusals():
            return _SENT, True
        return _SENT, False

    async def _write_refusals(self) -> bool:
        """Send the refusals held, then wait while the client is not reading (as aiohttp does
        for any answer). False when the connection is gone."""
        self._send_refusals()
        try:
            await self._drain_helper()
        except ConnectionError:
            return False
        return True

    def _send_refusals(self) -> None:
        refusals, self._refusals = self._refusals, []
        transport = self.transport
        if refusals and transport is not None and not transport.is_closing():
            transport.write(b"".join(refusals))

    def close(self) -> None:
        self._send_refusals()
        super().close()

    def force_close(self) -> None:
        self._send_refusals()
        super().force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._refusals = []
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
        queued = len(self._messages)
        super().data_received(data)
        current = self._current_request
        if current is None or len(self._messages) <= queued:
            return
        last = self._messages[-1][0]
        if isinstance(last, _ErrInfo) and not current.content.is_eof():
            # A parse error in the body of the request being handled (a bad chunk): fail
            # its body read (the handler answers 400) rather than queue a second answer.
            self._messages.pop()
            current.content.set_exception(last.exc or BadHttpMessage(last.message))
            current.content.feed_eof()
        elif self.shed is not None and (self.pipeline or current.get(PIPELINED)) and self._request_handler:
            # Behind an admitted order (submitted): deal with the orders this read brought
            # now, not when the start loop reaches them, so they join the next batch or are
            # refused as they arrive.
            self.pipeline.start(self, self._request_handler, self.shed)


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
