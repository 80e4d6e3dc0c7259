"""Market data from the durable events, per symbol: L2 book snapshots and incremental updates
with a per-symbol sequence number, an opt-in L3 (order-by-order) feed, trades, a ticker and
OHLCV candles (engine/candles.py). The protocol: docs/websocket.md.

After each batch, every symbol the batch touched has its top `depth` levels compared with
what was last published; the differences go out as one update (qty 0 removes a level),
with `seq` and `prev_seq`: a client holding `prev_seq` (or later) applies it, one holding
less has missed a message and resyncs (a fresh snapshot).

Fan-out: each message is encoded once into a WebSocket frame and the same bytes are queued
to every subscriber (`push`), whose session bounds its own queue. A subscriber that asked
for a maximum rate joins the symbol's conflation group for that rate: the group folds the
changed levels (latest quantity wins) and sends one update per interval, encoded once for
the whole group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

from engine.candles import INTERVALS, Candles, candle_json
from engine.core.batch_events import BatchEvents
from engine.core.matcher import MatchingEngine
from engine.gateways.ws_frames import DEFAULT_SEND_BUFFER, json_frame
from engine.observer import NULL_OBSERVER, Observer

log = logging.getLogger("loom.marketdata")

MAX_RATE_HZ = 1_000  # the highest `max_rate` a book subscriber may ask for
# A conflation group holds at most this many subscribers; the groups of one rate flush at
# PHASES different offsets of the interval, so no one tick writes every subscriber's frame
# (10,000 at once held the loop ~60 ms, the last subscriber waiting for all the others).
GROUP_SIZE = 1_000
PHASES = 10


class Subscriber(Protocol):
    def push(self, frame: bytes, published_at: float) -> bool | None:
        """Queue one shared, already encoded frame (it must not be changed). True when it was
        written to the socket at once (the publisher samples the fan-out lag for those)."""


class Conflated:
    """The subscribers of one symbol's book at one maximum rate, and the changes folded
    since their last update."""

    __slots__ = (
        "interval",
        "phase",
        "last_flush",
        "due",
        "subscribers",
        "changes",
        "prev_seq",
        "folded",
        "handle",
        "durable_at",
        "ts",
    )

    def __init__(self, rate_hz: float, index: int = 0) -> None:
        self.interval = 1.0 / rate_hz
        # Flushes fall on the loop-clock grid phase + k * interval: one per interval at
        # most, and the groups of a rate spread over the interval.
        self.phase = self.interval * (index % PHASES) / PHASES
        self.last_flush = float("-inf")
        self.due = 0.0
        self.subscribers: set[Subscriber] = set()
        self.changes: dict[tuple[str, int], int] = {}
        self.prev_seq = -1  # the seq before the first folded update (-1: nothing folded)
        self.folded = 0
        self.handle: asyncio.TimerHandle | None = None
        self.durable_at = 0.0
        self.ts = 0  # the newest folded update's durable event ts


class SymbolFeed:
    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.seq = 0
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.book_subscribers: set[Subscriber] = set()
        self.conflated: dict[tuple[float, int], Conflated] = {}  # (max_rate, group index)
        self.trade_subscribers: set[Subscriber] = set()
        self.ticker_subscribers: set[Subscriber] = set()
        self.candle_subscribers: dict[str, set[Subscriber]] = {name: set() for name in INTERVALS}
        self.l3_subscribers: set[Subscriber] = set()
        self.l3_seq = 0
        self.l3: dict[int, tuple[int, int, int]] | None = None  # order id -> (side, price, leaves)


class MarketData:
    def __init__(
        self,
        engine: MatchingEngine,
        depth: int = 50,
        observer: Observer = NULL_OBSERVER,
        candle_days: int = 7,
    ) -> None:
        self.engine = engine
        self.depth = depth
        self.observer = observer
        self.feeds: dict[str, SymbolFeed] = {}
        self.updates_published = 0
        self.candles = Candles(candle_days)
        # False until the candles from before this start are read back (candle_history.py).
        self.candles_complete = True
        self.last_ts = 0  # the newest durable command's ts: the ticker's "now"
        # When the batch being published became durable (perf_counter): subscribers read
        # it for loom_md_fanout_lag_seconds. The service supplies its durable point; on
        # its own, the moment the update is built.
        self.batch_time: Callable[[], float] = time.perf_counter
        self.published_at = 0.0
        # The sessions' settings ([market_data]; engine/gateways/ws_session.py reads them).
        self.max_queued = 50_000
        self.send_buffer_bytes = DEFAULT_SEND_BUFFER
        self.book_max_rate = 0.0
        self._read_back: asyncio.Task | None = None
        # A cluster leader's NATS publisher (engine/marketdata_nats.py): every touched symbol's
        # feed, its changes (as published, [] if none) and its trades, after each batch.
        self.on_update: Callable[[SymbolFeed, list[list], list], None] | None = None
        self.l3_available = True  # False where only levels are known (a `loom marketdata` process)

    def start_read_back(self, spec) -> None:
        """Read the candles from before this start back from the journal, in the background
        (engine/candle_history.py); the trades from now on are added live meanwhile."""
        upto = self.engine.last_seq
        if upto == 0:
            return
        from engine.candle_history import read_back_candles

        self.candles_complete = False
        self._read_back = asyncio.get_running_loop().create_task(
            read_back_candles(spec, upto, self), name="candle-read-back"
        )

    async def close(self) -> None:
        task, self._read_back = self._read_back, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def feed(self, symbol: str) -> SymbolFeed:
        feed = self.feeds.get(symbol)
        if feed is None:
            feed = self.feeds[symbol] = SymbolFeed(symbol)
            self._refresh(feed)
        return feed

    # -- snapshots --------------------------------------------------------------------------

    def _levels(self, symbol: str) -> tuple[dict[int, int], dict[int, int]]:
        book = self.engine.books[symbol]
        bids = {p: q for p, q, _n in book.bids.depth(self.depth)}
        asks = {p: q for p, q, _n in book.asks.depth(self.depth)}
        return bids, asks

    def _refresh(self, feed: SymbolFeed) -> list[list]:
        bids, asks = self._levels(feed.symbol)
        changes = []
        for side, old, new in (("bid", feed.bids, bids), ("ask", feed.asks, asks)):
            for price, qty in new.items():
                if old.get(price) != qty:
                    changes.append([side, price, qty])
            for price in old:
                if price not in new:
                    changes.append([side, price, 0])
        feed.bids, feed.asks = bids, asks
        return changes

    def snapshot(self, symbol: str) -> dict:
        feed = self.feed(symbol)
        return {
            "type": "l2snapshot",
            "symbol": symbol,
            "seq": feed.seq,
            "bids": sorted(([p, q] for p, q in feed.bids.items()), reverse=True),
            "asks": sorted([p, q] for p, q in feed.asks.items()),
        }

    def l3_snapshot(self, symbol: str) -> dict:
        """Every resting order by price then time priority, as [order_id, price, leaves]:
        order ids only, never the account."""
        feed = self.feed(symbol)
        if feed.l3 is None:
            feed.l3 = self._l3_state(symbol)
        book = self.engine.books[symbol]
        sides = []
        for side in (book.bids, book.asks):
            sides.append(
                [[o.order_id, o.price, o.leaves] for lv in side.iter_levels() for o in lv.orders.values()]
            )
        return {
            "type": "l3snapshot",
            "symbol": symbol,
            "seq": feed.l3_seq,
            "bids": sides[0],
            "asks": sides[1],
        }

    def _l3_state(self, symbol: str) -> dict[int, tuple[int, int, int]]:
        book = self.engine.books[symbol]
        return {
            o.order_id: (o.side, o.price, o.leaves)
            for side in (book.bids, book.asks)
            for lv in side.levels.values()
            for o in lv.orders.values()
        }

    def ticker(self, symbol: str) -> dict:
        """Best bid/ask, last trade and the 24 h statistics ending at the newest durable
        command's ts (the sequencer's clock, not this process's)."""
        book = self.engine.books[symbol]
        c = self.candles.of(symbol)
        start, volume, high, low, trades = c.day(max(self.last_ts, c.last_ts))
        bid, ask = book.bids.best, book.asks.best
        return {
            "type": "ticker",
            "symbol": symbol,
            "bid": bid,
            "bid_qty": book.bids.levels[bid].qty if bid is not None else 0,
            "ask": ask,
            "ask_qty": book.asks.levels[ask].qty if ask is not None else 0,
            "last": c.last or None,
            "last_ts": c.last_ts or None,
            "volume_24h": volume,
            "high_24h": high if trades else None,
            "low_24h": low if trades else None,
            "trades_24h": trades,
            "window_start": start,
            "ts": self.last_ts,
        }

    # -- the batch --------------------------------------------------------------------------

    def on_batch(self, commands: list, results: list[list]) -> None:
        self.on_events(commands, results, BatchEvents(results))

    def on_events(self, commands: list, _results: list[list], split: BatchEvents) -> None:
        self.publish(commands[-1].ts if commands else self.last_ts, split.trades, split.symbols(), split)

    def publish(self, ts: int, trades: list, touched, split: BatchEvents | None = None) -> None:
        """One durable batch: its newest command's `ts`, its trades and the symbols it touched
        (`split` for the L3 feed). The commit loop calls it through on_events; a `loom
        marketdata` process with the batches it reads from NATS (engine/marketdata_nats.py)."""
        self.last_ts = ts
        # Candles are kept whether or not anyone listens: they are history, not a stream.
        add = self.candles.add
        for t in trades:
            add(t.symbol, t.ts, t.price, t.qty)
        if not self.feeds and self.on_update is None:
            return  # nobody has subscribed to anything: nothing to compare or publish
        self.published_at = self.batch_time()
        for symbol in touched:
            feed = self.feeds.get(symbol)
            if symbol not in self.engine.books:
                continue
            if feed is None:
                if self.on_update is None:
                    continue  # nobody has asked for it yet: the first subscriber gets a snapshot
                feed = self.feed(symbol)  # seq 0 is the book after this batch: nothing to send
            changes = self._book(feed)
            if self.on_update is not None:
                self.on_update(feed, changes, [t for t in trades if t.symbol == symbol])
            if feed.l3_subscribers and split is not None:
                self._l3(feed, split)
            if feed.ticker_subscribers:
                self._publish(feed.ticker_subscribers, self.ticker(symbol))
        for t in trades:
            feed = self.feeds.get(t.symbol)
            if feed is not None and feed.trade_subscribers:
                self._publish(
                    feed.trade_subscribers,
                    {
                        "type": "trade",
                        "symbol": t.symbol,
                        "trade_id": t.trade_id,
                        "price": t.price,
                        "qty": t.qty,
                        "aggressor": "buy" if t.aggressor_side == 1 else "sell",
                        "seq": t.seq,
                        "ts": t.ts,
                    },
                )
        if trades:
            self._candles(trades)

    def _candles(self, trades: list) -> None:
        """Each candle the batch's trades changed, to its interval's subscribers."""
        first: dict[str, int] = {}  # symbol -> its first trade's ts in the batch
        for t in trades:
            first.setdefault(t.symbol, t.ts)
        for symbol, since in first.items():
            feed = self.feeds.get(symbol)
            if feed is None:
                continue
            for name, subscribers in feed.candle_subscribers.items():
                if subscribers:
                    for b in self.candles.of(symbol).current(name, since):
                        self._publish(subscribers, {"type": "candle", **candle_json(symbol, name, b)})

    def _book(self, feed: SymbolFeed) -> list[list]:
        """The feed's changed levels, published as its next seq; [] when none changed."""
        changes = self._refresh(feed)
        if not changes:
            return changes
        feed.seq += 1
        self.updates_published += 1
        if feed.book_subscribers:
            message = {
                "type": "l2update",
                "symbol": feed.symbol,
                "seq": feed.seq,
                "prev_seq": feed.seq - 1,
                "changes": changes,
                "ts": self.last_ts,
            }
            self._publish(feed.book_subscribers, message)
        for group in list(feed.conflated.values()):
            if not group.subscribers:
                continue
            if group.prev_seq < 0:
                group.prev_seq = feed.seq - 1
            for side, price, qty in changes:
                group.changes[(side, price)] = qty
            group.folded += 1
            group.durable_at = self.published_at
            group.ts = self.last_ts
            if group.handle is None:
                loop = asyncio.get_running_loop()
                group.due = _next_flush(group, loop.time())
                group.handle = loop.call_at(group.due, self._flush, feed, group)
        return changes

    def _flush(self, feed: SymbolFeed, group: Conflated) -> None:
        """One update for the group: the latest quantity of every level changed since the
        last, covering seqs prev_seq+1..seq."""
        group.handle = None
        group.last_flush = group.due  # the grid point, not the (later) moment the timer ran
        if not group.changes or not group.subscribers:
            group.changes.clear()
            group.prev_seq, group.folded = -1, 0
            return
        message = {
            "type": "l2update",
            "symbol": feed.symbol,
            "seq": feed.seq,
            "prev_seq": group.prev_seq,
            "changes": [[side, price, qty] for (side, price), qty in group.changes.items()],
            "ts": group.ts,
        }
        if group.folded > 1:
            self.observer.md_conflated((group.folded - 1) * len(group.subscribers))
        group.changes = {}
        group.prev_seq, group.folded = -1, 0
        self.published_at = group.durable_at
        self._publish(group.subscribers, message)

    def _l3(self, feed: SymbolFeed, split: BatchEvents) -> None:
        state = feed.l3
        if state is None:
            state = feed.l3 = self._l3_state(feed.symbol)
        symbol = feed.symbol
        touched: dict[int, str] = {}  # order id -> account, in first-touch order
        for events in (split.accepted, split.amended, split.cancelled, split.done):
            for ev in events:
                if ev.symbol == symbol:
                    touched.setdefault(ev.order_id, ev.account)
        for t in split.trades:
            if t.symbol == symbol:
                touched.setdefault(t.maker_order_id, t.maker_account)
                touched.setdefault(t.taker_order_id, t.taker_account)
        accounts = self.engine.accounts
        orders = []
        for oid, account in touched.items():
            held = accounts.get(account)
            o = held.open.get(oid) if held is not None else None
            now = (o.side, o.price, o.leaves) if o is not None and o.leaves else None
            before = state.get(oid)
            if now == before:
                continue
            if now is None:
                del state[oid]
                assert before is not None
                orders.append([oid, _SIDE[before[0]], before[1], 0])
            else:
                state[oid] = now
                orders.append([oid, _SIDE[now[0]], now[1], now[2]])
        if orders:
            feed.l3_seq += 1
            message = {
                "type": "l3update",
                "symbol": symbol,
                "seq": feed.l3_seq,
                "prev_seq": feed.l3_seq - 1,
                "orders": orders,
            }
            self._publish(feed.l3_subscribers, message)

    def levels_replaced(self, feed: SymbolFeed, seq: int) -> None:
        """The book under `feed` was replaced wholesale (a `loom marketdata` process back in
        sync with the leader): the difference goes out as update `seq`, whose prev_seq shows
        every subscriber holding an older seq that it missed some (so it resyncs)."""
        feed.seq = seq - 1
        if not self._book(feed):
            feed.seq = seq

    # -- subscribers ------------------------------------------------------------------------

    def subscribe_book(self, symbol: str, sub: Subscriber, max_rate: float) -> Callable[[], None]:
        feed = self.feed(symbol)
        if max_rate <= 0:
            feed.book_subscribers.add(sub)
            return lambda: feed.book_subscribers.discard(sub)
        index = 0
        groups = feed.conflated
        while (key := (max_rate, index)) in groups and len(groups[key].subscribers) >= GROUP_SIZE:
            index += 1
        group = feed.conflated.get(key)
        if group is None:
            group = feed.conflated[key] = Conflated(max_rate, index)
        group.subscribers.add(sub)

        def stop() -> None:
            group.subscribers.discard(sub)
            if not group.subscribers:
                if group.handle is not None:
                    group.handle.cancel()
                feed.conflated.pop(key, None)

        return stop

    def subscribe_l3(self, symbol: str, sub: Subscriber) -> Callable[[], None]:
        feed = self.feed(symbol)
        feed.l3_subscribers.add(sub)

        def stop() -> None:
            feed.l3_subscribers.discard(sub)
            if not feed.l3_subscribers:
                feed.l3 = None  # rebuilt from the book when someone asks again

        return stop

    def subscribe(self, channel: str, symbol: str, sub: Subscriber, interval: str = "") -> Callable[[], None]:
        """trades, ticker or candles (with `interval`)."""
        feed = self.feed(symbol)
        if channel == "trades":
            subs = feed.trade_subscribers
        elif channel == "ticker":
            subs = feed.ticker_subscribers
        else:
            subs = feed.candle_subscribers[interval]
        subs.add(sub)
        return lambda: subs.discard(sub)

    def subscriber_counts(self) -> dict[str, int]:
        """Subscriptions by channel, over every symbol (read at scrape time)."""
        feeds = self.feeds.values()
        return {
            "book": sum(
                len(f.book_subscribers) + sum(len(g.subscribers) for g in f.conflated.values()) for f in feeds
            ),
            "trades": sum(len(f.trade_subscribers) for f in feeds),
            "ticker": sum(len(f.ticker_subscribers) for f in feeds),
            "candles": sum(sum(map(len, f.candle_subscribers.values())) for f in feeds),
            "l3": sum(len(f.l3_subscribers) for f in feeds),
        }

    def _publish(self, subscribers: set[Subscriber], message: dict) -> None:
        frame = json_frame(message)  # once, for every subscriber
        at = self.published_at
        written = False
        for sub in list(subscribers):
            try:
                written = sub.push(frame, at) or written
            except Exception:
                log.exception("market data subscriber failed; dropping it")
                subscribers.discard(sub)
        if written:  # one sample for the frames written at once: the last of them, the slowest
            self.observer.fanout_lag(time.perf_counter() - at)
        self.observer.md_published(len(subscribers))


_SIDE = {1: "bid", 2: "ask"}


def _next_flush(group: Conflated, now: float) -> float:
    """The group's first grid point at or after `now` and a whole interval after its last
    flush (so it never sends faster than its rate)."""
    at = max(now, group.last_flush + group.interval)
    periods = math.ceil((at - group.phase) / group.interval - 1e-6)
    return group.phase + periods * group.interval
