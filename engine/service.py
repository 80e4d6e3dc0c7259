"""The asyncio face of a node: gateways submit commands, a single commit loop turns
whatever is waiting into one group-commit batch, and the durable events flow back to
the submitters and out to subscribers (market data, execution reports, the order store).

Batches grow by themselves: while one batch is being written and fdatasync'd the event
loop is busy, so everything that arrives meanwhile forms the next batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.exchange import ExchangeNode

log = logging.getLogger("loom.service")

BatchListener = Callable[[list, list[list]], None]


@dataclass
class _Pending:
    commands: list
    future: asyncio.Future | None = field(repr=False)
    callback: Callable[[list[list]], None] | None = field(default=None, repr=False)


class ExchangeService:
    def __init__(self, node: ExchangeNode, max_batch: int = 4096) -> None:
        self.node = node
        self.max_batch = max_batch
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._listeners: list[BatchListener] = []
        self._task: asyncio.Task | None = None
        self._closing = False
        self.batches = 0
        self.commands = 0
        self.accepting = True

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._commit_loop(), name="commit-loop")

    async def stop(self) -> None:
        """Refuse new work, commit what is queued, then stop the loop."""
        self.accepting = False
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    def add_listener(self, listener: BatchListener) -> None:
        """Called after every durable batch with (commands, events per command)."""
        self._listeners.append(listener)

    # -- submission --------------------------------------------------------------------

    async def submit(self, commands: list) -> list[list]:
        """Queue commands for the next batch; resolves with each command's events once the
        batch is durable and applied."""
        if not self.accepting:
            raise ServiceStopped("the exchange is shutting down")
        if not commands:
            return []
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(commands, future))
        self._wakeup.set()
        return await future

    def enqueue(self, commands: list, callback: Callable[[list[list]], None]) -> None:
        """Like submit, without a future: `callback(events per command)` runs in the commit
        loop once the batch is durable. For pipelined sessions (one order per message)
        where a task or future per order would cost more than the order itself."""
        if not self.accepting:
            raise ServiceStopped("the exchange is shutting down")
        if commands:
            self._queue.append(_Pending(commands, None, callback))
            self._wakeup.set()

    async def submit_one(self, command) -> list:
        return (await self.submit([command]))[0]

    @property
    def queued(self) -> int:
        return sum(len(p.commands) for p in self._queue)

    # -- the commit loop -----------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            taken: list[_Pending] = []
            batch: list = []
            queue = self._queue
            while queue and (not batch or len(batch) + len(queue[0].commands) <= self.max_batch):
                pending = queue.popleft()
                taken.append(pending)
                batch.extend(pending.commands)
            try:
                results = self.node.submit(batch)
            except Exception as exc:  # a broken invariant: crash-only, after telling everyone
                log.critical("commit loop failed on a batch of %d commands", len(batch), exc_info=True)
                # FIX (tests/test_http_gateway.py): with the loop gone, later submissions
                # queued forever while /readyz still said ready. Refuse them instead
                # (ServiceStopped: 503) and report not ready.
                self.accepting = False
                for pending in [*taken, *self._queue]:
                    if pending.future is not None and not pending.future.done():
                        pending.future.set_exception(exc)
                raise
            self.batches += 1
            self.commands += len(batch)
            start = 0
            for pending in taken:
                end = start + len(pending.commands)
                if pending.callback is not None:
                    try:
                        pending.callback(results[start:end])
                    except Exception:
                        log.exception("submission callback failed")
                elif not pending.future.done():  # the submitter may have been cancelled
                    pending.future.set_result(results[start:end])
                start = end
            for listener in self._listeners:
                try:
                    listener(batch, results)
                except Exception:
                    log.exception("batch listener %r failed", listener)
            # Let gateways read more input before the next batch.
            await asyncio.sleep(0)


class ServiceStopped(RuntimeError):
    pass
