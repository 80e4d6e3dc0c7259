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

from engine.gateways.http_shed import MAX_PIPELINE, PIPELINED, PipelineShed, plain_order

Handler = Callable[[BaseRequest], Awaitable]


def _retrieved(task: asyncio.Task) -> None:
    # Its answer is awaited when its turn comes; if the connection goes first, nobody
    # awaits it, and an error it raised must not be logged as never retrieved.
    if not task.cancelled():
        task.exception()


class Early:
    """A new order dealt with ahead of its turn: started (`task` builds its answer) or
    refused (`refusal`, its pre-encoded answer)."""

    __slots__ = ("message", "refusal", "request", "task")

    def __init__(self, message, request: BaseRequest, task: asyncio.Task | None, refusal: bytes | None):
        self.message, self.request, self.task, self.refusal = message, request, task, refusal


class Pipeline:
    """The new orders of one connection dealt with ahead of their turn: the front of its
    handler's `_messages`, in order."""

    __slots__ = ("early",)

    def __init__(self) -> None:
        self.early: deque[Early] = deque()

    def __len__(self) -> int:
        return len(self.early)

    def take(self, request: BaseRequest) -> Early | None:
        """What was done early with the message `request` was built from, or None."""
        early = self.early
        if early and early[0].message is request._message:
            return early.popleft()
        return None

    def in_flight(self) -> int:
        """Orders started and not yet answered by the handler (submitted, or about to be)."""
        return sum(1 for e in self.early if e.task is not None and not e.task.done())

    def start(self, handler: RequestHandler, request_handler: Handler, shed: PipelineShed) -> None:
        """Deal with the plain new orders queued behind the request being handled (which
        must be a plain new order, or one dealt with, so that everything ahead of them is
        submitted first), up to the first that is not one or has its body still arriving:
        each is started while fewer than MAX_PIPELINE are in flight, else refused."""
        factory = handler._request_factory  # None once the connection is lost
        if factory is None or handler.transport is None:
            return
        messages = handler._messages
        early = self.early
        loop = asyncio.get_running_loop()
        flying = self.in_flight()
        for i in range(len(early), len(messages)):
            message, payload = messages[i]
            if isinstance(message, _ErrInfo) or message.upgrade or not payload.is_eof():
                return
            request = factory(message, payload, handler, StreamWriter(handler, loop), handler._task_handler)
            if not plain_order(request):
                return
            if flying >= MAX_PIPELINE:
                refusal = shed.refusal(request)
                if refusal is not None:  # None: no key, answered by the middleware (started)
                    early.append(Early(message, request, None, refusal))
                    continue
            request[PIPELINED] = True
            task = loop.create_task(request_handler(request))
            task.add_done_callback(_retrieved)
            early.append(Early(message, request, task, None))
            flying += 1

    def cancel(self) -> None:
        """The connection is gone: nothing started will be answered (a task not yet run
        submits nothing; one awaiting its commit stops waiting, as aiohttp's own handler
        would with handler cancellation)."""
        for e in self.early:
            if e.task is not None:
                e.task.cancel()
        self.early.clear()
