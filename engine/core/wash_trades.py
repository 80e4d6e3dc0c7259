"""Wash trades: a trade whose buyer and seller have the same beneficial owner.

Two accounts of one owner (the `owner` of their `[[accounts]]` entries) trading with each
other move no risk between owners; it is counted as a wash trade. A trade of an account
with itself (possible only with self-trade prevention off, `stp = NONE`) is one too, marked
`same_account`; with prevention on it never trades, and the prevented trade shows in the
`self_match` indicator of engine/core/surveillance.py instead.
"""

from __future__ import annotations

from engine.core.events import Trade
from engine.core.owners import Owners
from engine.core.surveillance_findings import WASH_TRADE, Finding


class WashTrades:
    def __init__(self, owners: Owners) -> None:
        self.owner_of = owners.get

    def on_trade(self, trade: Trade) -> Finding | None:
        taker, maker = trade.taker_account, trade.maker_account
        owner = self.owner_of(taker, taker)
        if owner != self.owner_of(maker, maker):
            return None
        return Finding(
            WASH_TRADE,
            trade.symbol,
            trade.seq,
            trade.ts,
            owner,
            (taker,) if taker == maker else (taker, maker),
            {
                "trade_id": trade.trade_id,
                "price": trade.price,
                "qty": trade.qty,
                "same_account": taker == maker,
            },
        )
