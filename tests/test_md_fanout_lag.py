"""The fan-out lag metric at many subscribers (issue 16): frames written straight to the
socket are sampled once per message by the publisher (a histogram observe per frame was a
fifth of a 10,000-subscriber flush); frames a session queues are sampled by its writer."""

from __future__ import annotations

import asyncio
import time

from engine.bench.workload import INSTRUMENT, SYMBOL
from engine.core.batch_events import BatchEvents
from engine.core.commands import NewOrder
from engine.core.domain import OrderType, Side
from engine.core.matcher import MatchingEngine
from engine.market_data import MarketData, _next_flush
from engine.observer import Observer


class _Lags(Observer):
    def __init__(self) -> None:
        self.lags: list[float] = []

    def fanout_lag(self, seconds: float) -> None:
        self.lags.append(seconds)


class _Subscriber:
    """A session as the publisher sees it: True when the frame went to the socket at once."""

    def __init__(self, writes_at_once: bool) -> None:
        self.at_once = writes_at_once
        self.frames: list[bytes] = []

    def push(self, frame: bytes, _published_at: float) -> bool:
        self.frames.append(frame)
        return self.at_once


def _publish_updates(subscribers: list[_Subscriber], updates: int) -> _Lags:
    engine = MatchingEngine([INSTRUMENT])
    lags = _Lags()
    md = MarketData(engine, observer=lags)
    for sub in subscribers:
        md.subscribe_book(SYMBOL, sub, 0)
    ts = time.time_ns()
    for i in range(updates):
        cmd = NewOrder("mm", "", SYMBOL, Side.BUY, OrderType.LIMIT, 9_000 + i, 1)
        cmd.seq, cmd.ts = engine.last_seq + 1, ts + i
        results = [engine.apply(cmd)]
        md.on_events([cmd], results, BatchEvents(results))
    return lags


def test_frames_written_at_once_are_sampled_once_per_message_not_per_subscriber():
    subscribers = [_Subscriber(True) for _ in range(200)]
    lags = _publish_updates(subscribers, 5)
    assert all(len(s.frames) == 5 for s in subscribers)  # every subscriber got every update
    assert len(lags.lags) == 5
    assert all(lag >= 0 for lag in lags.lags)


def test_queued_frames_are_left_to_the_session_writer():
    lags = _publish_updates([_Subscriber(False) for _ in range(50)], 3)
    assert lags.lags == []
    mixed = _publish_updates([_Subscriber(False), _Subscriber(True)], 3)
    assert len(mixed.lags) == 3


class _Timed:
    """A subscriber noting the loop time of each frame it is given."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def push(self, _frame: bytes, _published_at: float) -> bool:
        self.times.append(asyncio.get_running_loop().time())
        return True


def test_many_conflated_subscribers_flush_in_groups_spread_over_the_interval():
    """2,500 subscribers at 10 Hz: three groups of at most GROUP_SIZE, flushing at different
    moments of the 100 ms interval, each subscriber still never above its rate."""

    groups: list = []

    async def run() -> list[_Timed]:
        engine = MatchingEngine([INSTRUMENT])
        md = MarketData(engine)
        subs = [_Timed() for _ in range(2_500)]
        for sub in subs:
            md.subscribe_book(SYMBOL, sub, 10)
        groups.extend(md.feeds[SYMBOL].conflated.values())
        assert sorted(len(g.subscribers) for g in groups) == [500, 1000, 1000]
        ts = time.time_ns()
        for i in range(40):  # a book change every 10 ms for 0.4 s
            cmd = NewOrder("mm", "", SYMBOL, Side.BUY, OrderType.LIMIT, 9_000 + i, 1)
            cmd.seq, cmd.ts = engine.last_seq + 1, ts + i
            results = [engine.apply(cmd)]
            md.on_events([cmd], results, BatchEvents(results))
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.25)
        return subs

    subs = asyncio.run(run())
    assert all(len(s.times) >= 2 for s in subs)  # every subscriber kept being updated
    for s in subs:
        # Never faster than max_rate: flushes sit on a 100 ms grid, so a late timer shortens
        # at most the gap after it; over the run there is at most one frame per interval
        # (plus the first), however late the loop ran.
        assert (len(s.times) - 2) * 0.1 <= s.times[-1] - s.times[0] + 0.01
    # The groups' phases are 0, 10 and 20 ms into the interval: not one tick for all 2,500
    # (read from the schedule, not from when a loaded machine happened to run the timers).
    assert sorted(round(g.phase, 6) for g in groups) == [0.0, 0.01, 0.02]
    for g in groups:
        due = _next_flush(g, 123.456)
        assert (
            due >= 123.456 - 1e-9
            and abs((due - g.phase) / g.interval - round((due - g.phase) / g.interval)) < 1e-6
        )
