"""One timer wheel per event loop for every connection's deadlines (login, idle, FIX logon).

Issue 13: under a flood of 20,000 idle connections, a timer handle (or, for FIX, a task
waking every 0.5 s) per connection made the single event loop spend its time on deadlines,
and connections opened in one burst expired in one burst: thousands of closes in one loop
turn, hundreds of ms during which no order was read. The wheel holds each deadline in a
slot of `RESOLUTION_S` (insertion O(1), nothing to cancel: a callback that is no longer
wanted is dropped by its owner), wakes the loop only while something is due, and runs at
most `BATCH` callbacks per `PACE_S`, so an expiry wave is spread over time instead of
stalling the loop.

Pacing by time, not only by loop turn (session 7): with a batch per turn, the 10,000 idle
connections a flood opened in one burst still expired together (a few hundred ms of turns
carrying 256 closes each), and the flood's reconnects came back as one storm 2 s later (an
accept storm the loop drains in one go): the order session's ack p99 rose from 7-17 ms to
100-220 ms in exactly those seconds of `loom bench connections`. At `BATCH` per `PACE_S`
(6,400 a second) such a wave takes ~1.6 s, the closes and the reconnects that follow them
are spread alike, and a deadline fires at most that much late (they are seconds long: a
login within 10 s).

Smaller batches, more often (session 8): the same 6,400 a second, but 16 per 2.5 ms rather
than 64 per 10 ms, so an order read while a wave runs waits behind 16 closes, not 64 (a
silent connection's close with its farewell: 5-7 us each in a 4,000-connection micro-run,
a batch of 64 0.3-0.5 ms, of 16 0.1-0.25 ms; more on a loaded VM).

    wheel = deadline_wheel()            # the running loop's
    wheel.add(loop.time() + 10.0, check)   # check() runs within RESOLUTION_S after that
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Callable

RESOLUTION_S = 0.25  # a deadline fires up to this late, plus its wave's pacing (seconds-long deadlines)
BATCH = 16  # callbacks per drain: an expiry wave yields to I/O between batches
PACE_S = 0.0025  # between drains of a wave: the wave's share of the loop is bounded

_WHEELS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, DeadlineWheel] = weakref.WeakKeyDictionary()


class DeadlineWheel:
    """Deadlines of one loop, in slots of `resolution` seconds; see the module docstring."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        resolution: float = RESOLUTION_S,
        batch: int = BATCH,
        pace: float = PACE_S,
    ) -> None:
        self._loop = loop
        self._resolution = resolution
        self._batch = batch
        self._pace = pace
        self._slots: dict[int, list[Callable[[], None]]] = {}
        self._next = 0  # the first slot not yet swept
        self._due: deque[Callable[[], None]] = deque()  # expired, waiting for their batch
        self._timer: asyncio.TimerHandle | None = None
        self._armed = 0  # the slot the timer is armed for
        self._draining = False
        self.fired = 0  # callbacks run over the wheel's life (a figure for tests)

    def __len__(self) -> int:
        return sum(map(len, self._slots.values())) + len(self._due)

    def add(self, when: float, callback: Callable[[], None]) -> None:
        """Run `callback()` once, at or after loop time `when` (at most one slot late)."""
        slot = max(int(when / self._resolution) + 1, self._next)
        bucket = self._slots.get(slot)
        if bucket is None:
            self._slots[slot] = [callback]
        else:
            bucket.append(callback)
        if self._draining:
            return  # the drain re-arms when it is done
        if self._timer is not None:
            if slot >= self._armed:
                return
            self._timer.cancel()
        self._arm()

    def _arm(self) -> None:
        self._armed = first = min(self._slots)
        self._timer = self._loop.call_at(first * self._resolution, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        # (a timer may fire a little early: the loop rounds its clock)
        now_slot = int((self._loop.time() + 0.002) / self._resolution)
        slots = self._slots
        if slots:
            # Only the slots that exist: a long-idle wheel does not walk the empty ones.
            for slot in sorted(s for s in slots if s <= now_slot):
                self._due.extend(slots.pop(slot))
        self._next = max(self._next, now_slot + 1)
        self._drain()

    def _drain(self) -> None:
        due = self._due
        for _ in range(min(self._batch, len(due))):
            callback = due.popleft()
            self.fired += 1
            callback()
        if due:
            self._draining = True
            self._loop.call_later(self._pace, self._drain)  # the rest later, I/O meanwhile
            return
        self._draining = False
        if self._slots and self._timer is None:
            self._arm()


def deadline_wheel(loop: asyncio.AbstractEventLoop | None = None) -> DeadlineWheel:
    """The wheel of `loop` (default: the running loop), made on first use."""
    loop = loop or asyncio.get_running_loop()
    last = _LAST[0]
    if last is not None and last._loop is loop:  # a node has one loop: skip the weak lookup
        return last
    wheel = _WHEELS.get(loop)
    if wheel is None:
        wheel = _WHEELS[loop] = DeadlineWheel(loop)
    _LAST[0] = wheel
    return wheel


_LAST: list[DeadlineWheel | None] = [None]
