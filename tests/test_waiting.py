"""The tests' one polling helper: returns what the probe found, fails naming what was awaited."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from waiting import WaitTimeout, wait_until, wait_until_async


def test_returns_the_first_truthy_value_the_probe_gives():
    calls = itertools.count(1)
    assert wait_until("the third call", lambda: (n := next(calls)) >= 3 and n, interval=0) == 3


def test_the_timeout_names_what_was_awaited_and_the_last_value():
    with pytest.raises(WaitTimeout, match=r"after 0 s waiting for the queue to empty; last: \[\]") as failure:
        wait_until("the queue to empty", list, timeout=0)
    assert isinstance(failure.value, AssertionError)  # pytest reports it as a failed test


def test_retry_on_exceptions_mean_not_yet_and_others_propagate():
    calls = itertools.count(1)

    def starting() -> str:
        if next(calls) < 3:
            raise ConnectionRefusedError("not listening yet")
        return "up"

    assert wait_until("the server", starting, retry_on=(ConnectionError,), interval=0) == "up"
    with pytest.raises(ZeroDivisionError):
        wait_until("a broken probe", lambda: 1 / 0, retry_on=(ConnectionError,))


def test_a_guard_stops_the_wait_early_and_context_extends_the_message():
    def died() -> None:
        raise AssertionError("the server exited with 1")

    with pytest.raises(AssertionError, match="exited with 1"):
        wait_until("never", lambda: False, guard=died)
    with pytest.raises(WaitTimeout, match="log tail: boom"):
        wait_until("never", lambda: False, timeout=0, context=lambda: "log tail: boom")


def test_the_async_wait_lets_the_loop_run_the_task_it_waits_for():
    async def main() -> int:
        done: list[int] = []

        async def worker() -> None:
            await asyncio.sleep(0)
            done.append(7)

        task = asyncio.create_task(worker())
        found = await wait_until_async("the worker's result", lambda: done and done[0])
        await task
        with pytest.raises(WaitTimeout, match="waiting for nothing"):
            await wait_until_async("nothing", lambda: None, timeout=0)
        return found

    assert asyncio.run(main()) == 7
