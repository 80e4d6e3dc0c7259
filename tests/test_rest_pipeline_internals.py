"""The aiohttp internals the REST pipeline leans on (engine/gateways/http_pipeline.py,
engine/gateways/http_errors.py) are still there and still behave so: a failure here means
aiohttp changed under the pin (constraints.txt) and the pipeline must be checked again.

The behaviour that matters most is pinned with aiohttp's own parser: it stops emitting
requests once 32 are parsed and not consumed, and a request taken out of the queue with
`message_consumed()` lets a later `feed_data(b"")` parse on (the pipeline takes refused
orders out that way, so a connection is read as fast as its client sends)."""

from __future__ import annotations

import asyncio
import inspect
import re
from collections import deque
from pathlib import Path

import aiohttp
from aiohttp import web_protocol
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpRequestParser
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest

ROOT = Path(__file__).resolve().parent.parent


def test_aiohttp_is_the_pinned_version():
    pinned = re.search(r"^aiohttp==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert pinned and aiohttp.__version__ == pinned.group(1), (aiohttp.__version__, pinned)


def test_the_request_handler_internals_the_pipeline_names():
    for name in (
        "_messages",
        "_request_factory",
        "_request_handler",
        "_task_handler",
        "_current_request",
        "_force_close",
        "_msg_queue_resume_size",
        "_logging_enabled",
        "_waiter",
        "_payload_parser",
        "_request_count",  # raw refusals wait until the parser has emitted all it was given
        "_close",
        "_keepalive_timeout",  # a refused read pushes the keep-alive deadline back
        "_next_keepalive_close_time",
    ):
        assert name in RequestHandler.__slots__, name
    # ... which the keep-alive check reads again before closing an idle connection
    assert "self._next_keepalive_close_time" in inspect.getsource(RequestHandler._process_keepalive)
    # ... counting each request it emits (engine/gateways/http_errors.py, _refuses)
    assert "self._request_count += 1" in inspect.getsource(RequestHandler.data_received)
    for name in ("_buffer_paused", "_reading_paused", "_paused", "_parser", "_upgraded"):
        assert name in BaseProtocol.__slots__, name
    for name in (
        "_pause_transport_reading",
        "_resume_transport_reading",
        "_resume_reading_for_buffer",
        "_resume_reading_if_drained",
        "_drain_helper",
    ):
        assert callable(getattr(RequestHandler, name)), name
    assert list(inspect.signature(RequestHandler._handle_request).parameters) == [
        "self",
        "request",
        "start_time",
        "request_handler",
    ]
    assert "_message" in BaseRequest.ATTRS  # the message a request was built from
    assert set(_ErrInfo.__annotations__) >= {"status", "exc", "message"}
    assert web_protocol.MAX_MSG_QUEUE_SIZE == 32
    # start() pops the queue from the left and frees the parser's slot as it does
    source = inspect.getsource(RequestHandler.start)
    assert "self._messages.popleft()" in source and "message_consumed()" in source
    # ... after awaiting _waiter while the queue is empty (woken by data_received)
    assert "await self._waiter" in source


def _order(k: int) -> bytes:
    body = b'{"k":%d}' % k
    return b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def test_the_parser_stops_at_32_unconsumed_and_parses_on_once_one_is_consumed():
    async def run() -> None:
        loop = asyncio.get_running_loop()
        protocol = BaseProtocol(loop)
        parser = HttpRequestParser(protocol, loop, 2**16, max_msg_queue_size=web_protocol.MAX_MSG_QUEUE_SIZE)
        queue: deque = deque()
        messages, _, _ = parser.feed_data(b"".join(_order(k) for k in range(40)))
        queue.extend(messages)
        assert len(queue) == 32, "the parser no longer stops at 32 requests not consumed"
        for _ in range(5):  # five refused: taken out, their slots freed
            queue.pop()
            parser.message_consumed()
        messages, _, _ = parser.feed_data(b"")
        assert len(messages) == 5, len(messages)
        assert messages[0][0].path == "/v1/orders" and messages[0][1].is_eof()

    asyncio.run(run())
