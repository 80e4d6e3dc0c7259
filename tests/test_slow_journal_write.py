"""A slow journal write (fdatasync) runs on the journal thread, not on the event loop.

Session 7 (issue 13): under a connection flood on a loaded VM, py-spy put 38% of the node's
loop time in an inline fdatasync. The rule that moves the write to the journal thread looked
only at the process's CPU use, and a process waiting on the disk uses none: the loop stood
still for every slow write, and the flood's accepts and closes then ran in series with the
orders. Now a write is threaded also when the previous one took SLOW_JOURNAL_NS or more.

The disk is made slow by delaying os.fdatasync (the real call still runs after the delay);
the journal, node and service are the real ones.
"""

from __future__ import annotations

import asyncio
import os
import time

from engine.bench.workload import INSTRUMENT, SYMBOL
from engine.core.commands import NewOrder
from engine.core.domain import OrderType, Side
from engine.exchange import ExchangeNode, NodeConfig
from engine.service import SLOW_JOURNAL_NS, ExchangeService

DISK_S = 0.05  # each fdatasync's delay: far above SLOW_JOURNAL_NS
TICK_S = 0.005  # the probe's period: it wants little CPU, so the CPU rule stays out of it


def test_after_a_slow_write_the_next_ones_leave_the_event_loop_free(tmp_path, monkeypatch):
    assert DISK_S * 1e9 > 10 * SLOW_JOURNAL_NS
    events: list[str] = []  # appended from the loop and from the journal thread
    real = os.fdatasync

    def slow_fdatasync(fd: int) -> None:
        events.append("sync")
        time.sleep(DISK_S)
        real(fd)
        events.append("synced")

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    node = ExchangeNode(NodeConfig(tmp_path, (INSTRUMENT,), snapshot_every_s=0))
    service = ExchangeService(node)

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def tick() -> None:  # the stand-in for a connection's I/O on the loop
            events.append("tick")
            loop.call_later(TICK_S, tick)

        service.start()
        loop.call_soon(tick)
        for n in range(5):
            order = NewOrder("acct", f"o{n}", SYMBOL, int(Side.BUY), int(OrderType.LIMIT), 99_000, 1)
            [[accepted]] = await service.submit([order], "test", time.perf_counter())
            assert accepted.order_id
        await service.stop()

    try:
        asyncio.run(main())
    finally:
        node.close()
    # The first write has no previous duration to go by (inline); every later one follows a
    # slow one. Before: none threaded (the process was idle: the CPU rule alone decided).
    assert service.threaded_writes == 4
    # The loop turned while the disk was busy: a tick between a sync and its end. Before:
    # never (the write blocked the loop's thread).
    during = [events[i + 1 : events.index("synced", i)] for i, e in enumerate(events) if e == "sync"]
    assert any("tick" in between for between in during), events
