"""Internal consistency of the books and account indexes. Tests run it after every case;
`loom` can run it on a recovered engine. Returns the list of violations (empty = sound)."""

from __future__ import annotations

from engine.core.balances import WITHDRAWAL, Ledger
from engine.core.book import BookSide, RestingOrder
from engine.core.matcher import MatchingEngine
from engine.core.risk_watch import rebuild


def _check_side(side: BookSide, symbol: str, side_value: int, problems: list[str]) -> list[RestingOrder]:
    where = f"{symbol} {'bid' if side.is_bid else 'ask'}"
    expected_order = sorted(side.levels, reverse=side.is_bid)
    if side.prices() != expected_order:
        problems.append(f"{where}: level list {side.prices()} != level prices {expected_order}")
    expected_best = None
    if side.levels:
        expected_best = max(side.levels) if side.is_bid else min(side.levels)
    if side.best != expected_best:
        problems.append(f"{where}: cached best {side.best} != {expected_best}")
    live = []
    for price, level in side.levels.items():
        orders = list(level.orders.values())
        if level.price != price:
            problems.append(f"{where}: level keyed {price} holds price {level.price}")
        if not orders:
            problems.append(f"{where} {price}: empty level kept")
        for oid, o in level.orders.items():
            if oid != o.order_id:
                problems.append(f"{where} {price}: order {o.order_id} keyed as {oid}")
        if level.qty != sum(o.leaves for o in orders):
            problems.append(f"{where} {price}: qty {level.qty} != sum of leaves")
        last_seq = -1
        for o in orders:
            if o.price != price or o.side != side_value or o.symbol != symbol:
                problems.append(f"{where} {price}: order {o.order_id} misplaced")
            if o.leaves <= 0 or o.filled < 0 or o.leaves + o.filled != o.qty:
                problems.append(f"order {o.order_id}: leaves {o.leaves} + filled {o.filled} != qty {o.qty}")
            if o.seq < last_seq:
                problems.append(f"{where} {price}: order {o.order_id} out of time priority")
            last_seq = o.seq
        live.extend(orders)
    return live


def check_engine(engine: MatchingEngine) -> list[str]:
    problems: list[str] = []
    booked: dict[int, object] = {}
    for symbol, book in engine.books.items():
        bids = _check_side(book.bids, symbol, 1, problems)
        asks = _check_side(book.asks, symbol, 2, problems)
        bid, ask = book.bids.best, book.asks.best
        if bid is not None and ask is not None and bid >= ask:
            problems.append(f"{symbol}: crossed book {bid} >= {ask}")
        for o in bids + asks:
            if o.order_id in booked:
                problems.append(f"order {o.order_id} rests twice")
            booked[o.order_id] = o
            if o.order_id >= engine.next_order_id:
                problems.append(f"order {o.order_id} beyond next id {engine.next_order_id}")
    indexed = 0
    # Every id a table holds is queued or set aside for expiry (engine/core/client_ids.py):
    # else it would never be forgotten.
    expiring = engine.clid_expiry.held()
    for name, acct in engine.accounts.items():
        for oid, o in acct.open.items():
            indexed += 1
            if booked.get(oid) is not o:
                problems.append(f"account {name}: open order {oid} not in a book")
            if o.account != name:
                problems.append(f"account {name}: indexes order {oid} of {o.account}")
        for clid, oid in acct.by_clid.items():
            if not 0 < oid < engine.next_order_id:
                problems.append(f"account {name}: client id {clid!r} maps to bad id {oid}")
            elif (name, clid) not in expiring:
                problems.append(f"account {name}: client id {clid!r} is never looked at for expiry")
    if indexed != len(booked):
        problems.append(f"{len(booked)} resting orders but {indexed} in account indexes")
    problems.extend(check_ledger(engine.ledger))
    problems.extend(check_open_notional(engine))
    problems.extend(check_reservations(engine))
    return problems


def check_reservations(engine: MatchingEngine) -> list[str]:
    """Settlement (engine/core/settlement.py): every held amount is exactly the sum of the
    reservations of the account's open orders in that asset; with credit checks on, each
    open order of an instrument with assets reserves exactly what its side, price and open
    quantity need, and with them off none reserves anything."""
    problems: list[str] = []
    ledger = engine.ledger
    expected: dict[tuple[str, str], int] = {}
    for acct in engine.accounts.values():
        for o in acct.open.values():
            money = engine.markets[o.symbol].money
            if not ledger.credit_checks or money is None:
                if o.reserved:
                    problems.append(f"order {o.order_id}: reserves {o.reserved} without credit checks")
                continue
            need = money.reservation(o.side, o.price, o.leaves)
            if o.reserved != need:
                problems.append(f"order {o.order_id}: reserves {o.reserved}, its open quantity needs {need}")
            key = (o.account, money.asset(o.side))
            expected[key] = expected.get(key, 0) + o.reserved
    for account, held in ledger.balances.items():
        for asset, b in held.items():
            want = expected.pop((account, asset), 0)
            if b.held != want:
                problems.append(f"account {account} {asset}: held {b.held}, its open orders reserve {want}")
    for (account, asset), want in expected.items():
        problems.append(f"account {account} {asset}: no balance, its open orders reserve {want}")
    return problems


def check_fees(ledger: Ledger) -> list[str]:
    """Fees paid = fees received, while one fee account has served: per asset, the fee
    account's total is its transfers plus every fee the trades credited to it."""
    problems: list[str] = []
    transfers: dict[str, int] = {}
    for r in ledger.transfers.values():
        if r.account == ledger.fee_account:
            transfers[r.asset] = transfers.get(r.asset, 0) + (-r.amount if r.kind == WITHDRAWAL else r.amount)
    for asset, fees in ledger.fees.items():
        b = ledger.balance(ledger.fee_account, asset)
        total = b.total if b is not None else 0
        if total != fees + transfers.get(asset, 0):
            problems.append(
                f"fee account {ledger.fee_account} {asset}: total {total} != fees {fees} + transfers"
            )
    return problems


def check_open_notional(engine: MatchingEngine) -> list[str]:
    """While risk watches, its running open notional equals a scan of the open orders."""
    risk = engine.risk
    if risk.watching != engine.risk_watch or risk.watching != risk.needs_watching():
        return [f"risk watching {risk.watching}, engine {engine.risk_watch}, needed {risk.needs_watching()}"]
    if risk.counting != risk.needs_counting() or (risk.throttles and not risk.counting):
        return [f"throttles counting {risk.counting} with {len(risk.throttles)} counts"]
    if not risk.watching:
        return [f"open notional kept while not watching: {risk.notional}"] if risk.notional else []
    scanned: dict[tuple[str, str], int] = {}
    rebuild(scanned, engine.accounts)
    if risk.notional == scanned:
        return []
    keys = sorted(set(risk.notional) | set(scanned))
    return [
        f"open notional of {k}: running {risk.notional.get(k, 0)} != scan {scanned.get(k, 0)}"
        for k in keys
        if risk.notional.get(k, 0) != scanned.get(k, 0)
    ]


class AssetSums:
    """Per asset, the sums of the accounts' totals and held amounts (one walk of the balances)."""

    __slots__ = ("total", "held")

    def __init__(self) -> None:
        self.total = 0
        self.held = 0


def conservation(ledger: Ledger) -> tuple[dict[str, AssetSums], list[str]]:
    """The per-asset sums and the conservation problems found in one walk of the balances:
    the totals of an asset sum to its supply (deposits - withdrawals + adjustments); no total
    or held amount is negative, nor held above total. The node's metrics read this at scrape
    time (loom_ledger_conservation_breaches), the tests after every command (check_ledger)."""
    problems: list[str] = []
    sums = {asset: AssetSums() for asset in ledger.assets}
    for account, held in ledger.balances.items():
        for asset, b in held.items():
            s = sums.get(asset)
            if s is None:
                problems.append(f"account {account}: balance in unlisted asset {asset!r}")
                continue
            s.total += b.total
            s.held += b.held
            if b.total < 0 or b.held < 0 or b.held > b.total:
                problems.append(f"account {account} {asset}: total {b.total}, held {b.held}")
    for asset, s in sums.items():
        supply = ledger.supply.get(asset)
        if s.total != supply:
            problems.append(f"{asset}: balances sum to {s.total}, but supply is {supply}")
    return sums, problems


def check_ledger(ledger: Ledger) -> list[str]:
    """Conservation (above), and each asset's supply equals the sum of its applied transfers."""
    problems = conservation(ledger)[1]
    flows = {r.asset: 0 for r in ledger.transfers.values()}
    for r in ledger.transfers.values():
        flows[r.asset] += -r.amount if r.kind == WITHDRAWAL else r.amount
    for asset, net in flows.items():
        if ledger.supply.get(asset) != net:
            problems.append(f"{asset}: supply {ledger.supply.get(asset)} != {net}, the sum of its transfers")
    return problems
