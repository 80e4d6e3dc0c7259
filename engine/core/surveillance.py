"""Trade surveillance: per-account rolling indicators over the durable events, and an
anomaly score per account and kind. Outside the core (a service listener, like the order
store): it decides nothing about orders, it only watches.

Indicators over a rolling window of event time (the sequencer's `ts`, so a replay of the
same events scores the same, and tests need no clock):
- order_to_trade: orders accepted per trade the account took part in;
- cancel_ratio:   orders the account cancelled itself, per order accepted;
- self_match:     self-trades (wash trades, STP off) plus trades that self-trade prevention
                  stopped (cancels with reason SELF_TRADE).
A score is the indicator over its threshold: 1.0 means "at the threshold". The ratio kinds
score 0 below `min_orders` orders in the window (a handful of orders says nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.core.batch_events import BatchEvents
from engine.core.commands import Command
from engine.core.domain import CancelReason
from engine.core.events import Event

ORDER_TO_TRADE = "order_to_trade"
CANCEL_RATIO = "cancel_ratio"
SELF_MATCH = "self_match"
KINDS = (ORDER_TO_TRADE, CANCEL_RATIO, SELF_MATCH)
_USER_CANCELS = frozenset((int(CancelReason.USER), int(CancelReason.CANCEL_ALL)))
_SELF_TRADE = int(CancelReason.SELF_TRADE)
# Slots of a bucket: orders, trades, cancels, self-match events.
_O, _T, _C, _S = range(4)


@dataclass(frozen=True)
class SurveillanceConfig:
    window_s: float = 60.0
    buckets: int = 6  # the window slides one bucket (window_s / buckets) at a time
    min_orders: int = 50
    order_to_trade_threshold: float = 100.0
    cancel_ratio_threshold: float = 0.99
    self_match_threshold: float = 20.0
    max_accounts: int = 10_000  # beyond this the least recently active accounts are dropped
    top_n: int = 5
    top_min_score: float = 0.5  # accounts scoring less are not exported by name
    rearm_below: float = 0.8  # hysteresis: a score must fall this low before it counts again


@dataclass
class _Account:
    buckets: dict[int, list[int]] = field(default_factory=dict)  # bucket id -> counts
    last_bucket: int = 0


class Surveillance:
    def __init__(self, config: SurveillanceConfig | None = None) -> None:
        self.config = config or SurveillanceConfig()
        self.bucket_ns = max(1, int(self.config.window_s * 1e9 / self.config.buckets))
        self.accounts: dict[str, _Account] = {}
        self.now_bucket = 0
        self.alerts: dict[str, int] = dict.fromkeys(KINDS, 0)  # threshold crossings so far
        self._above: set[tuple[str, str]] = set()  # (account, kind) at or above 1 now

    # -- feeding ---------------------------------------------------------------------------

    def on_batch(self, commands: list[Command], results: list[list[Event]]) -> None:
        self.on_events(commands, results, BatchEvents(results))

    def on_events(self, _commands: list[Command], _results: list[list[Event]], split: BatchEvents) -> None:
        """Feeds one durable batch (off the order path: the surveillance desk's worker). Per
        event two dict lookups and an int add in place; opening a bucket is the rare path."""
        bucket_ns, accounts, slot = self.bucket_ns, self.accounts, self._slot
        for ev in split.accepted:
            bucket = ev.ts // bucket_ns
            acct = accounts.get(ev.account)
            counts = acct.buckets.get(bucket) if acct is not None else None
            (counts or slot(ev.account, bucket))[_O] += 1
        for trade in split.trades:
            bucket = trade.ts // bucket_ns
            taker, maker = trade.taker_account, trade.maker_account
            acct = accounts.get(taker)
            counts = acct.buckets.get(bucket) if acct is not None else None
            (counts or slot(taker, bucket))[_T] += 1
            # A wash trade counts once as a trade and once as a self-match.
            acct = accounts.get(maker)
            counts = acct.buckets.get(bucket) if acct is not None else None
            (counts or slot(maker, bucket))[_S if maker == taker else _T] += 1
        for cancel in split.cancelled:
            reason = cancel.reason
            if reason in _USER_CANCELS:
                kind = _C
            elif reason == _SELF_TRADE:
                kind = _S
            else:
                continue
            bucket = cancel.ts // bucket_ns
            acct = accounts.get(cancel.account)
            counts = acct.buckets.get(bucket) if acct is not None else None
            (counts or slot(cancel.account, bucket))[kind] += 1
        # Scoring waits for `evaluate` (each publication): scoring each touched account per
        # batch cost ~2 µs an order, more than all the counting.
        if len(accounts) > self.config.max_accounts:
            self._evict()

    def _slot(self, account: str, bucket: int) -> list[int]:
        """The account's counts in `bucket`, opened (the account too) when missing."""
        if bucket > self.now_bucket:
            self.now_bucket = bucket
        acct = self.accounts.get(account)
        if acct is None:
            acct = self.accounts[account] = _Account()
        counts = acct.buckets.get(bucket)
        if counts is None:
            counts = acct.buckets[bucket] = [0, 0, 0, 0]
            if bucket > acct.last_bucket:
                acct.last_bucket = bucket
            self._prune(acct)
        return counts

    def _prune(self, acct: _Account) -> None:
        oldest = self.now_bucket - self.config.buckets + 1
        for bucket in [b for b in acct.buckets if b < oldest]:
            del acct.buckets[bucket]

    def _evict(self) -> None:
        keep = int(self.config.max_accounts * 0.9)
        by_age = sorted(self.accounts, key=lambda a: self.accounts[a].last_bucket)
        for account in by_age[: len(by_age) - keep]:
            del self.accounts[account]
            for kind in KINDS:
                self._above.discard((account, kind))

    # -- scoring ---------------------------------------------------------------------------

    def indicators(self, account: str) -> dict[str, int]:
        """Counts over the window: orders, trades, cancels, self_match."""
        acct = self.accounts.get(account)
        totals = [0, 0, 0, 0]
        if acct is not None:
            oldest = self.now_bucket - self.config.buckets + 1
            for bucket, counts in acct.buckets.items():
                if bucket >= oldest:
                    for i in range(4):
                        totals[i] += counts[i]
        return dict(zip(("orders", "trades", "cancels", "self_match"), totals, strict=True))

    def scores(self, account: str) -> dict[str, float]:
        cfg = self.config
        n = self.indicators(account)
        orders = n["orders"]
        active = orders >= cfg.min_orders
        return {
            ORDER_TO_TRADE: (orders / max(1, n["trades"])) / cfg.order_to_trade_threshold if active else 0.0,
            CANCEL_RATIO: (n["cancels"] / orders) / cfg.cancel_ratio_threshold if active else 0.0,
            SELF_MATCH: n["self_match"] / cfg.self_match_threshold,
        }

    def _edge(self, account: str, scores: dict[str, float]) -> None:
        """Counts an alert when a score reaches 1, and not again until it has fallen below
        `rearm_below` (a ratio hovering at the threshold would count on every order)."""
        rearm = self.config.rearm_below
        for kind, score in scores.items():
            key = (account, kind)
            if score >= 1.0:
                if key not in self._above:
                    self._above.add(key)
                    self.alerts[kind] += 1
            elif score < rearm:
                self._above.discard(key)

    def advance(self, now_ns: int) -> None:
        """Moves the window to `now_ns` (the sequencer's clock, time.time_ns) even when no
        events arrive: a quiet venue must not keep a stale score up."""
        self.now_bucket = max(self.now_bucket, now_ns // self.bucket_ns)

    def evaluate(self, now_ns: int | None = None) -> dict[str, list[tuple[str, float]]]:
        """Every active account's scores, highest first per kind; drops accounts whose
        window is empty and re-arms alerts of accounts that went quiet."""
        if now_ns is not None:
            self.advance(now_ns)
        ranked: dict[str, list[tuple[str, float]]] = {k: [] for k in KINDS}
        for account in list(self.accounts):
            acct = self.accounts[account]
            self._prune(acct)
            if not acct.buckets:
                del self.accounts[account]
                for kind in KINDS:
                    self._above.discard((account, kind))
                continue
            scores = self.scores(account)
            self._edge(account, scores)
            for kind, score in scores.items():
                ranked[kind].append((account, score))
        for kind in KINDS:
            ranked[kind].sort(key=lambda item: (-item[1], item[0]))
        return ranked

    def flagged(self, kind: str, now_ns: int | None = None) -> list[str]:
        """The accounts whose `kind` score is at or above the threshold (1) now."""
        return [account for account, score in self.evaluate(now_ns).get(kind, ()) if score >= 1.0]

    def summary(self, now_ns: int | None = None) -> dict[str, Any]:
        """Per kind: the highest score, and the top accounts that score at least
        `top_min_score` (what the metrics and the admin endpoint show)."""
        return self.summarise(self.evaluate(now_ns))

    def summarise(self, ranked: dict[str, list[tuple[str, float]]]) -> dict[str, Any]:
        """`summary` of one `evaluate` ranking (one walk of the accounts serves both)."""
        cfg = self.config
        out: dict[str, Any] = {"accounts": len(self.accounts), "alerts": dict(self.alerts), "kinds": {}}
        for kind, items in ranked.items():
            out["kinds"][kind] = {
                "max_score": round(items[0][1], 4) if items else 0.0,
                "top": [
                    {"account": a, "score": round(s, 4), **self.indicators(a)}
                    for a, s in items[: cfg.top_n]
                    if s >= cfg.top_min_score
                ],
            }
        return out
