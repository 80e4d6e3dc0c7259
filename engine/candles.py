"""OHLCV candles and the 24 h ticker statistics, derived from the durable trade events only.

Bucket boundaries and the 24 h window come from the trades' own `ts` (the sequencer's
stamp), never from a clock, so replaying the same journal rebuilds the same candles: that is
how a restart or a failover reproduces them (engine/candle_history.py).

A trade updates one 1-minute bucket (this runs on the commit loop, per trade: it must stay
cheap); 5m and 1h candles are rolled up from the 1-minute ones when asked for. Each symbol
keeps the newest `days` of 1-minute buckets. The 24 h statistics are the sum of the
1-minute buckets of the window ending at the newest trade's minute: updated in O(1) per
trade, recomputed (at most 1,440 buckets) only when the window's start minute moves.
"""

from __future__ import annotations

from collections import deque

NS = 1_000_000_000
INTERVALS: dict[str, int] = {"1m": 60 * NS, "5m": 300 * NS, "1h": 3_600 * NS}
DAY_NS = 86_400 * NS
MINUTE = INTERVALS["1m"]
DEFAULT_DAYS = 7  # 10,080 one-minute candles per symbol

# A bucket: [start_ns, open, high, low, close, volume, trades] (a list: updated in place).
Bucket = list[int]


def rollup(minutes, width: int, start: int = 0, end: int = 0) -> list[Bucket]:
    """1-minute buckets (oldest first) as buckets of `width`, those starting in [start, end)."""
    out: list[Bucket] = []
    for m in minutes:
        at = m[0] - m[0] % width
        if at < start or (end and at >= end):
            continue
        if out and out[-1][0] == at:
            b = out[-1]
            b[2] = max(b[2], m[2])
            b[3] = min(b[3], m[3])
            b[4] = m[4]
            b[5] += m[5]
            b[6] += m[6]
        else:
            out.append([at, *m[1:]])
    return out


def candle_json(symbol: str, interval: str, b: Bucket) -> dict:
    return {
        "symbol": symbol,
        "interval": interval,
        "start": b[0],
        "open": b[1],
        "high": b[2],
        "low": b[3],
        "close": b[4],
        "volume": b[5],
        "trades": b[6],
    }


class SymbolCandles:
    __slots__ = ("minutes", "last", "last_ts", "_day")

    def __init__(self, keep: int) -> None:
        self.minutes: deque[Bucket] = deque(maxlen=keep)
        self.last = 0  # last trade price
        self.last_ts = 0
        self._day: list[int] | None = None  # [window start minute ns, volume, high, low, trades]

    def add(self, ts: int, price: int, qty: int) -> None:
        start = ts - ts % MINUTE
        minutes = self.minutes
        if minutes and minutes[-1][0] == start:
            b = minutes[-1]
            if price > b[2]:
                b[2] = price
            elif price < b[3]:
                b[3] = price
            b[4] = price
            b[5] += qty
            b[6] += 1
        elif not minutes or minutes[-1][0] < start:  # (the ts of sequenced events never goes back)
            minutes.append([start, price, price, price, price, qty, 1])
        self.last, self.last_ts = price, ts
        day = self._day
        if day is not None:
            if start - DAY_NS + MINUTE != day[0]:
                self._day = None  # the window moved: recomputed on the next read
            elif day[4]:
                day[1] += qty
                if price > day[2]:
                    day[2] = price
                elif price < day[3]:
                    day[3] = price
                day[4] += 1
            else:
                day[1:] = [qty, price, price, 1]

    def current(self, interval: str, since: int) -> list[Bucket]:
        """The buckets of `interval` from the one holding `since` on (for a push)."""
        width = INTERVALS[interval]
        lo = since - since % width
        recent = []
        for m in reversed(self.minutes):
            if m[0] < lo:
                break
            recent.append(m)
        recent.reverse()
        return rollup(recent, width)

    def day(self, now_ts: int) -> list[int]:
        """[window start, volume, high, low, trades] of the 24 h ending at `now_ts`'s minute."""
        lo = now_ts - now_ts % MINUTE - DAY_NS + MINUTE
        day = self._day
        if day is None or day[0] != lo:
            volume = trades = 0
            high = low = 0
            for b in reversed(self.minutes):
                if b[0] < lo:
                    break
                if b[0] > now_ts:
                    continue
                high = max(high, b[2]) if trades else b[2]
                low = min(low, b[3]) if trades else b[3]
                volume += b[5]
                trades += b[6]
            day = [lo, volume, high, low, trades]
            if now_ts >= self.last_ts:
                self._day = day  # cache only a window that ends at the newest trade or later
        return day


class Candles:
    def __init__(self, days: int = DEFAULT_DAYS) -> None:
        self.days = days
        self.keep = max(1, days * DAY_NS // MINUTE)  # 1-minute buckets per symbol
        self.symbols: dict[str, SymbolCandles] = {}

    def of(self, symbol: str) -> SymbolCandles:
        found = self.symbols.get(symbol)
        if found is None:
            found = self.symbols[symbol] = SymbolCandles(self.keep)
        return found

    def add(self, symbol: str, ts: int, price: int, qty: int) -> None:
        found = self.symbols.get(symbol)
        if found is None:
            found = self.of(symbol)
        found.add(ts, price, qty)

    def query(self, symbol: str, interval: str, start: int, end: int, limit: int) -> list[Bucket]:
        """The buckets of `interval` starting in [start, end) (0: unbounded), oldest first,
        at most `limit` (the newest ones when there are more)."""
        found = self.symbols.get(symbol)
        if found is None:
            return []
        width = INTERVALS[interval]
        minutes = [m for m in found.minutes if m[0] >= start - start % width and (not end or m[0] < end)]
        return rollup(minutes, width, start, end)[-limit:]

    def export(self) -> dict:
        """Plain data (picklable): 1-minute buckets and the last trade, by symbol."""
        return {
            "minutes": {s: list(map(list, c.minutes)) for s, c in self.symbols.items()},
            "last": {s: [c.last, c.last_ts] for s, c in self.symbols.items()},
        }

    def merge_older(self, exported: dict) -> None:
        """Put candles read back from history in front of the live ones (built from the
        trades after the history's end). A minute both hold is combined: open from the
        older part, close from the live one."""
        for symbol, older in exported["minutes"].items():
            mine = self.of(symbol)
            merged: deque[Bucket] = deque(older, maxlen=self.keep)
            for b in mine.minutes:
                if merged and merged[-1][0] == b[0]:
                    m = merged[-1]
                    m[2], m[3], m[4] = max(m[2], b[2]), min(m[3], b[3]), b[4]
                    m[5] += b[5]
                    m[6] += b[6]
                elif not merged or merged[-1][0] < b[0]:
                    merged.append(b)
            mine.minutes = merged
            price, ts = exported["last"][symbol]
            if ts > mine.last_ts:
                mine.last, mine.last_ts = price, ts
            mine._day = None
