"""The abuse detectors of the surveillance desk (engine/surveillance_desk.py): wash trades by
beneficial owner, spoofing and layering, and the learning anomaly model, each on event
sequences built by hand through the real matching core (so the events are the ones a
venue journals), then the desk's bounded buffer and the metrics without identities."""

from __future__ import annotations

import pytest
from conftest import BTC, BUY, ETH, SELL, STP, Exchange
from prometheus_client import CollectorRegistry

from engine.core.spoofing import SpoofingConfig
from engine.core.surveillance_findings import FINDING_KINDS, LAYERING, PRICE_MOVE, SPOOFING, WASH_TRADE
from engine.flow_anomaly import AGGRESSIVENESS, ORDER_RATE, AnomalyConfig, FlowAnomaly
from engine.surveillance_desk import SurveillanceDesk
from telemetry.collectors import SurveillanceCollector

OWNERS = {"alice-1": "alice", "alice-2": "alice", "sp-1": "sp", "sp-2": "sp"}
SPOOF = SpoofingConfig(large_multiple=5.0, min_size_samples=10, near_touch_bps=50, cancel_window_s=1.0)


class Watched(Exchange):
    """An exchange whose every command's events go to a surveillance desk, as the service
    hands them over (the desk only buffers them; `findings` drains)."""

    def __init__(self, **desk) -> None:
        super().__init__()
        self.desk = SurveillanceDesk(OWNERS, spoofing=SPOOF, **desk)

    def apply(self, cmd) -> list:
        from engine.core.batch_events import BatchEvents

        events = super().apply(cmd)
        self.desk.on_events([cmd], [events], BatchEvents([events]))
        return events

    def wait(self, seconds: float) -> None:
        self.ts += int(seconds * 1e9)

    def findings(self, kind: str) -> list[dict]:
        self.desk.drain()
        return [f.as_dict() for f in self.desk.findings.latest[kind]]


def test_a_trade_between_two_accounts_of_one_owner_is_a_wash_trade():
    w = Watched()
    w.place("alice-1", SELL, 1000, 5, symbol=ETH)
    w.buy("alice-2", 1000, 3, symbol=ETH)
    [wash] = w.findings(WASH_TRADE)
    assert (wash["owner"], wash["accounts"], wash["symbol"]) == ("alice", ["alice-2", "alice-1"], ETH)
    assert (wash["price"], wash["qty"], wash["same_account"]) == (1000, 3, False)
    assert w.desk.findings.counts == {(WASH_TRADE, ETH): 1}


def test_a_trade_between_different_owners_is_not():
    w = Watched()
    w.place("alice-1", SELL, 1000, 5, symbol=ETH)
    w.buy("bob", 1000, 3, symbol=ETH)  # bob is ungrouped: his own owner
    w.place("carol", SELL, 1001, 5, symbol=ETH)
    w.buy("dave", 1001, 5, symbol=ETH)
    assert w.findings(WASH_TRADE) == []
    assert w.desk.findings.counts == {}


def test_a_same_account_trade_counts_only_when_self_trade_prevention_lets_it_happen():
    w = Watched()
    w.place("bob", SELL, 1000, 5, symbol=ETH)
    w.buy("bob", 1000, 2, symbol=ETH)  # the default STP cancels the newest: no trade
    assert w.findings(WASH_TRADE) == []
    w.buy("bob", 1000, 2, symbol=ETH, stp=STP.NONE)
    [wash] = w.findings(WASH_TRADE)
    assert (wash["owner"], wash["accounts"], wash["same_account"]) == ("bob", ["bob"], True)


def market_with_history(w: Watched) -> None:
    """Ten ordinary orders of 1-2 lots around 1000 and a trade at 1000: the typical size is
    ~1.5 and the touch 1000."""
    for i in range(10):
        w.place("mm", BUY, 990 - i, 1 + i % 2, symbol=ETH)
    w.place("mm", SELL, 1000, 1, symbol=ETH)
    w.buy("taker", 1000, 1, symbol=ETH)  # last price 1000
    w.place("mm", BUY, 1000, 2, symbol=ETH)  # the best bid the spoofer's side sells into


def test_a_large_bid_pulled_while_the_owner_sells_is_spoofing():
    w = Watched()
    market_with_history(w)
    spoof = w.place("sp-1", BUY, 999, 40, symbol=ETH)  # near the touch, ~25x the typical size
    w.wait(0.2)
    w.sell("sp-2", 1000, 2, symbol=ETH)  # the same owner sells on another account
    w.wait(0.2)
    w.cancel("sp-1", spoof)
    [found] = w.findings(SPOOFING)
    assert (found["owner"], found["accounts"], found["side"]) == ("sp", ["sp-1"], "buy")
    assert found["order_id"] == spoof
    assert found["qty"] == 40 and 1 < found["typical_qty"] < 3
    assert found["ts"] - 400_000_000 < found["other_side_trade_ts"] < found["ts"]
    assert found["lived_ms"] == 400
    assert w.findings(LAYERING) == []


def test_normal_cancels_are_not_spoofing():
    w = Watched()
    market_with_history(w)
    # Large and near the touch, cancelled at once, but the owner traded on no side.
    big = w.place("sp-1", BUY, 999, 40, symbol=ETH)
    w.cancel("sp-1", big)
    # Small: cancelled while the owner sold.
    small = w.place("sp-1", BUY, 999, 2, symbol=ETH)
    w.sell("sp-2", 1000, 1, symbol=ETH)
    w.cancel("sp-1", small)
    # Large, the owner sold, but it rested longer than the window before the cancel.
    slow = w.place("sp-1", BUY, 999, 40, symbol=ETH)
    w.sell("sp-2", 1000, 1, symbol=ETH)
    w.wait(1.5)
    w.cancel("sp-1", slow)
    # Large and pulled while the owner sold, but far from the touch (5% away).
    far = w.place("sp-1", BUY, 950, 40, symbol=ETH)
    w.place("mm", BUY, 1000, 2, symbol=ETH)
    w.sell("sp-2", 1000, 1, symbol=ETH)
    w.cancel("sp-1", far)
    # Large, pulled while the owner traded on the SAME side (a buy).
    same = w.place("sp-1", BUY, 999, 40, symbol=ETH)
    w.place("carol", SELL, 1001, 1, symbol=ETH)
    w.buy("sp-2", 1001, 1, symbol=ETH)
    w.cancel("sp-1", same)
    assert w.findings(SPOOFING) == []
    assert w.findings(LAYERING) == []


def test_small_orders_at_three_levels_pulled_together_are_layering():
    w = Watched()
    market_with_history(w)
    ids = [w.place("sp-1", BUY, price, 3, symbol=ETH) for price in (997, 998, 999)]  # 9 lots together
    w.sell("sp-2", 1000, 2, symbol=ETH)
    w.cancel_all("sp-1", ETH)
    assert w.findings(SPOOFING) == []  # none is large alone
    [layered] = w.findings(LAYERING)
    assert (layered["owner"], layered["accounts"], layered["side"]) == ("sp", ["sp-1"], "buy")
    assert sorted(layered["order_ids"]) == ids and layered["prices"] == [997, 998, 999]
    # Two levels only is not layering.
    ids = [w.place("sp-1", BUY, price, 5, symbol=ETH) for price in (998, 999)]
    w.place("mm", BUY, 1000, 2, symbol=ETH)
    w.sell("sp-2", 1000, 2, symbol=ETH)
    w.cancel_all("sp-1", ETH)
    assert len(w.findings(LAYERING)) == 1


def flows(model: FlowAnomaly, intervals: int, start: int = 0, outlier_orders: int = 0) -> None:
    """`intervals` intervals of six accounts placing 8-12 orders each (one trade apiece),
    the last of them with an account `outlier` placing `outlier_orders` orders."""
    from engine.core.events import OrderAccepted, Trade

    step = model.interval_ns
    for k in range(start, start + intervals):
        ts = k * step + 1
        for a in range(6):
            for i in range(8 + (a + k) % 5):
                model.on_accepted(OrderAccepted(0, ts + i, i, f"acct-{a}", "", ETH, BUY, 2, 1, 1000, 10))
            model.on_trade(Trade(0, ts, k, ETH, 1000 + k % 3, 1, BUY, 1, f"acct-{a}", 0, 2, "mm", 0))
        if k == start + intervals - 1:
            for i in range(outlier_orders):
                model.on_accepted(OrderAccepted(0, ts + i, i, "outlier", "", ETH, BUY, 2, 1, 1000, 10))
    model.advance((start + intervals) * step + 1)


def test_the_anomaly_model_learns_then_scores_an_outlier_high():
    model = FlowAnomaly(AnomalyConfig(interval_s=1.0, min_samples=30, z_threshold=6.0))
    flows(model, 4)  # 24 account-intervals, 28 with trades: fewer than min_samples
    assert model.max_z() == dict.fromkeys(model.max_z(), 0.0)  # still learning: no score yet
    flows(model, 36, start=4)
    ordinary = model.max_z()[ORDER_RATE]
    assert ordinary < 3.0, ordinary  # the learned population scores ordinary accounts low
    assert not [o for o in model.take_outliers() if o[2] == ORDER_RATE]
    flows(model, 1, start=40, outlier_orders=500)
    outlier = model.last.accounts["outlier"][ORDER_RATE]
    assert outlier > 6.0 and outlier > 3 * ordinary
    assert max(z for a, zs in model.last.accounts.items() if a != "outlier" for z in zs.values()) < 3.0
    assert ("outlier", ORDER_RATE) in {(who, f) for _k, who, f, _z in model.take_outliers()}
    assert "outlier" not in model.last.accounts.get("mm", {}) and AGGRESSIVENESS in model.last.accounts["mm"]


def test_a_price_jump_after_quiet_moves_is_a_price_move_finding():
    w = Watched(anomaly=AnomalyConfig(interval_s=1.0, min_samples=30, z_threshold=6.0))
    for k in range(40):
        price = 1000 + k % 2  # one tick up, one down: 10 bps moves
        w.place("mm", SELL, price, 1, symbol=ETH)
        w.buy("taker", price, 1, symbol=ETH)
        w.wait(1.0)
    assert w.findings(PRICE_MOVE) == []
    w.place("mm", SELL, 1100, 1, symbol=ETH)
    w.buy("taker", 1100, 1, symbol=ETH)  # +10%
    w.wait(1.0)
    w.place("mm", SELL, 1100, 1, symbol=ETH)  # an event in the next interval closes the last
    [move] = w.findings(PRICE_MOVE)
    assert move["symbol"] == ETH and move["z"] > 6.0 and move["owner"] == "" and move["accounts"] == []


def test_the_same_events_find_the_same_things():
    """Deterministic in event time: two desks fed the same stream report the same."""
    a, b = Watched(), Watched()
    for w in (a, b):
        market_with_history(w)
        oid = w.place("sp-1", BUY, 999, 40, symbol=ETH)
        w.sell("sp-2", 1000, 2, symbol=ETH)
        w.cancel("sp-1", oid)
        w.place("alice-1", SELL, 1000, 1, symbol=ETH)
        w.buy("alice-2", 1000, 1, symbol=ETH)
    for w in (a, b):
        w.desk.analyse()  # what the worker does within its budget: drain, then publish
    assert a.desk.published["report"] == b.desk.published["report"]
    assert a.desk.report()["findings"][SPOOFING]["total"] == 1


def test_the_buffer_is_bounded_and_counts_what_it_drops():
    w = Watched(max_buffered_events=3)
    w.place("alice-1", SELL, 1000, 5, symbol=ETH)  # 1 event buffered
    w.buy("alice-2", 1000, 1, symbol=ETH)  # accepted + trade + done: 2 counted, 3 in all
    w.buy("alice-2", 1000, 1, symbol=ETH)  # beyond the bound: dropped whole
    assert w.desk.dropped_batches == 1
    assert len(w.findings(WASH_TRADE)) == 1  # the analysis saw the kept batches only
    w.buy("alice-2", 1000, 1, symbol=ETH)  # drained: room again
    assert len(w.findings(WASH_TRADE)) == 2
    assert w.desk.report()["buffer"]["dropped_batches"] == 1


def test_the_metrics_count_by_kind_and_symbol_without_identities():
    w = Watched()
    registry = CollectorRegistry()
    registry.register(SurveillanceCollector(w.desk, lambda: [ETH, BTC]))
    w.place("alice-1", SELL, 1000, 5, symbol=ETH)
    w.buy("alice-2", 1000, 3, symbol=ETH)
    found = "loom_surveillance_findings_total"
    assert registry.get_sample_value(found, {"kind": WASH_TRADE, "symbol": ETH}) == 0  # not analysed yet
    assert registry.get_sample_value("loom_surveillance_backlog_events") == 3
    w.desk.analyse()
    assert registry.get_sample_value(found, {"kind": WASH_TRADE, "symbol": ETH}) == 1
    assert registry.get_sample_value("loom_surveillance_backlog_events") == 0
    # Every kind has a series per listed symbol from the start, and none with an empty symbol.
    series = {tuple(s.labels.values()) for m in registry.collect() for s in m.samples if s.name == found}
    assert series == {(kind, symbol) for kind in FINDING_KINDS for symbol in (ETH, BTC)}
    assert registry.get_sample_value(found, {"kind": SPOOFING, "symbol": BTC}) == 0
    assert registry.get_sample_value("loom_surveillance_dropped_batches_total") == 0
    labels = {k for m in registry.collect() for s in m.samples for k in s.labels}
    values = {v for m in registry.collect() for s in m.samples for v in s.labels.values()}
    assert labels <= {"kind", "symbol", "feature"}
    assert not values & {"alice", "alice-1", "alice-2"}


def test_readers_get_the_last_published_results_never_an_inline_analysis():
    """A scrape, GET /v1/admin/surveillance and the report read what the worker last published
    (with how far it got and how old it is); none drains the buffer on the reader's thread."""
    w = Watched()
    w.place("alice-1", SELL, 1000, 5, symbol=ETH)
    w.buy("alice-2", 1000, 3, symbol=ETH)  # a wash trade, buffered
    report = w.desk.report()
    assert report["findings"][WASH_TRADE]["total"] == 0 and report["analysed_through_seq"] == 0
    assert report["buffer"]["backlog_events"] == 3 and w.desk.summary()["analysed_through_seq"] == 0
    assert w.desk.flagged("self_match") == [] and w.desk.processed_batches == 0
    w.desk.analyse()
    report = w.desk.report()
    assert report["findings"][WASH_TRADE]["total"] == 1 and report["buffer"]["backlog_events"] == 0
    assert report["analysed_through_seq"] == w.seq and 0 <= report["age_s"] < 5


def test_the_worker_stays_within_its_cpu_budget_and_falls_behind_instead():
    """A drain given a budget stops when it is spent, leaving the rest buffered (counted)."""
    w = Watched()
    market_with_history(w)
    for i in range(300):
        w.place(f"t{i % 7}", BUY, 990 - i % 5, 1 + i % 3, symbol=ETH)
    pending = w.desk.backlog()["backlog_events"]
    assert w.desk.drain(budget_s=0.0) is False  # one batch at least, then the budget is spent
    assert w.desk.processed_batches == 1 and 0 < w.desk.backlog()["backlog_events"] < pending
    assert w.desk.drain() is True and w.desk.backlog()["backlog_events"] == 0


def test_orders_smaller_than_the_typical_size_are_no_layer():
    w = Watched()
    market_with_history(w)  # typical ~1.5
    for _ in range(3):
        w.place("mm", BUY, 990, 2, symbol=ETH)  # the typical size moves little
    for price in (995, 996, 997, 998, 999) * 2:
        w.place("sp-1", BUY, price, 1, symbol=ETH)  # ten crumbs below the typical size, 5 levels
    w.sell("sp-2", 1000, 2, symbol=ETH)
    w.cancel_all("sp-1", ETH)
    assert w.findings(LAYERING) == []


def test_the_settings_turn_surveillance_off_and_bound_its_share():
    from engine.config import ConfigError, load_config

    assert load_config(None, env={}).surveillance is True
    off = load_config(None, env={"LOOM_SURVEILLANCE": "0", "LOOM_SURVEILLANCE_CPU_SHARE": "0.25"})
    assert off.surveillance is False and off.surveillance_cpu_share == 0.25
    with pytest.raises(ConfigError, match="LOOM_SURVEILLANCE='maybe' is not a valid boolean"):
        load_config(None, env={"LOOM_SURVEILLANCE": "maybe"})
    with pytest.raises(ConfigError, match=r"surveillance_cpu_share 0.0 is outside \(0, 1\]"):
        load_config(None, env={"LOOM_SURVEILLANCE_CPU_SHARE": "0"})
