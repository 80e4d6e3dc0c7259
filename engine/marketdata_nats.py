"""Market data over NATS: a cluster leader publishes its durable market-data events, one
subject per symbol; `loom marketdata` processes (engine/marketdata_process.py) feed the same
MarketData object from them and serve the WebSocket and REST market-data API.

- `loom.md.<stream>.<symbol>`: one message per batch that touched the symbol: the leader's
  book `seq` and `prev_seq`, the changed levels (as its own subscribers get them), the
  batch's trades and its newest `ts`, and the leader's `epoch` (one per process).
- `loom.mdsnap.<stream>` and `loom.mdsnap.<stream>.<symbol>`: request/reply, answered by the
  leader only (zlib-compressed JSON): the venue's instruments and symbols, then each symbol's
  levels and seq, candles and recent trades (a reply per symbol: a NATS message is at most
  1 MB, and a week of 1-minute candles is most of that). A process starts from them, and
  returns to them on a gap or a new epoch (a new leader counts its seqs afresh, so the
  process offsets them to keep its own subscribers' seqs increasing).

Core NATS (not JetStream): the messages are derived state, rebuilt from the journal by a
restart; a process that misses one sees the gap in `prev_seq` and fetches the state again.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import zlib
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


def snapshot_subject(stream: str, symbol: str = "") -> str:
    return f"loom.mdsnap.{stream}.{symbol}" if symbol else f"loom.mdsnap.{stream}"


class Update(msgspec.Struct):
    epoch: str
    symbol: str
    seq: int
    prev_seq: int
    changes: list[list]
    ts: int
    last_seq: int
    trades: list[Trade] = []


class VenueState(msgspec.Struct):
    epoch: str
    depth: int
    last_seq: int
    ts: int
    instruments: list[dict]
    candles_complete: bool


class SymbolState(msgspec.Struct):
    epoch: str
    seq: int
    bids: list[list[int]]
    asks: list[list[int]]
    minutes: list[list[int]]  # the symbol's 1-minute candles (engine/candles.py export)
    last: list[int]  # [price, ts] of its last trade
    trades: list[Trade]


_encode = msgspec.json.Encoder().encode
_decode_update = msgspec.json.Decoder(Update).decode
_decode_venue = msgspec.json.Decoder(VenueState).decode
_decode_symbol = msgspec.json.Decoder(SymbolState).decode


class MarketDataPublisher:
    """The leader's side: MarketData.on_update hands it each touched symbol's changes after
    a batch; it publishes them on the NATS link's loop (engine/cluster/link.py) and answers
    snapshot requests with state read on the service's loop."""

    def __init__(self, md: MarketData, link, stream: str, leading: Callable[[], bool], trades) -> None:
        self.md, self.link, self.stream, self.leading = md, link, stream, leading
        self.recent_trades = trades  # (symbol, limit) -> [Trade]: the node's order store
        self.epoch = uuid.uuid4().hex[:12]
        self.published = 0
        self.dropped = 0  # updates not published in the current NATS outage
        self._service_loop: asyncio.AbstractEventLoop | None = None
        self._subs: list = []

    def start(self) -> None:
        self._service_loop = asyncio.get_running_loop()
        for symbol in self.md.engine.books:
            self.md.feed(symbol)  # every symbol's seq counts from now, listened to or not
        self.md.on_update = self.on_update
        nc = self.link.nc
        self._subs = [
            self.link.call(nc.subscribe(snapshot_subject(self.stream), cb=self._answer)),
            self.link.call(nc.subscribe(snapshot_subject(self.stream, "*"), cb=self._answer)),
        ]

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
        self.link.loop.create_task(self._publish(subject, data))

    async def _publish(self, subject: str, data: bytes) -> None:
        """Lost while NATS is (a marketdata process sees the gap and resyncs): said once per
        outage, never a traceback per message."""
        try:
            await self.link.nc.publish(subject, data)
        except Exception as exc:
            if not self.dropped:
                log.warning("market data to NATS dropped while it is unreachable (%s)", type(exc).__name__)
            self.dropped += 1
            return
        if self.dropped:
            log.info("market data to NATS again; %d updates were dropped", self.dropped)
            self.dropped = 0

    def state(self, symbol: str) -> bytes | None:
        """The venue's state ("") or one symbol's, compressed; None for an unknown symbol.
        Read on the service's loop, between batches."""
        md = self.md
        if not symbol:
            state: msgspec.Struct = VenueState(
                self.epoch,
                md.depth,
                md.engine.last_seq,
                md.last_ts,
                [msgspec.to_builtins(i) for i in md.engine.instruments.values()],
                md.candles_complete,
            )
        elif symbol in md.engine.books:
            snap = md.snapshot(symbol)
            candles = md.candles.of(symbol)
            state = SymbolState(
                self.epoch,
                snap["seq"],
                snap["bids"],
                snap["asks"],
                list(map(list, candles.minutes)),
                [candles.last, candles.last_ts],
                self.recent_trades(symbol, RECENT_TRADES),
            )
        else:
            return None
        return zlib.compress(_encode(state), 1)

    async def _answer(self, msg) -> None:
        if not self.leading() or self._service_loop is None:
            return  # only the leader answers; the requester retries until one does
        base = snapshot_subject(self.stream)
        symbol = msg.subject[len(base) + 1 :] if msg.subject != base else ""

        async def read() -> bytes | None:
            return self.state(symbol)

        data = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(read(), self._service_loop))
        if data is not None:
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

    async def _ask(self, subject: str, decode):
        """The leader's answer on `subject`, asked until one comes (no leader yet: no
        responders or a timeout)."""
        while True:
            try:
                reply = await self.nc.request(subject, b"", timeout=2.0)
            except Exception as exc:
                log.info("marketdata: waiting for the leader's state on %s (%s)", subject, type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            try:
                return decode(zlib.decompress(reply.data))
            except (zlib.error, msgspec.DecodeError) as exc:
                log.error("marketdata: unreadable state on %s (%s); asking again", subject, exc)
                await asyncio.sleep(0.5)

    async def _sync(self) -> None:
        while True:
            venue = await self._ask(snapshot_subject(self.stream), _decode_venue)
            symbols: dict[str, SymbolState] = {}
            for instrument in venue.instruments:
                symbol = instrument["symbol"]
                symbols[symbol] = await self._ask(snapshot_subject(self.stream, symbol), _decode_symbol)
            if all(s.epoch == venue.epoch for s in symbols.values()):
                break  # (else the leader changed while asking: ask the new one)
        self._load(venue, symbols)
        pending, self.buffer = self.buffer, []
        self.synced.set()
        for update in pending:
            if not self._apply(update):
                self._start_resync(update)
                return
        log.info("marketdata: in sync with leader epoch %s at seq %d", self.epoch, self.books.last_seq)

    def _load(self, venue: VenueState, symbols: dict[str, SymbolState]) -> None:
        md, books = self.md, self.books
        new_epoch = venue.epoch != self.epoch
        self.epoch = venue.epoch
        md.depth = venue.depth
        books.instruments = {i["symbol"]: i for i in venue.instruments}
        books.last_seq = venue.last_seq
        md.last_ts = venue.ts
        md.candles = type(md.candles)(md.candles.days)
        exported: dict[str, dict] = {"minutes": {}, "last": {}}
        for symbol, state in symbols.items():
            exported["minutes"][symbol] = state.minutes
            exported["last"][symbol] = state.last
            self.trades[symbol] = deque(state.trades, maxlen=RECENT_TRADES)
        md.candles.merge_older(exported)
        md.candles_complete = venue.candles_complete
        for symbol, snap in symbols.items():
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
