"""How a load-generator connection feels the server's TCP backpressure.

A gateway that stops reading an overloaded connection (engine.overload) fills the kernel's
buffers and then the client transport's own. A well-behaved client stops sending there; an
open-loop generator that does not just moves the server's backlog into its own memory and
measures that as latency. With `hold` the drivers keep back the orders due while a
connection is pressed and count them as held (never sent, so never answered).

`max_in_flight` (per connection, 0 = none) is the other half of a well-behaved client: it
keeps at most that many orders sent and not yet answered, as a client that wants its answers
within a time budget does (Little's law: in flight = rate x wait). Without it the kernel's
buffers on both sides hold hundreds of orders per connection before the client feels any
pushback, and every one of them waits its turn (measured: REST 4C, p50 2.5 s)."""

from __future__ import annotations

import contextlib
import socket

SEND_BUFFER = 64 * 1024  # the kernel's unsent bytes per connection (Linux doubles it)


def limit_send_buffer(transport) -> None:
    """Cap the kernel send buffer so backpressure shows in the transport within milliseconds
    instead of after megabytes (seconds of orders) were parked on the loopback."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


def pressed(transport) -> bool:
    """Whether the server is pushing back: the kernel buffer is full and the transport holds
    unsent bytes of its own."""
    return transport is None or transport.get_write_buffer_size() > 0


def room(hold: bool, transport, in_flight: int, max_in_flight: int, due: int) -> int:
    """How many of the `due` orders a connection may send now; the rest are held. Without
    hold, all; with it, none while the server pushes back, and at most what keeps the
    connection's orders sent and not yet answered within `max_in_flight` (0 = no bound)."""
    if not hold:
        return due
    if pressed(transport):
        return 0
    return max(0, min(due, max_in_flight - in_flight)) if max_in_flight > 0 else due
