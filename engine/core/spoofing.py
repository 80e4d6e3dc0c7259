"""Spoofing and layering: orders near the touch that an owner cancels soon after placing them,
while the same owner trades on the other side.

- Near the touch: a resting limit order priced within `near_touch_bps` of the symbol's last
  trade price (the touch the event stream carries; an order before the symbol's first trade
  is not judged).
- Large: its quantity at least `large_multiple` times the symbol's typical order size, an
  exponentially weighted mean of every accepted order's quantity (learned as orders arrive;
  nothing is large before `min_size_samples` orders).
- Spoofing: one large near-touch order cancelled by its owner (a cancel or cancel-all)
  within `cancel_window_s` of its acceptance, while an account of the same owner traded on
  the other side between the two.
- Layering: near-touch orders of one owner and side at `layering_levels` or more distinct
  prices, alive together, each cancelled like that, together large (their summed quantity
  at least `large_multiple` times the typical size) though none need be large alone.

Deterministic given the events (event time `ts`, seq order): a replay finds the same things.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from engine.core.domain import CancelReason, OrderType, Side, TimeInForce
from engine.core.events import OrderAccepted, OrderCancelled, Trade
from engine.core.surveillance_findings import LAYERING, SPOOFING, Finding

_USER_CANCELS = frozenset((int(CancelReason.USER), int(CancelReason.CANCEL_ALL)))
_RESTING = (int(OrderType.LIMIT), int(TimeInForce.GTC))


@dataclass(frozen=True)
class SpoofingConfig:
    large_multiple: float = 5.0
    size_alpha: float = 0.02  # weight of each new order in the typical size
    min_size_samples: int = 20
    near_touch_bps: int = 50
    cancel_window_s: float = 5.0
    layering_levels: int = 3
    max_tracked: int = 100_000  # near-touch orders watched at once (the oldest go first)
    layering_memory: int = 64  # pulled orders per owner, symbol and side a layer is sought among


@dataclass
class _Watched:
    order_id: int
    account: str
    owner: str
    symbol: str
    side: int
    price: int
    qty: int
    ts: int
    typical: float  # the symbol's typical size when the order came


@dataclass
class _Pulled:
    """A watched order cancelled in time while its owner traded on the other side."""

    order: _Watched
    cancel_ts: int
    layered: bool = False


class Spoofing:
    def __init__(self, owner_of: Callable[[str], str], config: SpoofingConfig | None = None) -> None:
        self.owner_of = owner_of
        self.config = config or SpoofingConfig()
        self.window_ns = int(self.config.cancel_window_s * 1e9)
        self.typical: dict[str, float] = {}
        self.samples: dict[str, int] = {}
        self.last_price: dict[str, int] = {}
        self.watched: dict[int, _Watched] = {}
        # (ts, order id) in seq order, oldest first: a dict's front after deletions is slow
        # to find (iteration skips the dead slots), a deque's is not.
        self.arrivals: deque[tuple[int, int]] = deque()
        # (owner, symbol, side) -> ts of the owner's last trade on that side: events come in
        # seq order, so "traded on the other side since the order came" is one comparison.
        self.last_trade: dict[tuple[str, str, int], int] = {}
        # (owner, symbol, side) -> recently pulled orders, for layering
        self.pulled: dict[tuple[str, str, int], deque[_Pulled]] = {}

    def on_accepted(self, ev: OrderAccepted) -> None:
        cfg = self.config
        symbol = ev.symbol
        typical = self.typical.get(symbol, 0.0)
        samples = self.samples.get(symbol, 0)
        last = self.last_price.get(symbol)
        if (
            (ev.order_type, ev.tif) == _RESTING
            and last is not None
            and samples >= cfg.min_size_samples
            and abs(ev.price - last) * 10_000 <= cfg.near_touch_bps * last
        ):
            self.arrivals.append((ev.ts, ev.order_id))
            self.watched[ev.order_id] = _Watched(
                ev.order_id,
                ev.account,
                self.owner_of(ev.account),
                symbol,
                ev.side,
                ev.price,
                ev.qty,
                ev.ts,
                typical,
            )
        # The order is judged against the size before it: a large one does not excuse itself.
        self.typical[symbol] = ev.qty if samples == 0 else typical + cfg.size_alpha * (ev.qty - typical)
        self.samples[symbol] = samples + 1
        self._forget(ev.ts)

    def _forget(self, now: int) -> None:
        """Drops watched orders too old to count if cancelled now, and the oldest beyond the cap."""
        horizon = now - self.window_ns
        watched, arrivals = self.watched, self.arrivals
        while arrivals and (arrivals[0][0] < horizon or len(watched) > self.config.max_tracked):
            watched.pop(arrivals.popleft()[1], None)  # gone already if it was cancelled

    def on_trade(self, trade: Trade) -> None:
        self.last_price[trade.symbol] = trade.price
        taker_side = trade.aggressor_side
        maker_side = int(Side.SELL) if taker_side == Side.BUY else int(Side.BUY)
        last = self.last_trade
        last[(self.owner_of(trade.taker_account), trade.symbol, taker_side)] = trade.ts
        last[(self.owner_of(trade.maker_account), trade.symbol, maker_side)] = trade.ts

    def on_cancelled(self, ev: OrderCancelled) -> list[Finding]:
        order = self.watched.pop(ev.order_id, None)
        if order is None or ev.reason not in _USER_CANCELS or ev.ts - order.ts > self.window_ns:
            return []
        other = int(Side.SELL) if order.side == Side.BUY else int(Side.BUY)
        traded_at = self.last_trade.get((order.owner, order.symbol, other), -1)
        if traded_at < order.ts:
            return []
        found: list[Finding] = []
        large = order.qty >= self.config.large_multiple * order.typical
        if large:
            found.append(
                Finding(
                    SPOOFING,
                    order.symbol,
                    ev.seq,
                    ev.ts,
                    order.owner,
                    (order.account,),
                    {
                        "order_id": order.order_id,
                        "side": Side(order.side).name.lower(),
                        "price": order.price,
                        "qty": order.qty,
                        "typical_qty": round(order.typical, 2),
                        "lived_ms": (ev.ts - order.ts) // 1_000_000,
                        "other_side_trade_ts": traded_at,
                    },
                )
            )
        layered = self._layering(_Pulled(order, ev.ts), ev)
        if layered is not None:
            found.append(layered)
        return found

    def _layering(self, pulled: _Pulled, ev: OrderCancelled) -> Finding | None:
        order = pulled.order
        key = (order.owner, order.symbol, order.side)
        recent = self.pulled.get(key)
        if recent is None:
            recent = self.pulled[key] = deque(maxlen=self.config.layering_memory)
        while recent and recent[0].cancel_ts < order.ts - self.window_ns:
            recent.popleft()
        recent.append(pulled)
        # Orders alive together with this one, not yet part of a layering finding.
        group = [
            p for p in recent if not p.layered and p.order.ts <= pulled.cancel_ts and order.ts <= p.cancel_ts
        ]
        prices = {p.order.price for p in group}
        qty = sum(p.order.qty for p in group)
        cfg = self.config
        if len(prices) < cfg.layering_levels or qty < cfg.large_multiple * order.typical:
            return None
        for p in group:
            p.layered = True
        return Finding(
            LAYERING,
            order.symbol,
            ev.seq,
            ev.ts,
            order.owner,
            tuple(sorted({p.order.account for p in group})),
            {
                "side": Side(order.side).name.lower(),
                "order_ids": [p.order.order_id for p in group],
                "prices": sorted(prices),
                "qty": qty,
                "typical_qty": round(order.typical, 2),
            },
        )
