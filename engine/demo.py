"""Simulated traders for `loom run --demo`: market makers quoting around a drifting mid and
takers crossing the spread, so the book, the trades and the metrics move. The demo venue
has pre-trade risk limits, and now and then a trader's "fat finger" order (ten times the
size, or far from the market) that the limits refuse, so the risk panels have data. With
credit checks on (the default) the demo deposits funds into every account it trades for
and the demo keys' accounts, once per venue (the deposits are idempotent by transfer id)."""

from __future__ import annotations

import random

from engine.bench.workload import RestingPool
from engine.core.commands import Cancel, NewOrder, SetRiskLimits, Transfer
from engine.core.domain import (
    Asset,
    Instrument,
    OrderType,
    RiskLimits,
    RiskScope,
    Side,
    TimeInForce,
    TransferKind,
)
from engine.core.events import OrderAccepted, OrderCancelled, OrderDone

# Prices in US cents per whole coin; a quantity unit is a whole coin (10**8 of BTC's and
# ETH's smallest units), one LOOM token being LOOM's unit.
DEMO_ASSETS = [Asset("USD", 2), Asset("BTC", 8), Asset("ETH", 8), Asset("LOOM", 0)]
# Fees: a 1 bps maker rebate and a 5 bps taker fee; market orders sweep at most 2% from the touch.
_DEMO_FEES = {"maker_fee_bps": -1, "taker_fee_bps": 5, "max_sweep_bps": 200}
DEMO_INSTRUMENTS = [
    Instrument("BTC-USD", 5, 1, 1, 10_000, base="BTC", quote="USD", contract_size=10**8, **_DEMO_FEES),
    Instrument("ETH-USD", 1, 1, 1, 100_000, base="ETH", quote="USD", contract_size=10**8, **_DEMO_FEES),
    Instrument("LOOM-USD", 1, 10, 10, 1_000_000, base="LOOM", quote="USD", contract_size=1, **_DEMO_FEES),
]
DEMO_TRADERS = [f"{kind}{n}" for kind in ("mm", "tk") for n in range(1, 9)]
DEMO_FUNDS = 10**15  # units of each asset per account: far beyond what the flow trades
_START_MID = {"BTC-USD": 6_500_000, "ETH-USD": 350_000, "LOOM-USD": 10_000}
FAT_FINGER = 0.005  # share of orders that are fat-fingered
MAX_LOTS = 100  # per-order quantity limit, in lots (normal orders are 1..50 lots)


def demo_risk_limits(instruments: list[Instrument]) -> list[SetRiskLimits]:
    """A price band of 10% venue-wide, at most 2000 open orders per account, and a
    per-symbol order quantity limit."""
    venue = SetRiskLimits(int(RiskScope.VENUE), "", RiskLimits(price_band_bps=1_000, max_open_orders=2_000))
    per_symbol = [
        SetRiskLimits(int(RiskScope.SYMBOL), i.symbol, RiskLimits(max_order_qty=MAX_LOTS * i.lot_size))
        for i in instruments
    ]
    return [venue, *per_symbol]


def demo_funding(accounts: list[str], assets: list[str]) -> list[Transfer]:
    """A deposit of DEMO_FUNDS of every asset into every account. The transfer ids name
    account and asset, so a restarted demo repeats them harmlessly (idempotent)."""
    deposit = int(TransferKind.DEPOSIT)
    return [
        Transfer(f"demo-fund-{account}-{asset}", account, asset, deposit, DEMO_FUNDS, "demo")
        for account in accounts
        for asset in assets
    ]


class DemoTraders:
    """Generates a plausible order flow from the engine's own events (deterministic by seed)."""

    def __init__(self, instruments: list[Instrument], seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.instruments = instruments
        self.mid = {i.symbol: _START_MID.get(i.symbol, 100_000) for i in instruments}
        self.resting = {i.symbol: RestingPool() for i in instruments}
        self.counter = 0

    def next_command(self):
        rng = self.rng
        inst = rng.choice(self.instruments)
        sym = inst.symbol
        self.counter += 1
        if rng.random() < 0.001:  # the mid drifts
            self.mid[sym] += inst.tick_size * rng.choice((-1, 1)) * rng.randint(1, 5)
        resting = self.resting[sym]
        r = rng.random()
        if r < 0.3 and resting:
            account, oid = resting.items[rng.randrange(len(resting))]
            resting.discard(oid)
            return Cancel(account, oid)
        side = int(rng.choice((Side.BUY, Side.SELL)))
        qty = inst.lot_size * rng.randint(max(1, inst.min_qty // inst.lot_size), 50)
        mid = self.mid[sym] // inst.tick_size * inst.tick_size
        if r < 0.9:
            off = inst.tick_size * rng.randint(1, 20)
            if rng.random() < FAT_FINGER:  # an extra digit: in the quantity or the price offset
                if rng.random() < 0.5:
                    qty *= 10
                else:
                    off = max(off, mid // 5 // inst.tick_size * inst.tick_size)
            price = mid - off if side == Side.BUY else mid + off
            return NewOrder(
                f"mm{rng.randint(1, 8)}",
                f"d{self.counter}",
                sym,
                side,
                int(OrderType.LIMIT),
                price,
                qty,
                int(TimeInForce.GTC),
            )
        return NewOrder(
            f"tk{rng.randint(1, 8)}",
            f"d{self.counter}",
            sym,
            side,
            int(OrderType.MARKET),
            0,
            qty,
            int(TimeInForce.IOC),
        )

    def observe(self, events: list) -> None:
        for ev in events:
            if type(ev) is OrderAccepted and ev.tif == TimeInForce.GTC:
                self.resting[ev.symbol].add(ev.account, ev.order_id)
            elif type(ev) in (OrderDone, OrderCancelled):
                self.resting[ev.symbol].discard(ev.order_id)


async def run_demo_flow(
    service, rate: int = 2_000, seed: int = 7, slice_s: float = 0.01, accounts: tuple[str, ...] = ()
) -> None:
    """Submit the simulated traders' orders through the real service (journaled, durable,
    visible to every gateway and metric) at about `rate` orders per second."""
    import asyncio

    from engine.service import Overloaded

    traders = DemoTraders(
        [service.node.engine.instruments[s] for s in sorted(service.node.engine.instruments)], seed
    )
    per_slice = max(1, round(rate * slice_s))
    ledger = service.node.engine.ledger
    if ledger.credit_checks and ledger.assets:
        await service.submit(demo_funding([*DEMO_TRADERS, *accounts], sorted(ledger.assets)), "demo")
    await service.submit(demo_risk_limits(traders.instruments), "demo")
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while True:
        batch = [traders.next_command() for _ in range(per_slice)]
        try:
            for events in await service.submit(batch, "demo"):
                traders.observe(events)
        except Overloaded:  # shed like any other client's: this slice is skipped
            pass
        next_at += slice_s
        delay = next_at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            next_at = loop.time()  # fell behind: do not try to catch up in a burst
