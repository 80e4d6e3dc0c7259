"""Market data from the durable events: L2 book snapshots and incremental updates with a
per-symbol sequence number (a client that sees a gap resubscribes), and trades.

After each batch, every symbol the batch touched has its top `depth` levels compared with
what was last published; the differences go out as one update (qty 0 removes a level).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from engine.core.batch_events import BatchEvents
from engine.core.matcher import MatchingEngine

log = logging.getLogger("loom.marketdata")

Subscriber = Callable[[dict], None]


class SymbolFeed:
    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.seq = 0
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.book_subscribers: set[Subscriber] = set()
        self.trade_subscribers: set[Subscriber] = set()


class MarketData:
    def __init__(self, engine: MatchingEngine, depth: int = 50) -> None:
        self.engine = engine
        self.depth = depth
        self.feeds: dict[str, SymbolFeed] = {}
        self.updates_published = 0
        # When the batch being published became durable (perf_counter): subscribers read
        # `published_at` as they queue a message, for loom_md_fanout_lag_seconds. The service
        # supplies its durable point; on its own, the moment the update is built.
        self.batch_time: Callable[[], float] = time.perf_counter
        self.published_at = 0.0

    def feed(self, symbol: str) -> SymbolFeed:
        feed = self.feeds.get(symbol)
        if feed is None:
            feed = self.feeds[symbol] = SymbolFeed(symbol)
            self._refresh(feed)
        return feed

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

    def on_batch(self, commands: list, results: list[list]) -> None:
        self.on_events(commands, results, BatchEvents(results))

    def on_events(self, _commands: list, _results: list[list], split: BatchEvents) -> None:
        if not self.feeds:
            return  # nobody has subscribed to anything: nothing to compare or publish
        self.published_at = self.batch_time()
        for symbol in split.symbols():
            feed = self.feeds.get(symbol)
            if feed is None or symbol not in self.engine.books:
                continue  # nobody has asked for it yet: the first subscriber gets a snapshot
            changes = self._refresh(feed)
            if changes:
                feed.seq += 1
                self.updates_published += 1
                self._publish(
                    feed.book_subscribers,
                    {"type": "l2update", "symbol": symbol, "seq": feed.seq, "changes": changes},
                )
        for t in split.trades:
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

    def subscriber_counts(self) -> dict[str, int]:
        """Subscriptions by channel, over every symbol (read at scrape time)."""
        feeds = self.feeds.values()
        return {
            "book": sum(len(f.book_subscribers) for f in feeds),
            "trades": sum(len(f.trade_subscribers) for f in feeds),
        }

    def _publish(self, subscribers: set[Subscriber], message: dict) -> None:
        for sub in list(subscribers):
            try:
                sub(message)
            except Exception:
                log.exception("market data subscriber failed; dropping it")
                subscribers.discard(sub)
