"""The books a `loom marketdata` process knows: price levels only (the top levels the
leader publishes), no orders. They stand where MarketData reads the matching engine's books
(engine/market_data.py), so the same code derives updates, snapshots and tickers from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Level:
    qty: int


class LevelSide:
    def __init__(self, descending: bool) -> None:
        self.descending = descending
        self.levels: dict[int, Level] = {}

    def set(self, price: int, qty: int) -> None:
        if qty:
            self.levels[price] = Level(qty)
        else:
            self.levels.pop(price, None)

    def replace(self, levels: list[list[int]]) -> None:
        self.levels = {p: Level(q) for p, q in levels if q}

    @property
    def best(self) -> int | None:
        if not self.levels:
            return None
        return max(self.levels) if self.descending else min(self.levels)

    def depth(self, n: int) -> list[tuple[int, int, int]]:
        """The best n levels as (price, qty, orders); the order count is not published (0)."""
        prices = sorted(self.levels, reverse=self.descending)[:n]
        return [(p, self.levels[p].qty, 0) for p in prices]


class LevelBook:
    def __init__(self) -> None:
        self.bids = LevelSide(descending=True)
        self.asks = LevelSide(descending=False)

    def apply(self, changes: list[list]) -> None:
        """[side, price, qty] as in an l2update (qty 0 removes the level)."""
        for side, price, qty in changes:
            (self.bids if side == "bid" else self.asks).set(price, qty)


@dataclass
class LevelBooks:
    """What MarketData and the market-data handlers read of an engine: books by symbol, the
    instruments, and the newest journal seq seen."""

    books: dict[str, LevelBook] = field(default_factory=dict)
    instruments: dict = field(default_factory=dict)
    last_seq: int = 0
