"""A REST connection's pipelined new orders submitted together, answered in order.

aiohttp handles a connection's requests one at a time: each order awaited its commit before
the next one on the connection was even routed, so a connection put at most one order in
each commit cycle. With the load generator's 32 connections the batches held at most 32
orders, and goodput at 2C stopped near 32 per cycle (4-5k/s here) with a third of a core
idle, while the orders queued behind each one were refused for pipelining too deep
(BENCHMARKS.md, "Session 8: REST under overload").

Now, when a plain new order (`http_shed.plain_order`: POST /v1/orders, HTTP/1.1 keep-alive,
no Expect) whose body is read in full is handled, the plain new orders queued right behind
it are started as well, each a task running the app's handler (middleware, key, decode,
submit) on its own request: they reach the commit queue in this turn of the event loop, in
the order sent, and share a batch. Each answer is written when aiohttp's loop reaches its
request, in order, as if handled in turn. The pipeline rule is the same: an order is started
only while fewer than MAX_PIPELINE requests wait behind it (`http_shed.too_deep`); one that
reaches its turn deeper is refused as before. Anything else (a cancel, an amend, a read)
waits its turn, so it sees every order sent before it answered, and stops the starting: no
order behind it starts before it is handled.

It leans on aiohttp internals of `RequestHandler` (pinned by constraints.txt and
tests/test_rest_pipeline.py): the parsed-and-waiting queue `_messages` of (message, payload)
pairs (`_ErrInfo` for one that did not parse), which its `start` loop pops in order;
`_request_factory` (None once the connection is lost) and `_task_handler`, with which that
loop builds each request; and a request's `_message`, to know it again.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from aiohttp.http import StreamWriter
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest

from engine.gateways.http_shed import PIPELINED, plain_order, too_deep

Handler = Callable[[BaseRequest], Awaitable]


def _retrieved(task: asyncio.Task) -> None:
    # Its answer is awaited when its turn comes; if the connection goes first, nobody
    # awaits it, and an error it raised must not be logged as never retrieved.
    if not task.cancelled():
        task.exception()


class Pipeline:
    """The orders of one connection started ahead of their turn: the front of its handler's
    `_messages`, in order, each with its request and the task building its answer."""

    __slots__ = ("started",)

    def __init__(self) -> None:
        self.started: deque[tuple[object, BaseRequest, asyncio.Task]] = deque()

    def __len__(self) -> int:
        return len(self.started)

    def take(self, request: BaseRequest) -> tuple[BaseRequest, asyncio.Task] | None:
        """The request started for the message `request` was built from (its answer's
        task), or None when that message was not started."""
        started = self.started
        if started and started[0][0] is request._message:
            _, early, task = started.popleft()
            return early, task
        return None

    def start(self, handler: RequestHandler, request_handler: Handler) -> None:
        """Start the plain new orders queued behind the request being handled (which must be
        a plain new order, or one started, so that everything ahead of them is submitted
        first), up to the first that is not one, has its body still arriving, or has
        MAX_PIPELINE or more requests behind it."""
        factory = handler._request_factory  # None once the connection is lost
        if factory is None or handler.transport is None:
            return
        messages = handler._messages
        started = self.started
        loop = asyncio.get_running_loop()
        for i in range(len(started), len(messages)):
            message, payload = messages[i]
            if isinstance(message, _ErrInfo) or message.upgrade:
                return
            if too_deep(len(messages) - i - 1) or not payload.is_eof():
                return
            request = factory(message, payload, handler, StreamWriter(handler, loop), handler._task_handler)
            if not plain_order(request):
                return
            request[PIPELINED] = True
            task = loop.create_task(request_handler(request))
            task.add_done_callback(_retrieved)
            started.append((message, request, task))

    def cancel(self) -> None:
        """The connection is gone: nothing started will be answered (a task not yet run
        submits nothing; one awaiting its commit stops waiting, as aiohttp's own handler
        would with handler cancellation)."""
        for _, _, task in self.started:
            task.cancel()
        self.started.clear()
