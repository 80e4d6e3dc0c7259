"""OHLCV candles and the 24 h ticker statistics, derived from the durable trade events only.

Bucket boundaries and the 24 h window come from the trades' own `ts` (the sequencer's
stamp), never from a clock, so replaying the same journal rebuilds the same candles: that is
how a restart or a failover reproduces them (engine/candle_history.py).

Each (symbol, interval) keeps at most `keep` buckets (the newest); `keep_for(days)` sizes
them so every interval covers the same span. The 24 h statistics are the sum of the
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


def keep_for(days: int) -> dict[str, int]:
    """Buckets kept per interval so that each covers `days` days."""
    return {name: max(1, days * DAY_NS // width) for name, width in INTERVALS.items()}


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
    __slots__ = ("series", "last", "last_ts", "_day")

    def __init__(self, keep: dict[str, int]) -> None:
        self.series: dict[str, deque[Bucket]] = {name: deque(maxlen=keep[name]) for name in INTERVALS}
        self.last = 0  # last trade price
        self.last_ts = 0
        self._day: list[int] | None = None  # [window start minute ns, volume, high, low, trades]

    def add(self, ts: int, price: int, qty: int) -> list[tuple[str, Bucket]]:
        """One trade; returns the (interval, bucket) it changed in each series."""
        changed = []
        for name, width in INTERVALS.items():
            series = self.series[name]
            start = ts - ts % width
            if series and series[-1][0] == start:
                b = series[-1]
                b[2] = max(b[2], price)
                b[3] = min(b[3], price)
                b[4] = price
                b[5] += qty
                b[6] += 1
            elif series and series[-1][0] > start:
                continue  # events are in sequence order, whose ts never goes back; guard only
            else:
                b = [start, price, price, price, price, qty, 1]
                series.append(b)
            changed.append((name, b))
        self.last, self.last_ts = price, ts
        day = self._day
        if day is not None and ts - ts % MINUTE - DAY_NS + MINUTE == day[0]:
            day[1] += qty
            day[2] = max(day[2], price) if day[4] else price
            day[3] = min(day[3], price) if day[4] else price
            day[4] += 1
        else:
            self._day = None  # the window moved: recomputed on the next read
        return changed

    def day(self, now_ts: int) -> list[int]:
        """[window start, volume, high, low, trades] of the 24 h ending at `now_ts`'s minute."""
        lo = now_ts - now_ts % MINUTE - DAY_NS + MINUTE
        day = self._day
        if day is None or day[0] != lo:
            volume = trades = 0
            high = low = 0
            for b in reversed(self.series["1m"]):
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
        self.keep = keep_for(days)
        self.symbols: dict[str, SymbolCandles] = {}

    def of(self, symbol: str) -> SymbolCandles:
        found = self.symbols.get(symbol)
        if found is None:
            found = self.symbols[symbol] = SymbolCandles(self.keep)
        return found

    def add(self, symbol: str, ts: int, price: int, qty: int) -> list[tuple[str, Bucket]]:
        return self.of(symbol).add(ts, price, qty)

    def query(self, symbol: str, interval: str, start: int, end: int, limit: int) -> list[Bucket]:
        """The buckets starting in [start, end) (0: unbounded), oldest first, at most `limit`
        (the newest ones when there are more)."""
        found = self.symbols.get(symbol)
        if found is None:
            return []
        out = []
        for b in reversed(found.series[interval]):
            if end and b[0] >= end:
                continue
            if b[0] < start or len(out) == limit:
                break
            out.append(b)
        out.reverse()
        return out

    def export(self) -> dict:
        """Plain data (picklable): {symbol: {interval: [bucket, ...]}, "last": {symbol: [price, ts]}}."""
        return {
            "series": {
                s: {n: list(map(list, c.series[n])) for n in INTERVALS} for s, c in self.symbols.items()
            },
            "last": {s: [c.last, c.last_ts] for s, c in self.symbols.items()},
        }

    def merge_older(self, exported: dict) -> None:
        """Put candles read back from history in front of the live ones (built from the
        trades after the history's end). A bucket both hold is combined: open from the
        older part, close from the live one."""
        for symbol, series in exported["series"].items():
            mine = self.of(symbol)
            for name, older in series.items():
                live = mine.series[name]
                merged: deque[Bucket] = deque(older, maxlen=live.maxlen)
                for b in live:
                    if merged and merged[-1][0] == b[0]:
                        m = merged[-1]
                        m[2], m[3], m[4] = max(m[2], b[2]), min(m[3], b[3]), b[4]
                        m[5] += b[5]
                        m[6] += b[6]
                    elif not merged or merged[-1][0] < b[0]:
                        merged.append(b)
                mine.series[name] = merged
            price, ts = exported["last"][symbol]
            if ts > mine.last_ts:
                mine.last, mine.last_ts = price, ts
            mine._day = None
