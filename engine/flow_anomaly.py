"""Anomaly detection that learns: EWMA z-scores over per-account order-flow features and
per-symbol price moves, in intervals of event time.

Each closed interval (`interval_s` of the sequencer's `ts`) yields, for every account active
in it, four features:
- order_rate:     log(1 + orders per second);
- cancel_ratio:   orders it cancelled itself per order placed;
- order_size:     log(1 + mean quantity of its orders);
- aggressiveness: the share of its trades it took as the aggressor;
and for every symbol that traded, price_move: |log(last / previous interval's last)|.
A feature's model is an exponentially weighted mean and variance (weight `alpha`): one
shared by all accounts (an account is judged against the population, so a new account is
judged at once), one per symbol for price moves. An observation scores z = (x - mean) / sd
before it updates the model (an outlier does not excuse itself), and only once the model has
seen `min_samples` observations. Only deviations upward score (a quiet account is no abuse).

Deterministic given the events: no clock, intervals close when event time passes them (or
when `advance` is told the time at evaluation, off the order path). Outside engine/core
only because it uses floats and `math`; it decides nothing about orders.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from operator import attrgetter

from engine.core.batch_events import BatchEvents
from engine.core.domain import CancelReason
from engine.core.events import OrderAccepted, OrderCancelled, Trade

ORDER_RATE = "order_rate"
CANCEL_RATIO = "cancel_ratio"
ORDER_SIZE = "order_size"
AGGRESSIVENESS = "aggressiveness"
FEATURES = (ORDER_RATE, CANCEL_RATIO, ORDER_SIZE, AGGRESSIVENESS)
_USER_CANCELS = frozenset((int(CancelReason.USER), int(CancelReason.CANCEL_ALL)))
# An account's counts in the open interval, a plain list of ints (no object per event):
_ORDERS, _QTY, _CANCELS, _TRADES, _TAKEN = range(5)
_seq = attrgetter("seq")


@dataclass(frozen=True)
class AnomalyConfig:
    interval_s: float = 10.0
    alpha: float = 0.05
    min_samples: int = 30
    z_threshold: float = 6.0  # a price move or feature this many sds above the mean is a finding
    min_sd: float = 0.05  # floor of the standard deviation (a constant feature makes sd 0)


class Ewma:
    """An exponentially weighted mean and variance (West's incremental form)."""

    __slots__ = ("mean", "var", "n")

    def __init__(self) -> None:
        self.mean = 0.0
        self.var = 0.0
        self.n = 0

    def score(self, x: float, alpha: float, min_samples: int, min_sd: float) -> float:
        """The z-score of x against the model so far (0 while it is still learning), then learns x."""
        z = 0.0
        if self.n >= min_samples:
            z = max(0.0, (x - self.mean) / max(math.sqrt(self.var), min_sd))
        if self.n == 0:
            self.mean = x
        else:
            diff = x - self.mean
            incr = alpha * diff
            self.mean += incr
            self.var = (1 - alpha) * (self.var + diff * incr)
        self.n += 1
        return z


@dataclass
class FlowScores:
    """The z-scores of the last closed interval: per account and feature, per symbol."""

    interval: int = -1
    accounts: dict[str, dict[str, float]] = field(default_factory=dict)
    features: dict[str, dict[str, float]] = field(default_factory=dict)  # account -> feature values
    price_moves: dict[str, float] = field(default_factory=dict)


class FlowAnomaly:
    def __init__(self, config: AnomalyConfig | None = None) -> None:
        self.config = config or AnomalyConfig()
        self.interval_ns = max(1, int(self.config.interval_s * 1e9))
        self.current = -1  # the open interval
        self.boundary = 0  # the first ts past it
        self.flows: dict[str, list[int]] = {}
        self.closes: dict[str, int] = {}  # symbol -> last price in the open interval
        self.prev_close: dict[str, int] = {}
        self.models: dict[str, Ewma] = {f: Ewma() for f in FEATURES}
        self.price_models: dict[str, Ewma] = {}
        self.last = FlowScores()
        # (interval, account or symbol, feature, z): the scores at or above z_threshold
        self.outliers: list[tuple[int, str, str, float]] = []

    def _at(self, ts: int) -> None:
        if ts >= self.boundary:
            if self.current >= 0:
                self._close()
            self.current = ts // self.interval_ns
            self.boundary = (self.current + 1) * self.interval_ns

    def _flow(self, account: str) -> list[int]:
        flow = self.flows.get(account)
        if flow is None:
            flow = self.flows[account] = [0, 0, 0, 0, 0]
        return flow

    def on_batch(self, split: BatchEvents) -> None:
        """One durable batch. Its events all fall in one interval but for the rare batch that
        crosses a boundary: then they go one by one, in seq order, so each lands in its own."""
        lists = [events for events in (split.accepted, split.trades, split.cancelled) if events]
        if not lists:
            return
        self._at(min(events[0].ts for events in lists))
        if max(events[-1].ts for events in lists) >= self.boundary:
            for ev in heapq.merge(*lists, key=_seq):
                if isinstance(ev, Trade):
                    self.on_trade(ev)
                elif isinstance(ev, OrderAccepted):
                    self.on_accepted(ev)
                elif isinstance(ev, OrderCancelled):
                    self.on_cancelled(ev)
            return
        flows = self.flows
        get = flows.get
        for ev in split.accepted:
            flow = get(ev.account)
            if flow is None:
                flow = flows[ev.account] = [0, 0, 0, 0, 0]
            flow[_ORDERS] += 1
            flow[_QTY] += ev.qty
        closes = self.closes
        for trade in split.trades:
            flow = get(trade.taker_account)
            if flow is None:
                flow = flows[trade.taker_account] = [0, 0, 0, 0, 0]
            flow[_TRADES] += 1
            flow[_TAKEN] += 1
            flow = get(trade.maker_account)
            if flow is None:
                flow = flows[trade.maker_account] = [0, 0, 0, 0, 0]
            flow[_TRADES] += 1
            closes[trade.symbol] = trade.price
        for ev in split.cancelled:
            if ev.reason in _USER_CANCELS:
                flow = get(ev.account)
                if flow is None:
                    flow = flows[ev.account] = [0, 0, 0, 0, 0]
                flow[_CANCELS] += 1

    def on_accepted(self, ev: OrderAccepted) -> None:
        self._at(ev.ts)
        flow = self._flow(ev.account)
        flow[_ORDERS] += 1
        flow[_QTY] += ev.qty

    def on_cancelled(self, ev: OrderCancelled) -> None:
        self._at(ev.ts)
        if ev.reason in _USER_CANCELS:
            self._flow(ev.account)[_CANCELS] += 1

    def on_trade(self, trade: Trade) -> None:
        self._at(trade.ts)
        taker = self._flow(trade.taker_account)
        taker[_TRADES] += 1
        taker[_TAKEN] += 1
        self._flow(trade.maker_account)[_TRADES] += 1
        self.closes[trade.symbol] = trade.price

    def advance(self, ts: int) -> None:
        """Closes the open interval once event time (or the evaluation's clock) is past it."""
        if self.current >= 0:
            self._at(ts)

    def _close(self) -> None:
        cfg = self.config
        scores = FlowScores(self.current)
        for account, flow in self.flows.items():
            values: dict[str, float] = {}
            orders, qty, cancels, trades, taken = flow
            if orders:
                values[ORDER_RATE] = math.log1p(orders / cfg.interval_s)
                values[CANCEL_RATIO] = cancels / orders
                values[ORDER_SIZE] = math.log1p(qty / orders)
            if trades:
                values[AGGRESSIVENESS] = taken / trades
            learn = (cfg.alpha, cfg.min_samples, cfg.min_sd)
            zs = {f: self.models[f].score(x, *learn) for f, x in values.items()}
            scores.accounts[account] = zs
            scores.features[account] = values
            for feature, z in zs.items():
                if z >= cfg.z_threshold:
                    self.outliers.append((self.current, account, feature, z))
        for symbol, close in self.closes.items():
            prev = self.prev_close.get(symbol)
            self.prev_close[symbol] = close
            if prev is None or prev <= 0 or close <= 0:
                continue
            model = self.price_models.get(symbol)
            if model is None:
                model = self.price_models[symbol] = Ewma()
            # The floor of the sd is relative here: moves are small numbers (0.001 = 10 bps).
            z = model.score(abs(math.log(close / prev)), cfg.alpha, cfg.min_samples, cfg.min_sd / 100)
            scores.price_moves[symbol] = z
            if z >= cfg.z_threshold:
                self.outliers.append((self.current, symbol, "price_move", z))
        self.flows = {}
        self.closes = {}
        self.last = scores

    def take_outliers(self) -> list[tuple[int, str, str, float]]:
        found, self.outliers = self.outliers, []
        return found

    def max_z(self) -> dict[str, float]:
        """Per feature, the highest z-score of the last closed interval (0 when none)."""
        out = dict.fromkeys(FEATURES, 0.0)
        for zs in self.last.accounts.values():
            for feature, z in zs.items():
                out[feature] = max(out[feature], z)
        return out
