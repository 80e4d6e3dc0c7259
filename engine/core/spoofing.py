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
  at least `large_multiple` times the typical size) though none need be large alone; each at
  least `layer_min_multiple` times the typical size (a layer of crumbs shows no depth).

Cheap per event (it runs for every order, off the order path but on the same GIL): a watched
order is a tuple, the owner is looked up only when an order is pulled in time, and a layer is
sought among the newest pulled orders alive with this one, stopping as soon as they qualify;
those found are consumed, so the search stays short.

Deterministic given the events (event time `ts`, seq order): a replay finds the same things.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from engine.core.domain import CancelReason, OrderType, Side, TimeInForce
from engine.core.events import OrderAccepted, OrderCancelled, Trade
from engine.core.owners import Owners
from engine.core.surveillance_findings import LAYERING, SPOOFING, Finding

_USER_CANCELS = frozenset((int(CancelReason.USER), int(CancelReason.CANCEL_ALL)))
_LIMIT, _GTC = int(OrderType.LIMIT), int(TimeInForce.GTC)
_BUY, _SELL = int(Side.BUY), int(Side.SELL)


@dataclass(frozen=True)
class SpoofingConfig:
    large_multiple: float = 5.0
    size_alpha: float = 0.02  # weight of each new order in the typical size
    min_size_samples: int = 20
    near_touch_bps: int = 50
    cancel_window_s: float = 5.0
    layering_levels: int = 3
    layer_min_multiple: float = 1.0  # an order smaller than this times the typical size is no layer
    max_tracked: int = 100_000  # near-touch orders watched at once (the oldest go first)
    layering_memory: int = 64  # pulled orders per owner, symbol and side a layer is sought among


# A watched order: (account, side, price, qty, ts, typical size when it came)
_Watched = tuple[str, int, int, int, int, float]
# A pulled order: (its ts, cancel ts, price, qty, order id, account)
_Pulled = tuple[int, int, int, int, int, str]


class Spoofing:
    def __init__(self, owners: Owners, config: SpoofingConfig | None = None) -> None:
        self.owners = owners
        self.config = config or SpoofingConfig()
        self.window_ns = int(self.config.cancel_window_s * 1e9)
        self.layer_min = self.config.layer_min_multiple
        self.sizes: dict[str, list[float]] = {}  # symbol -> [typical size, orders seen]
        self.last_price: dict[str, int] = {}
        self.watched: dict[int, _Watched] = {}
        # Order ids in arrival order: a dict's front after deletions is slow to find
        # (iteration skips the dead slots), a deque's is not.
        self.arrivals: deque[int] = deque()
        # (owner, symbol, side) -> ts of the owner's last trade on that side: events come in
        # seq order, so "traded on the other side since the order came" is one comparison.
        self.last_trade: dict[tuple[str, str, int], int] = {}
        # (owner, symbol, side) -> recently pulled orders, oldest cancel first, for layering
        self.pulled: dict[tuple[str, str, int], deque[_Pulled]] = {}

    def on_accepted(self, ev: OrderAccepted) -> None:
        cfg = self.config
        symbol, qty = ev.symbol, ev.qty
        sized = self.sizes.get(symbol)
        if sized is None:
            self.sizes[symbol] = [float(qty), 1]
            return
        typical, samples = sized
        # The order is judged against the size before it: a large one does not excuse itself.
        sized[0] = typical + cfg.size_alpha * (qty - typical)
        sized[1] = samples + 1
        # Cheap filters first: most orders are too small to be a layer, let alone a spoof.
        if qty < self.layer_min * typical or samples < cfg.min_size_samples or ev.order_type != _LIMIT:
            return
        last = self.last_price.get(symbol)
        if ev.tif != _GTC or last is None or abs(ev.price - last) * 10_000 > cfg.near_touch_bps * last:
            return
        ts = ev.ts
        self.watched[ev.order_id] = (ev.account, ev.side, ev.price, qty, ts, typical)
        self.arrivals.append(ev.order_id)
        self._forget(ts)

    def _forget(self, now: int) -> None:
        """Drops watched orders too old to count if cancelled now, and the oldest beyond the cap."""
        horizon = now - self.window_ns
        watched, arrivals, cap = self.watched, self.arrivals, self.config.max_tracked
        while arrivals:
            order = watched.get(arrivals[0])
            if order is not None and order[4] >= horizon and len(watched) <= cap:
                return
            oid = arrivals.popleft()
            if order is not None:
                del watched[oid]

    def on_trade(self, trade: Trade) -> None:
        symbol, ts = trade.symbol, trade.ts
        self.last_price[symbol] = trade.price
        taker_side = trade.aggressor_side
        owner_of = self.owners.get
        taker, maker = trade.taker_account, trade.maker_account
        last = self.last_trade
        last[(owner_of(taker, taker), symbol, taker_side)] = ts
        last[(owner_of(maker, maker), symbol, _SELL if taker_side == _BUY else _BUY)] = ts

    def on_cancelled(self, ev: OrderCancelled) -> list[Finding]:
        order = self.watched.pop(ev.order_id, None)
        if order is None or ev.reason not in _USER_CANCELS:
            return []
        account, side, price, qty, ts, typical = order
        if ev.ts - ts > self.window_ns:
            return []
        owner = self.owners(account)
        symbol = ev.symbol
        traded_at = self.last_trade.get((owner, symbol, _SELL if side == _BUY else _BUY), -1)
        if traded_at < ts:
            return []
        found: list[Finding] = []
        if qty >= self.config.large_multiple * typical:
            found.append(
                Finding(
                    SPOOFING,
                    symbol,
                    ev.seq,
                    ev.ts,
                    owner,
                    (account,),
                    {
                        "order_id": ev.order_id,
                        "side": Side(side).name.lower(),
                        "price": price,
                        "qty": qty,
                        "typical_qty": round(typical, 2),
                        "lived_ms": (ev.ts - ts) // 1_000_000,
                        "other_side_trade_ts": traded_at,
                    },
                )
            )
        layered = self._layering(
            owner, symbol, side, typical, (ts, ev.ts, price, qty, ev.order_id, account), ev
        )
        if layered is not None:
            found.append(layered)
        return found

    def _layering(
        self, owner: str, symbol: str, side: int, typical: float, pulled: _Pulled, ev: OrderCancelled
    ) -> Finding | None:
        cfg = self.config
        key = (owner, symbol, side)
        recent = self.pulled.get(key)
        if recent is None:
            recent = self.pulled[key] = deque(maxlen=cfg.layering_memory)
        placed = pulled[0]
        while recent and recent[0][1] < placed - self.window_ns:
            recent.popleft()
        recent.append(pulled)
        # The newest pulled orders cancelled after this one came (alive together with it),
        # until they span enough prices and size: a suffix of `recent`.
        need, levels = cfg.large_multiple * typical, cfg.layering_levels
        prices: set[int] = set()
        qty = taken = 0
        for p in reversed(recent):
            if p[1] < placed:
                return None
            prices.add(p[2])
            qty += p[3]
            taken += 1
            if len(prices) >= levels and qty >= need:
                break
        else:
            return None
        group = [recent.pop() for _ in range(taken)]  # consumed: no order counts in two layerings
        return Finding(
            LAYERING,
            symbol,
            ev.seq,
            ev.ts,
            owner,
            tuple(sorted({p[5] for p in group})),
            {
                "side": Side(side).name.lower(),
                "order_ids": sorted(p[4] for p in group),
                "prices": sorted(prices),
                "qty": qty,
                "typical_qty": round(typical, 2),
            },
        )
