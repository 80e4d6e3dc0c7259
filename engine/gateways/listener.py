"""A TCP listener that can stop accepting for a while and start again (issue 13, session 9).

Neither asyncio's nor uvloop's `Server` can pause accepting (libuv has no "stop listening"),
so a `Listener` keeps its own duplicate of each listening socket: pausing closes the loop's
server, and the kernel's socket, with its accept queue, stays open behind the duplicate, so
connections arriving meanwhile wait there (then in their SYN retries) instead of being reset;
resuming serves a fresh duplicate (with the full backlog again: the queue is kept short while
paused). Connections already accepted are untouched (closing a server only stops listening).
Used by each gateway's admission (RefusalBrake in engine/gateways/admission.py) to bound how
fast a full listener accepts only to refuse.

The `Listener` stands where the gateways had the `asyncio.Server` (`sockets`, `close`,
`wait_closed`, `is_serving`), so shutdown and port lookups did not change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Sequence

from engine.gateways.admission import LISTEN_BACKLOG, Admission

log = logging.getLogger("loom.admission")

PAUSED_BACKLOG = 64  # the kernel's accept queue while a listener is paused (resuming restores it)


class Listener:
    """One listener's server(s), paused and served again; see the module docstring."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        factory: Callable[[], asyncio.BaseProtocol],
        server: asyncio.Server,
        backlog: int,
    ) -> None:
        self._loop = loop
        self._factory = factory
        self._backlog = backlog
        self._server: asyncio.AbstractServer | _Servers | None = server  # None while paused
        self._last: asyncio.AbstractServer | _Servers = server  # the newest, for wait_closed
        # Duplicates keep the kernel's listening sockets open while the loop's server is closed.
        self._socks = [socket.socket(fileno=os.dup(s.fileno())) for s in server.sockets]
        self._resume: asyncio.TimerHandle | None = None
        self._resuming: asyncio.Task | None = None  # held: the loop keeps only a weak reference
        self._closed = False
        self._failing = False  # resuming failed last time (logged once)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._socks)

    def is_serving(self) -> bool:
        return self._server is not None

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def pause(self, for_s: float) -> bool:
        """Stop accepting for `for_s` seconds; False when already paused (or closed)."""
        if self._server is None or self._closed:
            return False
        self._server.close()
        self._server = None
        for sock in self._socks:
            # A short queue while paused: accepting again takes the whole queue in one loop
            # turn (libuv accepts until EAGAIN), so 1,024 queued refusals were one ~12 ms stall;
            # past PAUSED_BACKLOG the kernel drops the SYN and the client retries it later.
            with contextlib.suppress(OSError):
                sock.listen(PAUSED_BACKLOG)
        self._resume = self._loop.call_later(for_s, self._start_resuming)
        return True

    def _start_resuming(self) -> None:
        self._resume = None
        self._resuming = self._loop.create_task(self._serve_again())

    async def _serve_again(self) -> None:
        servers = []
        try:
            for sock in self._socks:
                server = await self._loop.create_server(self._factory, sock=sock.dup(), backlog=self._backlog)
                servers.append(server)
        except OSError as exc:  # the descriptor budget is the connections': a dup may fail
            # Once per failing run, not every 0.5 s.
            (log.debug if self._failing else log.warning)(
                "a listener could not resume accepting (%s); retrying every 0.5 s", exc
            )
            self._failing = True
            for server in servers:
                server.close()
            if not self._closed:
                self._resume = self._loop.call_later(0.5, self._start_resuming)
            return
        if self._closed:
            for server in servers:
                server.close()
            return
        self._failing = False
        # One server per listening socket (a host name may resolve to several addresses).
        self._server = self._last = servers[0] if len(servers) == 1 else _Servers(servers)

    def close(self) -> None:
        self._closed = True
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._resuming is not None:
            self._resuming.cancel()
        if self._server is not None:
            self._server.close()
            self._server = None
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.close()

    async def wait_closed(self) -> None:
        await self._last.wait_closed()


class _Servers:
    """Several servers closed and awaited as one."""

    def __init__(self, servers: Sequence[asyncio.AbstractServer]) -> None:
        self._servers = servers

    def close(self) -> None:
        for server in self._servers:
            server.close()

    async def wait_closed(self) -> None:
        for server in self._servers:
            await server.wait_closed()


async def listen(
    factory: Callable[[], asyncio.BaseProtocol], host: str, port: int, admission: Admission | None
) -> Listener:
    """`loop.create_server(factory, host, port)` as a Listener whose admission's brake may
    pause it (engine/gateways/admission.py, RefusalBrake)."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, host, port, backlog=LISTEN_BACKLOG)
    listener = Listener(loop, factory, server, LISTEN_BACKLOG)
    if admission is not None:
        admission.brake.pause = listener.pause
    return listener
