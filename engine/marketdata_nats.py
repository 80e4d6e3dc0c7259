"""Market data over NATS: a cluster leader publishes its durable market-data events, one
subject per symbol; `loom marketdata` processes (engine/marketdata_process.py) feed the same
MarketData object from them and serve the WebSocket and REST market-data API.

- `loom.md.<stream>.<symbol>`: one message per batch that touched the symbol: the leader's
  book `seq` and `prev_seq`, the changed levels (as its own subscribers get them), the
  batch's trades and its newest `ts`, and the leader's `epoch` (one per process).
- `loom.mdsnap.<stream>`: request/reply, answered by the leader only: every book's levels
  and seq, the candles, recent trades and the instruments. A process starts from it, and
  returns to it on a gap or a new epoch (a new leader counts its seqs afresh, so the
  process offsets them to keep its own subscribers' seqs increasing).

Core NATS (not JetStream): the messages are derived state, rebuilt from the journal by a
restart; a process that misses one sees the gap in `prev_seq` and fetches the state again.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Callable

import msgspec

from engine.core.events import Trade
from engine.market_data import MarketData, SymbolFeed
from engine.marketdata_books import LevelBook, LevelBooks

log = logging.getLogger("loom.marketdata")

RECENT_TRADES = 1_000  # per symbol, for GET /v1/trades on a marketdata process


def update_subject(stream: str, symbol: str = "*") -> str:
    return f"loom.md.{stream}.{symbol}"


def snapshot_subject(stream: str) -> str:
    return f"loom.mdsnap.{stream}"


class Update(msgspec.Struct):
    epoch: str
    symbol: str
    seq: int
    prev_seq: int
    changes: list[list]
    ts: int
    last_seq: int
    trades: list[Trade] = []


class BookState(msgspec.Struct):
    seq: int
    bids: list[list[int]]
    asks: list[list[int]]


class State(msgspec.Struct):
    epoch: str
    depth: int
    last_seq: int
    ts: int
    instruments: list[dict]
    books: dict[str, BookState]
    candles: dict
    candles_complete: bool
    trades: dict[str, list[Trade]]


_encode = msgspec.json.Encoder().encode
_decode_update = msgspec.json.Decoder(Update).decode
_decode_state = msgspec.json.Decoder(State).decode


class MarketDataPublisher:
    """The leader's side: MarketData.on_update hands it each touched symbol's changes after
    a batch; it publishes them on the NATS link's loop (engine/cluster/link.py) and answers
    snapshot requests with state read on the service's loop."""

    def __init__(self, md: MarketData, link, stream: str, leading: Callable[[], bool], trades) -> None:
        self.md, self.link, self.stream, self.leading = md, link, stream, leading
        self.recent_trades = trades  # (symbol, limit) -> [Trade]: the node's order store
        self.epoch = uuid.uuid4().hex[:12]
        self.published = 0
        self._service_loop: asyncio.AbstractEventLoop | None = None
        self._sub = None

    def start(self) -> None:
        self._service_loop = asyncio.get_running_loop()
        for symbol in self.md.engine.books:
            self.md.feed(symbol)  # every symbol's seq counts from now, listened to or not
        self.md.on_update = self.on_update
        self._sub = self.link.call(self.link.nc.subscribe(snapshot_subject(self.stream), cb=self._answer))

    def on_update(self, feed: SymbolFeed, changes: list[list], trades: list) -> None:
        if not (changes or trades) or not self.leading():
            return
        message = Update(
            self.epoch,
            feed.symbol,
            feed.seq,
            feed.seq - 1 if changes else feed.seq,
            changes,
            self.md.last_ts,
            self.md.engine.last_seq,
            trades,
        )
        data = _encode(message)
        subject = update_subject(self.stream, feed.symbol)
        self.published += 1
        self.link.loop.call_soon_threadsafe(self._send, subject, data)

    def _send(self, subject: str, data: bytes) -> None:
        self.link.loop.create_task(self.link.nc.publish(subject, data))

    def state(self) -> bytes:
        """Everything a marketdata process starts from (on the service's loop, between batches)."""
        md = self.md
        books = {}
        for symbol in md.engine.books:
            snap = md.snapshot(symbol)
            books[symbol] = BookState(snap["seq"], snap["bids"], snap["asks"])
        return _encode(
            State(
                self.epoch,
                md.depth,
                md.engine.last_seq,
                md.last_ts,
                [msgspec.to_builtins(i) for i in md.engine.instruments.values()],
                books,
                md.candles.export(),
                md.candles_complete,
                {s: self.recent_trades(s, RECENT_TRADES) for s in md.engine.books},
            )
        )

    async def _answer(self, msg) -> None:
        if not self.leading() or self._service_loop is None:
            return  # only the leader answers; the requester retries until one does

        async def read() -> bytes:
            return self.state()

        data = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(read(), self._service_loop))
        await msg.respond(data)


class NatsFeed:
    """A marketdata process's side: feeds `md` (over `books`) from the leader's subjects.
    Out of sync (starting, after a gap or a new leader) it buffers the updates, fetches the
    state and replays what came after it."""

    def __init__(self, nc, stream: str, md: MarketData, books: LevelBooks) -> None:
        self.nc, self.stream, self.md, self.books = nc, stream, md, books
        self.epoch = ""
        self.offset: dict[str, int] = {}  # symbol -> local seq minus the leader's
        self.trades: dict[str, deque[Trade]] = {}
        self.synced = asyncio.Event()
        self.buffer: list[Update] = []
        self.applied = 0
        self._resync: asyncio.Task | None = None

    async def start(self) -> None:
        await self.nc.subscribe(update_subject(self.stream), cb=self._on_msg)
        self._resync = asyncio.get_running_loop().create_task(self._sync())

    async def close(self) -> None:
        if self._resync is not None:
            self._resync.cancel()

    def recent_trades(self, symbol: str, limit: int = 100) -> list[Trade]:
        trades = self.trades.get(symbol)
        return list(trades)[-limit:] if trades else []

    async def _on_msg(self, msg) -> None:
        try:
            update = _decode_update(msg.data)
        except msgspec.DecodeError as exc:
            log.warning("marketdata: unreadable update on %s dropped: %s", msg.subject, exc)
            return
        if not self.synced.is_set():
            self.buffer.append(update)
        elif not self._apply(update):
            self._start_resync(update)

    def _start_resync(self, update: Update) -> None:
        self.md.observer.md_feed_resync("leader" if update.epoch != self.epoch else "gap")
        self.synced.clear()
        self._resync = asyncio.get_running_loop().create_task(self._sync())

    async def _sync(self) -> None:
        while True:
            try:
                reply = await self.nc.request(snapshot_subject(self.stream), b"", timeout=2.0)
                break
            except Exception as exc:  # no leader yet (no responders, timeout): ask again
                log.info("marketdata: waiting for the leader's state (%s)", type(exc).__name__)
                await asyncio.sleep(0.5)
        try:
            self._load(_decode_state(reply.data))
        except Exception:
            log.exception("marketdata: the leader's state could not be loaded; asking again")
            await asyncio.sleep(0.5)
            self._resync = asyncio.get_running_loop().create_task(self._sync())
            return
        pending, self.buffer = self.buffer, []
        self.synced.set()
        for update in pending:
            if not self._apply(update):
                self._start_resync(update)
                return
        log.info("marketdata: in sync with leader epoch %s at seq %d", self.epoch, self.books.last_seq)

    def _load(self, state: State) -> None:
        md, books = self.md, self.books
        new_epoch = state.epoch != self.epoch
        self.epoch = state.epoch
        md.depth = state.depth
        books.instruments = {i["symbol"]: i for i in state.instruments}
        books.last_seq = state.last_seq
        md.last_ts = state.ts
        md.candles = type(md.candles)(md.candles.days)
        md.candles.merge_older(state.candles)
        md.candles_complete = state.candles_complete
        for symbol, trades in state.trades.items():
            self.trades[symbol] = deque(trades, maxlen=RECENT_TRADES)
        for symbol, snap in state.books.items():
            book = books.books.get(symbol)
            if book is None:
                book = books.books[symbol] = LevelBook()
            book.bids.replace(snap.bids)
            book.asks.replace(snap.asks)
            feed = md.feeds.get(symbol)
            if feed is None:
                self.offset[symbol] = 0  # the leader's seqs, as the node's own subscribers see them
                md.feed(symbol).seq = snap.seq
                continue
            if new_epoch:  # a new leader counts from its own start: continue after ours
                self.offset[symbol] = feed.seq + 1 - snap.seq
            md.levels_replaced(feed, snap.seq + self.offset[symbol])

    def _apply(self, u: Update) -> bool:
        """One update in order: False when it shows a gap (or a new leader)."""
        if u.epoch != self.epoch:
            return False
        feed = self.md.feeds.get(u.symbol)
        book = self.books.books.get(u.symbol)
        if feed is None or book is None:
            return False  # a symbol added since the state was read
        offset = self.offset[u.symbol]
        if u.seq + offset < feed.seq or (u.seq + offset == feed.seq and u.prev_seq != u.seq):
            return True  # already in the state this process started from
        if u.prev_seq + offset != feed.seq:
            log.warning(
                "marketdata: %s gap: update %d follows %d, not %d",
                u.symbol,
                u.seq,
                u.prev_seq,
                feed.seq - offset,
            )
            return False
        book.apply(u.changes)
        self.books.last_seq = max(self.books.last_seq, u.last_seq)
        if u.trades:
            self.trades.setdefault(u.symbol, deque(maxlen=RECENT_TRADES)).extend(u.trades)
        self.md.publish(u.ts, u.trades, (u.symbol,))
        self.applied += 1
        return feed.seq == u.seq + offset
