"""The deterministic engine workload: one symbol, 60% passive limit orders within ±50 ticks of
a fixed mid (qty 1-100), 30% cancels of random resting orders, 10% aggressive orders that
cross (half IOC limits at the far edge of the band, half market orders).

With `credit` (`loom bench engine --credit`) the same commands run against a venue with
money: the symbol names base and quote assets with fees, every account is funded far beyond
what it trades and credit checks are on, so every order reserves and every trade settles
while the matching is exactly the same (the same trades).

Generation runs the commands through an engine of its own so that every cancel names an
order that really rests (and, in bounded mode, so that the book stays at most
`max_resting`): the generated list then replays identically into any fresh engine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import msgspec

from engine.core.commands import (
    Cancel,
    Command,
    ListAsset,
    ListInstrument,
    NewOrder,
    SetCreditChecks,
    Transfer,
)
from engine.core.domain import Asset, Instrument, OrderType, Side, TimeInForce, TransferKind
from engine.core.events import OrderAccepted, OrderCancelled, OrderDone
from engine.core.matcher import MatchingEngine

SYMBOL = "LOOM-USD"
MID = 100_000
BAND = 50
INSTRUMENT = Instrument(SYMBOL, tick_size=1, lot_size=1, min_qty=1, max_qty=1_000_000)
ACCOUNTS = 100  # half makers, half takers (`loom bench engine --accounts`)


def traders(accounts: int = ACCOUNTS) -> tuple[list[str], list[str]]:
    """The workload's makers and takers: `accounts` of them, half each (mm00.., tk00..)."""
    half = max(accounts // 2, 1)
    return [f"mm{i:02d}" for i in range(half)], [f"tk{i:02d}" for i in range(half)]


MAKERS, TAKERS = traders()
BOUNDED_MAX_RESTING = 5_000
# With credit: LOOM against USD, both in whole units, a 1 bps maker rebate and a 5 bps taker fee.
CREDIT_INSTRUMENT = msgspec.structs.replace(
    INSTRUMENT, base="LOOM", quote="USD", maker_fee_bps=-1, taker_fee_bps=5
)
# Per account and asset at the default 100 accounts: no order of the workload is refused.
# More accounts share the same total (an asset's supply must fit 64 bits).
CREDIT_FUNDS = 10**15


@dataclass
class Workload:
    commands: list
    mode: str
    seed: int
    state_hash: str  # of the generating engine: a fresh replay must reach the same


class RestingPool:
    """Resting order ids with O(1) add, remove and uniform random pick."""

    def __init__(self) -> None:
        self.items: list[tuple[str, int]] = []
        self.index: dict[int, int] = {}

    def add(self, account: str, oid: int) -> None:
        self.index[oid] = len(self.items)
        self.items.append((account, oid))

    def discard(self, oid: int) -> None:
        i = self.index.pop(oid, None)
        if i is None:
            return
        last = self.items.pop()
        if last[1] != oid:
            self.items[i] = last
            self.index[last[1]] = i

    def __len__(self) -> int:
        return len(self.items)


def credit_setup(accounts: int = ACCOUNTS) -> list[Command]:
    """The journaled start of a venue with money, stamped from seq 1 (the workload follows
    it with `generate(first_seq=len(credit_setup()) + 1)`)."""
    makers, takers = traders(accounts)
    deposit = int(TransferKind.DEPOSIT)
    cmds: list[Command] = [
        ListAsset(Asset("USD")),
        ListAsset(Asset("LOOM")),
        ListInstrument(CREDIT_INSTRUMENT),
    ]
    cmds += [
        Transfer(f"{a}-{s}", a, s, deposit, CREDIT_FUNDS * ACCOUNTS // max(accounts, ACCOUNTS), "bench")
        for a in (*makers, *takers)
        for s in ("USD", "LOOM")
    ]
    cmds.append(SetCreditChecks(True, fee_account="venue-fees"))
    for i, cmd in enumerate(cmds):
        cmd.seq = i + 1
    return cmds


def make_engine(credit: bool = False, accounts: int = ACCOUNTS) -> MatchingEngine:
    if not credit:
        return MatchingEngine([INSTRUMENT])
    engine = MatchingEngine([])
    for cmd in credit_setup(accounts):
        engine.apply(cmd)
    return engine


def generate(
    ops: int, seed: int = 1, mode: str = "deep", first_seq: int = 1, accounts: int = ACCOUNTS
) -> Workload:
    from engine.core.state import state_hash

    if mode not in ("deep", "bounded"):
        raise ValueError(f"unknown workload mode {mode!r}: use deep or bounded")
    rng = random.Random(seed)
    makers, takers = traders(accounts)
    engine = make_engine()
    pool = RestingPool()
    commands: list = []
    buy, sell = int(Side.BUY), int(Side.SELL)
    limit, market = int(OrderType.LIMIT), int(OrderType.MARKET)
    gtc, ioc = int(TimeInForce.GTC), int(TimeInForce.IOC)
    cmd: Cancel | NewOrder
    for i in range(ops):
        r = rng.random()
        want_cancel = 0.6 <= r < 0.9 or (r < 0.6 and mode == "bounded" and len(pool) >= BOUNDED_MAX_RESTING)
        if want_cancel and pool:
            account, oid = pool.items[rng.randrange(len(pool))]
            cmd = Cancel(account, oid)
        elif r < 0.9:
            side = buy if rng.random() < 0.5 else sell
            offset = rng.randint(1, BAND)
            price = MID - offset if side == buy else MID + offset
            cmd = NewOrder(rng.choice(makers), f"o{i}", SYMBOL, side, limit, price, rng.randint(1, 100), gtc)
        else:
            side = buy if rng.random() < 0.5 else sell
            qty = rng.randint(1, 100)
            if rng.random() < 0.5:
                price = MID + BAND if side == buy else MID - BAND
                cmd = NewOrder(rng.choice(takers), f"o{i}", SYMBOL, side, limit, price, qty, ioc)
            else:
                cmd = NewOrder(rng.choice(takers), f"o{i}", SYMBOL, side, market, 0, qty, ioc)
        cmd.seq = first_seq + i
        cmd.ts = 1_700_000_000_000_000_000 + i * 1_000  # a fixed synthetic clock
        commands.append(cmd)
        for ev in engine.apply(cmd):
            if isinstance(ev, OrderAccepted):
                if ev.tif == gtc and ev.order_type == limit:
                    pool.add(ev.account, ev.order_id)
            elif isinstance(ev, OrderDone | OrderCancelled):
                pool.discard(ev.order_id)
    return Workload(commands, mode, seed, state_hash(engine))
