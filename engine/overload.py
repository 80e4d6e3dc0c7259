"""One source of truth for shedding load: when the commit queue refuses new orders, and how
much one connection may have in flight before the gateway stops reading it.

Two places shed, cheapest first:
- the gateway, before decoding: `orders_refused(service, n)` says whether n new orders would
  be refused right now, so a gateway that can tell an order from its framing alone (binary:
  the frame type) answers OVERLOADED without building the command;
- the service (`ExchangeService._admit`), which asks the same function for every submission.

And one place pushes back: a connection whose session has `InFlight.high` requests submitted
and not yet answered is not read until it is down to `low`, so the backlog waits in the
client (TCP backpressure), not in the node. A small socket receive buffer
(`limit_receive_buffer`) makes the pause felt within milliseconds rather than after the
kernel has queued megabytes on the client's behalf. The pause must be the socket's: a
WebSocket session that only stopped taking messages from aiohttp's queue left aiohttp reading
on (up to ~524 KB of orders counted per session at 4C, each waiting behind the bound's), so
the session pauses its socket itself (engine/gateways/http_shed.py `HeldSocket`).
"""

from __future__ import annotations

import contextlib
import socket

RETRY_AFTER_S = 1  # what a refusal for overload tells the client to wait (REST Retry-After)
# Bytes the kernel may hold unread for one order-entry connection (Linux doubles it): against
# autotuning's megabytes (seconds of orders parked for a paused connection), about 0.1 s of
# binary capacity. Smaller halved binary throughput here (16-64 KiB: ~37k orders/s against
# ~80k, the window drained only once per event-loop turn).
RECEIVE_BUFFER = 256 * 1024
# FIX and HTTP/WebSocket parse far fewer orders a second than binary (FIX ~4k/s, WebSocket
# ~8k/s here, at ~150-200 bytes each), so 256 KiB (512 KiB as Linux doubles it) could hold
# ~0.6 s of FIX orders for a paused session: their listeners keep 50-80 ms of their capacity instead.
TEXT_RECEIVE_BUFFER = 32 * 1024
# Orders one WebSocket session may have submitted and not yet answered; at the bound its socket
# is paused until half are answered. 256 was tried (session 7: no better p99 at 4C, less goodput
# at 32k/s); with the socket paused at once the bound is most of what a session holds in the node.
WS_MAX_IN_FLIGHT = 1024
# The longest the oldest queued submission may have waited for the commit loop before new
# orders are refused: what an admitted order waits is bounded in time, not only in count (a
# count that is 0.1 s of binary capacity is 0.8 s of REST).
MAX_QUEUE_DELAY_S = 0.05


class CommitCycles:
    """When the commit loop last took a batch and when it was done with it (journaled,
    applied, answered), so the queue-delay bound can tell a slow disk from an overload.

    With group commit a slow cycle does not build a backlog: everything submitted while one
    batch is written (and then applied and answered) fits in the next batch (up to
    max_batch), which one write makes durable, however slow the fdatasync. So the time a
    submission waits for the cycle in flight when it arrived is the group commit's, and is
    not counted. A submission that was already queued when a batch was taken, and left out
    of it, is a backlog the loop could not clear: its whole wait counts; so does a wait after
    the cycle (a loop turn too long to reach the next batch). Counting the whole wait refused
    344 of 4,000 orders in `loom bench snapshot-stall` once the write left the event loop: a
    snapshot's writeback slowed fdatasync, the loop went on reading, the oldest aged past the
    bound; counting from the write's end still refused thousands at load 22, the orders
    read during a write waiting out the batch's apply and answers (inline, they waited in
    the socket, unseen)."""

    __slots__ = ("ended", "started")

    def __init__(self) -> None:
        self.started = 0.0  # perf_counter when the latest batch was taken
        self.ended = 0.0  # ... and when its cycle ended (below `started` while one is in flight)

    def begin(self, now: float) -> None:
        self.started = now

    def end(self, now: float) -> None:
        self.ended = now

    def backlog_wait(self, queued_at: float, now: float) -> float:
        """Seconds a submission queued at `queued_at` has waited, not counting the commit
        cycle it arrived during (the wait `orders_refused` bounds)."""
        if queued_at < self.started:  # queued when the latest batch was taken, left out of it
            return now - queued_at
        if self.ended < self.started:  # arrived during the cycle in flight: group commit's wait
            return 0.0
        return now - max(queued_at, self.ended)


def orders_refused(queued: int, n: int, bound: int, waited: float = 0.0, max_wait: float = 0.0) -> bool:
    """Whether a submission with n new orders (or amends) is refused with `queued` commands
    waiting, the queue bounded at `bound` commands, and its oldest submission `waited` s old
    (bounded at `max_wait`; 0 = no time bound; the wait as `CommitCycles.backlog_wait` counts
    it, so a slow disk alone is not an overload). An empty queue admits any submission (one
    larger than the bound could otherwise never get in)."""
    return queued > 0 and (queued + n > bound or 0 < max_wait < waited)


def cancels_refused(queued: int, n: int, hard_bound: int) -> bool:
    """Whether a submission of cancels (or the admin's risk commands) only is refused: they
    have their own, higher bound so traders can pull orders from an overloaded venue."""
    return queued + n > hard_bound and queued > 0


OVERLOADED = "OVERLOADED"  # the code every protocol names a refusal for overload by


def coded_text(detail: str) -> str:
    """A refusal for overload where the protocol has only free text (FIX Text (58)): the
    code first, so a client can match it as it matches REST's error code."""
    return f"{OVERLOADED}: {detail}"


def overloaded_text(queued: int, bound: int, waited: float = 0.0) -> str:
    return (
        f"the exchange is overloaded ({queued} commands queued, bound {bound}; the oldest waiting "
        f"{waited * 1000:.0f} ms); not accepted, retry in {RETRY_AFTER_S} s"
    )


class InFlight:
    """Requests of one connection submitted and not yet answered, with hysteresis: `add`
    says when to stop reading (at `high`), `done` when to read again (back at `low`)."""

    __slots__ = ("count", "high", "low", "paused", "pauses")

    def __init__(self, high: int, low: int | None = None) -> None:
        if high < 1:
            raise ValueError(f"an in-flight bound must be at least 1, not {high}")
        self.high = high
        self.low = high // 2 if low is None else low
        self.count = 0
        self.paused = False
        self.pauses = 0  # times the bound stopped reading (a figure for tests and logs)

    def add(self, n: int = 1) -> bool:
        """Count n more; True when reading should stop now (the bound was just reached)."""
        self.count += n
        if not self.paused and self.count >= self.high:
            self.paused = True
            self.pauses += 1
            return True
        return False

    def done(self, n: int = 1) -> bool:
        """n were answered; True when reading should resume now."""
        self.count -= n
        if self.paused and self.count <= self.low:
            self.paused = False
            return True
        return False


def limit_receive_buffers(server, size: int = RECEIVE_BUFFER) -> None:
    """Cap what the kernel buffers unread for each connection an asyncio.Server accepts, so
    pausing one pushes back on its client at once. Set on the listening sockets, which the
    accepted ones inherit: shrinking an established connection's buffer below the window
    already advertised makes the kernel drop data (measured: 200 ms retransmission stalls)."""
    for sock in getattr(server, "sockets", None) or ():
        limit_receive_buffer(sock, size)


def limit_receive_buffer(sock: socket.socket | None, size: int = RECEIVE_BUFFER) -> None:
    """Cap the kernel's receive buffer of a listening (or not yet connected) socket. Best
    effort: None is left alone."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
