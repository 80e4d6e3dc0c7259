"""Surveillance scoring (engine/core/surveillance.py) fed by the core's own events, and the risk
metrics built from them (telemetry: the batch listener and the scrape-time collector)."""

from __future__ import annotations

from conftest import BUY, ETH, SELL, STP, Exchange
from prometheus_client import CollectorRegistry

from engine.core.commands import SetKillSwitch, SetRiskLimits
from engine.core.domain import RiskLimits, RiskScope
from engine.core.surveillance import (
    CANCEL_RATIO,
    ORDER_TO_TRADE,
    SELF_MATCH,
    Surveillance,
    SurveillanceConfig,
)
from telemetry.collectors import RiskCollector
from telemetry.metrics import ExchangeMetrics

CONFIG = SurveillanceConfig(window_s=10.0, buckets=5, min_orders=10, self_match_threshold=4.0)


class Watched(Exchange):
    """An exchange whose every command's events also go to a Surveillance (and metrics)."""

    def __init__(self) -> None:
        super().__init__()
        self.surveillance = Surveillance(CONFIG)
        self.metrics = ExchangeMetrics(CollectorRegistry(), process=False)
        # Event time only (no wall clock): the tests move time with the commands they apply.
        self.metrics.registry.register(RiskCollector(lambda: self.engine, self.surveillance, wall_ns=None))

    def apply(self, cmd) -> list:
        events = super().apply(cmd)
        self.surveillance.on_batch([cmd], [events])
        self.metrics.on_batch([cmd], [events])
        return events

    def advance(self, seconds: float) -> None:
        self.ts += int(seconds * 1e9)

    def sample(self, name: str, **labels) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


def test_quiet_accounts_score_zero_below_min_orders():
    w = Watched()
    for i in range(5):
        w.place("a", BUY, 100 + i, 1, symbol=ETH)
    scores = w.surveillance.scores("a")
    assert scores == {ORDER_TO_TRADE: 0.0, CANCEL_RATIO: 0.0, SELF_MATCH: 0.0}


def test_cancel_ratio_and_order_to_trade_score_against_their_thresholds():
    w = Watched()
    for i in range(20):
        oid = w.place("spoofer", BUY, 100 + i, 1, symbol=ETH)
        w.cancel("spoofer", oid)
    n = w.surveillance.indicators("spoofer")
    assert n == {"orders": 20, "trades": 0, "cancels": 20, "self_match": 0}
    scores = w.surveillance.scores("spoofer")
    assert scores[CANCEL_RATIO] == 1.0 / CONFIG.cancel_ratio_threshold  # above 1
    assert scores[ORDER_TO_TRADE] == 20 / CONFIG.order_to_trade_threshold
    assert w.surveillance.alerts[CANCEL_RATIO] == 0  # scores are evaluated at scrape time
    w.surveillance.evaluate()
    w.surveillance.evaluate()
    assert w.surveillance.alerts[CANCEL_RATIO] == 1  # counted once while it stays up
    summary = w.surveillance.summary()
    assert summary["kinds"][CANCEL_RATIO]["top"][0]["account"] == "spoofer"
    assert w.sample("loom_surveillance_anomaly_score", kind=CANCEL_RATIO) > 1
    assert w.sample("loom_surveillance_top_score", kind=CANCEL_RATIO, rank="1") > 1
    assert w.sample("loom_surveillance_alerts_total", kind=CANCEL_RATIO) == 1


def test_self_trades_and_stp_stops_count_as_self_match():
    w = Watched()
    for _ in range(2):  # wash trades: STP off
        w.place("wash", SELL, 100, 1, symbol=ETH)
        w.buy("wash", 100, 1, symbol=ETH, stp=STP.NONE)
    for _ in range(2):  # stopped by self-trade prevention (cancel newest)
        w.place("wash", SELL, 100, 1, symbol=ETH)
        w.buy("wash", 100, 1, symbol=ETH)
    assert w.surveillance.indicators("wash")["self_match"] == 4
    assert w.surveillance.scores("wash")[SELF_MATCH] == 1.0
    w.surveillance.evaluate()
    assert w.surveillance.alerts[SELF_MATCH] == 1
    assert w.surveillance.scores("other")[SELF_MATCH] == 0.0


def test_the_window_slides_on_event_time_and_quiet_accounts_are_dropped():
    w = Watched()
    w.place("wash", SELL, 100, 1, symbol=ETH)
    w.buy("wash", 100, 1, symbol=ETH, stp=STP.NONE)
    assert w.surveillance.indicators("wash")["self_match"] == 1
    w.advance(CONFIG.window_s + 1)
    w.place("someone", BUY, 1, 1, symbol=ETH)  # moves event time on
    assert w.surveillance.indicators("wash")["self_match"] == 0
    w.surveillance.evaluate()
    assert set(w.surveillance.accounts) == {"someone"}


def test_a_quiet_venue_lets_scores_decay_when_asked_with_the_time():
    w = Watched()
    for _ in range(4):
        w.place("wash", SELL, 100, 1, symbol=ETH)
        w.buy("wash", 100, 1, symbol=ETH, stp=STP.NONE)
    assert w.surveillance.summary()["kinds"][SELF_MATCH]["max_score"] == 1.0
    later = w.ts + int((CONFIG.window_s + 1) * 1e9)  # no events meanwhile
    summary = w.surveillance.summary(later)
    assert summary["kinds"][SELF_MATCH]["max_score"] == 0.0 and summary["accounts"] == 0


def test_top_scores_are_exported_by_rank_and_no_metric_names_an_account():
    w = Watched()
    w.place("calm", BUY, 1, 1, symbol=ETH)
    for i in range(7):  # seven accounts with a self-match score of 0.5 .. 2
        account = f"acct{i}"
        for _ in range(2 + i):
            w.place(account, SELL, 100, 1, symbol=ETH)
            w.buy(account, 100, 1, symbol=ETH, stp=STP.NONE)
    top = w.surveillance.summary()["kinds"][SELF_MATCH]["top"]
    assert [t["account"] for t in top] == ["acct6", "acct5", "acct4", "acct3", "acct2"]
    exported = {
        s.labels["rank"]: s.value
        for metric in w.metrics.registry.collect()
        if metric.name == "loom_surveillance_top_score"
        for s in metric.samples
        if s.labels["kind"] == SELF_MATCH
    }
    assert exported == {str(rank): t["score"] for rank, t in enumerate(top, 1)}
    # Metrics are for whoever can scrape them: no label anywhere carries an account name
    # (issue 13: the top scores were labelled by account).
    labels = {v for metric in w.metrics.registry.collect() for s in metric.samples for v in s.labels.values()}
    assert not labels & {"calm", *(f"acct{i}" for i in range(7))}, labels


def test_the_account_table_is_bounded():
    s = Surveillance(SurveillanceConfig(max_accounts=100))
    w = Watched()
    w.surveillance = s
    for i in range(150):
        w.place(f"a{i}", BUY, 1 + i, 1, symbol=ETH)
    assert len(s.accounts) <= 100
    assert "a149" in s.accounts and "a0" not in s.accounts


def test_risk_metrics_count_rejects_by_layer_and_read_switches_at_scrape():
    w = Watched()
    assert w.sample("loom_risk_rejects_total", layer="order", reason="order_quantity_limit") == 0
    w.apply(SetRiskLimits(int(RiskScope.VENUE), "", RiskLimits(max_order_qty=5)))
    w.buy("a", 1, 6, symbol=ETH)
    w.apply(SetKillSwitch(int(RiskScope.ACCOUNT), "b", True))
    w.apply(SetKillSwitch(int(RiskScope.ACCOUNT), "c", True))
    w.buy("b", 1, 1, symbol=ETH)
    assert w.sample("loom_risk_rejects_total", layer="order", reason="order_quantity_limit") == 1
    assert w.sample("loom_risk_rejects_total", layer="venue", reason="kill_switch_account") == 1
    assert w.sample("loom_rejects_total", request="new", reason="kill_switch_account") == 1
    assert w.sample("loom_risk_limit_changes_total", scope="venue") == 1
    assert w.sample("loom_kill_switch_engaged", scope="account") == 2
    assert w.sample("loom_kill_switch_engaged", scope="venue") == 0
    assert w.sample("loom_trading_halts") == 0
