"""Waiting for a condition in the tests: poll a probe until it holds, or fail naming what was awaited.

One polling loop for every test (sync `wait_until`, async `wait_until_async`); never a fixed
sleep. A probe returns something truthy when the condition holds, and that value is returned,
so a wait can also fetch what it waited for (`body = wait_until("the order", lookup)`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The awaited condition did not hold before the deadline (an AssertionError, so pytest
    reports it as a test failure, with the message naming what was awaited)."""


class _Waiting:
    """The state of one wait, shared by the sync and async loops: the deadline, the last value
    the probe gave (for the failure message), and which exceptions mean "not yet"."""

    def __init__(
        self,
        what: str,
        timeout: float,
        retry_on: tuple[type[BaseException], ...],
        guard: Callable[[], None] | None,
        context: Callable[[], str] | None,
    ) -> None:
        self.what, self.timeout, self.retry_on = what, timeout, retry_on
        self.guard, self.context = guard, context
        self.deadline = time.monotonic() + timeout
        self.last: object = None

    def step(self, probe: Callable[[], T]) -> T | None:
        """One poll: the probe's value if truthy, else None (remembered for the message)."""
        if self.guard is not None:
            self.guard()  # raises to stop early, e.g. when the process being waited on died
        try:
            value = probe()
        except self.retry_on as exc:
            self.last = exc
            return None
        self.last = value
        return value if value else None

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def failure(self) -> WaitTimeout:
        message = f"timed out after {self.timeout:g} s waiting for {self.what}; last: {self.last!r}"
        if self.context is not None:
            message += "\n" + self.context()
        return WaitTimeout(message)


def wait_until(
    what: str,
    probe: Callable[[], T],
    *,
    timeout: float = 30.0,
    interval: float = 0.02,
    retry_on: tuple[type[BaseException], ...] = (),
    guard: Callable[[], None] | None = None,
    context: Callable[[], str] | None = None,
) -> T:
    """Poll `probe()` every `interval` s until it returns something truthy, and return that.

    `what` names the condition in the timeout error ("timed out after 30 s waiting for {what}").
    `retry_on`: exceptions that mean "not ready yet" (e.g. a connection refused while a server
    starts). `guard()` runs before every poll and may raise to stop early. `context()` adds
    detail to the timeout message (e.g. a log's tail).
    """
    waiting = _Waiting(what, timeout, retry_on, guard, context)
    while True:
        value = waiting.step(probe)
        if value is not None:
            return value
        if waiting.expired():
            raise waiting.failure()
        time.sleep(interval)


async def wait_until_async(
    what: str,
    probe: Callable[[], T],
    *,
    timeout: float = 30.0,
    interval: float = 0.005,
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """`wait_until` for a test running on an event loop: the probe is synchronous (it reads
    state the loop's tasks change), and the loop runs those tasks between polls."""
    waiting = _Waiting(what, timeout, retry_on, None, None)
    while True:
        value = waiting.step(probe)
        if value is not None:
            return value
        if waiting.expired():
            raise waiting.failure()
        await asyncio.sleep(interval)
