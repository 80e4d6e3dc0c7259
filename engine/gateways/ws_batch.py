"""A WebSocket session's orders submitted a read at a time, not one by one.

aiohttp hands a session its messages one at a time, but every message a socket read brought
is handed over in one turn of the event loop (the handler's `receive` does not suspend
while its queue holds messages). Submitted one by one, each order was its own commit-queue
entry: a pending record, a callback, and per submission an order-to-ack and a
sequencer-wait observation with an exemplar trace id, which alone were about a quarter of
the node's main thread at 4C (py-spy, BENCHMARKS.md "Session 8: WebSocket and FIX under
overload"). The binary and FIX gateways already submit a read's orders together.

`OrderBatch` collects a session's new orders and amends of one loop turn and submits them
as one command list when the loop next runs its callbacks (`call_soon`), before the
session's task runs again. Anything else the session submits (cancels, which have their
own, higher overload bound) first flushes what is collected, so commands still reach the
queue in the order the client sent them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class OrderBatch:
    """Orders of one session waiting for the end of the loop turn. `submit(req_ids,
    commands)` hands them to the exchange (and answers a refusal)."""

    __slots__ = ("_scheduled", "_submit", "commands", "req_ids")

    def __init__(self, submit: Callable[[list, list], None]) -> None:
        self._submit = submit
        self.req_ids: list = []
        self.commands: list = []
        self._scheduled = False

    def __len__(self) -> int:
        return len(self.commands)

    def add(self, req_id, command) -> None:
        self.req_ids.append(req_id)
        self.commands.append(command)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_scheduled)

    def _flush_scheduled(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Submit what is collected now (nothing if nothing is)."""
        if not self.commands:
            return
        req_ids, commands = self.req_ids, self.commands
        self.req_ids, self.commands = [], []
        self._submit(req_ids, commands)
