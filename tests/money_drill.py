"""Funded traders for the crash and failover drills (issue 15): after every kill, read
through the API of the recovered node (or the new leader),

- the totals of each asset over every account sum to the acknowledged deposits less
  withdrawals, and no total, held or available amount is negative;
- every acknowledged trade's settlement is in the ledger exactly once: each side's base
  entry for that command and order, and the fee account's net fee for that command.

The trader sends crossing pairs over REST to whichever node answers: one account rests an
order, the other takes it (the roles and sides alternate, so both a buying and a selling
maker settle). A request whose answer is lost (the kill) may have been journaled: its trades
may be in the ledger, never twice; only the acknowledged ones are required.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.cluster.drill import http

SYMBOL = "BTC-USD"
FEE_ACCOUNT = "house"
ALICE_KEY = "money-alice-key-00000000"
BOB_KEY = "money-bob-key-0000000000"
DEPOSITS = {("alice", "USD"): 10**9, ("bob", "BTC"): 10**6, ("bob", "USD"): 10**6}
WITHDRAWAL = ("bob", "USD", 250_000)
# The instrument's money, a 20 bps taker fee and a 5 bps maker rebate, as TOML keys of its table.
INSTRUMENT_MONEY = 'base = "BTC"\nquote = "USD"\ncontract_size = 1\ntaker_fee_bps = 20\nmaker_fee_bps = -5\n'
ASSETS = '\n[[assets]]\nname = "USD"\nscale = 0\n\n[[assets]]\nname = "BTC"\nscale = 0\n'
TOP = f'fee_account = "{FEE_ACCOUNT}"\nledger_entries_per_account = 100000\n'


def accounts_toml(with_alice: bool = True) -> str:
    alice = f'\n[[accounts]]\nname = "alice"\napi_key = "{ALICE_KEY}"\n' if with_alice else ""
    return alice + f'\n[[accounts]]\nname = "bob"\napi_key = "{BOB_KEY}"\n'


def single_node_config(admin_key: str) -> str:
    return (
        f'admin_key = "{admin_key}"\n{TOP}rate_limit = 0.0\n'
        + f'\n[[instruments]]\nsymbol = "{SYMBOL}"\ntick_size = 1\nlot_size = 1\n'
        + INSTRUMENT_MONEY
        + ASSETS
        + accounts_toml()
    )


@dataclass
class MoneyTrader:
    """`bases()`: the REST bases to try, in order; `keys`: account -> API key."""

    bases: Callable[[], list[str]]
    keys: dict[str, str]
    admin_key: str
    supply: Counter = field(default_factory=Counter)  # asset -> acked deposits - withdrawals
    trades: list[dict] = field(default_factory=list)  # every acknowledged trade event
    pairs: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def _send(self, path: str, body: dict, key: str) -> tuple[int, dict]:
        """To the first node that takes it (NOT_LEADER or gone: the next), until `stop`."""
        while True:
            for base in self.bases():
                status, answer = http("POST", base + path, body, key, timeout=5.0)
                if status and not (status == 503 and answer.get("error", {}).get("code") == "NOT_LEADER"):
                    return status, answer
            if self.stop.is_set():
                return 0, {}
            time.sleep(0.01)

    def fund(self) -> None:
        transfers = [(f"dep-{a}-{s}", a, s, "deposit", n) for (a, s), n in DEPOSITS.items()]
        account, asset, amount = WITHDRAWAL
        transfers.append(("wd-1", account, asset, "withdrawal", amount))
        for tid, account, asset, kind, amount in transfers:
            body = {"transfer_id": tid, "account": account, "asset": asset, "kind": kind, "amount": amount}
            status, answer = self._send("/v1/admin/transfers", body, self.admin_key)
            assert status == 200, answer
            self.supply[asset] += amount if kind == "deposit" else -amount

    def run(self) -> None:
        """Crossing pairs until `stop`; lost answers are moved past (new client ids)."""
        while not self.stop.is_set():
            i = self.pairs = self.pairs + 1
            maker, taker = ("bob", "alice") if i % 2 else ("alice", "bob")
            side = "sell" if maker == "bob" else "buy"
            order = {"symbol": SYMBOL, "type": "limit", "price": 1000 + i % 7, "qty": 1 + i % 3}
            rest = {**order, "side": side, "client_order_id": f"m{i}"}
            status, _ = self._send("/v1/orders", rest, self.keys[maker])
            if status != 201:
                continue
            take = {**order, "side": "buy" if side == "sell" else "sell", "client_order_id": f"t{i}"}
            status, answer = self._send("/v1/orders", take, self.keys[taker])
            if status == 201:
                self.trades += [e for e in answer["events"] if e["type"] == "trade"]


def _ledger(base: str, account: str, admin_key: str) -> list[dict]:
    """Every ledger entry of the account (503 while the node reads them back: waited out)."""
    entries: list[dict] = []
    after = 0
    deadline = time.monotonic() + 60
    while True:
        url = f"{base}/v1/admin/ledger/{account}?after={after}&limit=1000"
        status, page = http("GET", url, key=admin_key)
        if status == 503 and time.monotonic() < deadline:
            time.sleep(0.05)
            continue
        assert status == 200, (account, status, page)
        entries += page["entries"]
        if not page["has_more"]:
            return entries
        after = page["next_after"]


def check_money(base: str, trader: MoneyTrader) -> dict:
    """The drill's checks against one node's API; returns figures for the report."""
    totals: Counter = Counter()
    for account in (*trader.keys, FEE_ACCOUNT):
        status, answer = http("GET", f"{base}/v1/admin/balances/{account}", key=trader.admin_key)
        assert status == 200, answer
        for row in answer["balances"]:
            assert min(row["total"], row["held"], row["available"]) >= 0, (account, row)
            totals[row["asset"]] += row["total"]
    assert dict(totals) == {a: n for a, n in trader.supply.items()}, (totals, trader.supply)

    # (seq, account, order id) -> base trade entries; seq -> the fee account's fee entries.
    settled: Counter = Counter()
    for account in trader.keys:
        for e in _ledger(base, account, trader.admin_key):
            if e["kind"] == "trade" and e["asset"] == "BTC":
                settled[(e["seq"], account, e["order_id"])] += 1
    fees = Counter(e["seq"] for e in _ledger(base, FEE_ACCOUNT, trader.admin_key) if e["kind"] == "fee")
    acked: Counter = Counter()
    acked_fees: Counter = Counter()
    for t in trader.trades:
        acked[(t["seq"], t["taker_account"], t["taker_order_id"])] += 1
        acked[(t["seq"], t["maker_account"], t["maker_order_id"])] += 1
        acked_fees[t["seq"]] += 1 if t["maker_fee"] + t["taker_fee"] else 0
    for key, n in acked.items():
        assert settled[key] == n, f"acked trade (seq, account, order) {key}: {settled[key]} entries, want {n}"
    for seq, n in acked_fees.items():
        assert fees[seq] == n, f"seq {seq}: {fees[seq]} fee entries for {n} acknowledged trades"
    return {"acked_trades": len(trader.trades), "settled_entries": sum(settled.values()), **totals}
