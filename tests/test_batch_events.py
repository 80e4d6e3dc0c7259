"""The shared walk: listeners fed the batch's events split by type end in the same state as
walking every event in order (the order store, the metrics counters), over random order
flow with amends that trade, cancels, IOC and market orders, in batches of many sizes."""

from __future__ import annotations

import random

from engine.core.batch_events import BatchEvents
from engine.core.commands import Amend, Cancel, NewOrder
from engine.core.domain import Instrument, OrderType, Side, TimeInForce
from engine.core.events import OrderAccepted, OrderCancelled, OrderDone, OrderRejected, Trade
from engine.core.matcher import MatchingEngine
from engine.core.order_store import OrderStore
from telemetry.metrics import ExchangeMetrics

SYMBOLS = ("AAA-USD", "BBB-USD")


def order_flow(seed: int, count: int) -> list[list[tuple]]:
    """Batches of (command, events) from a fresh engine."""
    rng = random.Random(seed)
    instruments = [Instrument(s, tick_size=1, lot_size=1, min_qty=1, max_qty=1000) for s in SYMBOLS]
    engine = MatchingEngine(instruments)
    live: list[tuple[str, int]] = []
    batches, batch = [], []
    for i in range(count):
        r = rng.random()
        account = f"a{rng.randint(1, 4)}"
        if r < 0.15 and live:
            owner, oid = rng.choice(live)
            cmd = Amend(owner, oid, new_qty=rng.randint(1, 30), new_price=rng.randint(95, 105))
        elif r < 0.3 and live:
            owner, oid = rng.choice(live)
            cmd = Cancel(owner, oid)
        else:
            side = int(rng.choice((Side.BUY, Side.SELL)))
            kind = OrderType.MARKET if r > 0.93 else OrderType.LIMIT
            tif = TimeInForce.IOC if kind == OrderType.MARKET or r > 0.85 else TimeInForce.GTC
            price = 0 if kind == OrderType.MARKET else rng.randint(95, 105)
            sym = rng.choice(SYMBOLS)
            cmd = NewOrder(account, f"c{i}", sym, side, int(kind), price, rng.randint(1, 30), int(tif))
            if rng.random() < 0.2:
                cmd.trace_id = f"{rng.getrandbits(128) or 1:032x}"
        cmd.seq, cmd.ts = i + 1, 1_001 + i
        events = engine.apply(cmd)
        for ev in events:
            if type(ev) is OrderAccepted:
                live.append((ev.account, ev.order_id))
        batch.append((cmd, events))
        if rng.random() < 0.1:
            batches.append(batch)
            batch = []
    return [*batches, batch] if batch else batches


def in_order_store(batches) -> OrderStore:
    store = OrderStore()
    for batch in batches:
        for cmd, events in batch:
            for ev in events:
                store.apply(ev)
            if events and type(events[0]) is OrderAccepted and getattr(cmd, "trace_id", ""):
                store.get(events[0].order_id).trace_id = cmd.trace_id
    return store


def test_the_order_store_from_split_events_equals_the_store_built_in_order():
    for seed in range(6):
        batches = order_flow(seed, 1500)
        assert any(type(c) is Amend for b in batches for c, _ in b)
        split = OrderStore()
        for batch in batches:
            commands, results = [c for c, _ in batch], [e for _, e in batch]
            split.on_events(commands, results, BatchEvents(results))
        want = in_order_store(batches)
        assert split.orders == want.orders, seed
        # Finished orders of one batch may be kept in another order (the filled ones first):
        # the same views, only the eviction order within a batch differs.
        assert dict(split.done) == dict(want.done), seed
        assert {s: list(t) for s, t in split.trades.items()} == {s: list(t) for s, t in want.trades.items()}


def sample(metrics: ExchangeMetrics, name: str) -> dict[tuple, float]:
    return {
        tuple(s.labels.values()): s.value
        for m in metrics.registry.collect()
        if m.name == name
        for s in m.samples
        if s.name == f"{name}_total"
    }


def test_metrics_from_split_events_count_every_event():
    batches = order_flow(11, 3000)
    metrics = ExchangeMetrics(process=False)
    events = []
    for batch in batches:
        results = [e for _, e in batch]
        metrics.on_events([c for c, _ in batch], results, BatchEvents(results))
        events += [ev for evs in results for ev in evs]
    trades = [e for e in events if type(e) is Trade]
    assert trades and any(type(e) is OrderRejected for e in events)
    for symbol in SYMBOLS:
        mine = [t for t in trades if t.symbol == symbol]
        assert sample(metrics, "loom_trades")[(symbol,)] == len(mine)
        assert sample(metrics, "loom_traded_quantity")[(symbol,)] == sum(t.qty for t in mine)
    assert sum(sample(metrics, "loom_orders").values()) == sum(type(e) is OrderAccepted for e in events)
    assert sum(sample(metrics, "loom_cancels").values()) == sum(type(e) is OrderCancelled for e in events)
    assert sum(sample(metrics, "loom_orders_filled").values()) == sum(type(e) is OrderDone for e in events)
    assert sum(sample(metrics, "loom_rejects").values()) == sum(type(e) is OrderRejected for e in events)
