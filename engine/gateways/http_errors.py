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
the client gave up); here it fails that body read instead.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from engine.bad_input_log import BAD_INPUT
from engine.gateways.http_answers import error
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
    __slots__ = ("observer",)  # engine.observer.Observer

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


class QuietServer(web.Server):
    observer: Observer = NULL_OBSERVER

    def __call__(self) -> RequestHandler:
        handler = QuietRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.observer = self.observer
        return handler


class QuietAppRunner(web.AppRunner):
    """An AppRunner whose connections use QuietRequestHandler."""

    def __init__(self, app: web.Application, observer: Observer = NULL_OBSERVER, **kwargs) -> None:
        super().__init__(app, **kwargs)
        self._observer = observer

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
        return server
