"""The engine's whole state as one plain record: the basis of the state hash and of
snapshots. Export and restore are exact inverses; the hash covers everything that can
change a future event, so equal histories give equal hashes in any process.

An exported state shares the live engine's order objects, and a restored engine takes
ownership of the objects it is given: go through encode/decode (as snapshots do) to get an
independent copy.
"""

from __future__ import annotations

import hashlib

import msgspec

from engine.core.balances import DEFAULT_FEE_ACCOUNT, Balance, FeeTally, TransferRecord
from engine.core.book import RestingOrder
from engine.core.client_ids import AccountOrders
from engine.core.domain import Asset, Instrument, RiskLimits
from engine.core.matcher import MatchingEngine
from engine.core.risk_audit import AuditRecord
from engine.core.risk_watch import rebuild
from engine.core.throttles import Throttle

# 2: last trade prices and risk state (limits, kill switches, halts); 3: the ledger (assets,
# balances, transfers, supply, credit checks); 4: the throttles' counters, the risk audit
# trail and settlement (each resting order's reservation, the fee account and the fees
# collected). Older states restore with those empty: their fields are trailing ones with
# defaults (`upcast`); a version 3 state holds no reservations (credit checks were not
# enforced then), which is what its defaults say. 5: the client order ids still taken, by
# order id (CLIENT_ORDER_ID_WINDOW), not every one ever accepted in acceptance order: an older
# state restores whole (the ids past their window are then pruned like any others).
STATE_VERSION = 5
READABLE_VERSIONS = (2, 3, 4, 5)


class BookState(msgspec.Struct, array_like=True):
    symbol: str
    bids: list[RestingOrder]  # best price first, time priority within a price
    asks: list[RestingOrder]


class AccountState(msgspec.Struct, array_like=True):
    account: str
    client_order_ids: list[tuple[str, int]]  # by order id (version 4 and older: in acceptance order)


class RiskLimitsEntry(msgspec.Struct, array_like=True):
    scope: int
    target: str
    limits: RiskLimits


class KillSwitchEntry(msgspec.Struct, array_like=True):
    scope: int
    target: str
    reason: str


class BalanceEntry(msgspec.Struct, array_like=True):
    account: str
    asset: str
    total: int
    held: int


class EngineState(msgspec.Struct, array_like=True):
    version: int
    last_seq: int
    next_order_id: int
    next_trade_id: int
    instruments: list[Instrument]
    books: list[BookState]
    accounts: list[AccountState]
    # Sorted by key, like everything above: the hash must not depend on dict history.
    last_prices: list[tuple[str, int]] = []
    risk_limits: list[RiskLimitsEntry] = []
    kill_switches: list[KillSwitchEntry] = []
    halts: list[tuple[str, str]] = []
    # Version 3: the ledger (engine/core/balances.py), sorted by key but for the transfers,
    # which are in the order they were applied (by seq).
    assets: list[Asset] = []
    balances: list[BalanceEntry] = []
    transfers: list[TransferRecord] = []
    supply: list[tuple[str, int]] = []
    credit_checks: bool = False
    # Version 4: risk's throttle counters by account, and the audit trail (by seq).
    throttles: list[tuple[str, Throttle]] = []
    risk_audit: list[AuditRecord] = []
    # Version 4: settlement (engine/core/settlement.py); reservations ride on the orders.
    fee_account: str = DEFAULT_FEE_ACCOUNT
    fees: list[tuple[str, int]] = []


def _live_clids(acct: AccountOrders, next_order_id: int) -> list[tuple[str, int]]:
    """The client order ids still taken, by order id: not the dict's history, which differs
    between a node that pruned and one restored from a snapshot (engine/core/matcher.py)."""
    return sorted(acct.live_clids(next_order_id).items(), key=_by_order_id)


def _by_order_id(entry: tuple[str, int]) -> tuple[int, str]:
    return entry[1], entry[0]


def export_state(engine: MatchingEngine) -> EngineState:
    books = []
    for symbol in sorted(engine.books):
        book = engine.books[symbol]
        books.append(
            BookState(
                symbol,
                [o for level in book.bids.iter_levels() for o in level.orders.values()],
                [o for level in book.asks.iter_levels() for o in level.orders.values()],
            )
        )
    accounts = [
        AccountState(name, _live_clids(acct, engine.next_order_id)) for name, acct in engine.accounts.items()
    ]
    return EngineState(
        STATE_VERSION,
        engine.last_seq,
        engine.next_order_id,
        engine.next_trade_id,
        [engine.instruments[s] for s in sorted(engine.instruments)],
        books,
        accounts,
        sorted(engine.last_price.items()),
        [RiskLimitsEntry(s, t, lim) for (s, t), lim in sorted(engine.risk.limits.items())],
        [KillSwitchEntry(s, t, why) for (s, t), why in sorted(engine.risk.kill_switches.items())],
        sorted(engine.risk.halts.items()),
        *_export_ledger(engine),
        sorted(engine.risk.throttles.items()),
        list(engine.risk.audit),
        engine.ledger.fee_account,
        sorted(engine.ledger.fees.items()),
    )


def _export_ledger(
    engine: MatchingEngine,
) -> tuple[list[Asset], list[BalanceEntry], list[TransferRecord], list[tuple[str, int]], bool]:
    ledger = engine.ledger
    balances = [
        BalanceEntry(account, asset, b.total, b.held)
        for account in sorted(ledger.balances)
        for asset, b in sorted(ledger.balances[account].items())
    ]
    return (
        [ledger.assets[a] for a in sorted(ledger.assets)],
        balances,
        sorted(ledger.transfers.values(), key=lambda r: r.seq),
        sorted(ledger.supply.items()),
        ledger.credit_checks,
    )


def upcast(state: EngineState) -> EngineState:
    """The state in the current version. A version 2 state (written before the ledger)
    decodes with the ledger's defaults (no assets, balances or transfers, credit checks
    off), a version 3 one without throttle counts, audit records or reservations, which is
    what they held (no throttle limits existed, nor audit records; credit checks were
    journaled but not enforced, so it is upcast with them off, which is what they did). The
    node's start-up journals the configured switch again, and turning it on reserves for the
    resting orders (MatchingEngine._set_credit), so that step is journaled and replays alike.
    Only the version number changes."""
    if state.version not in READABLE_VERSIONS:
        raise ValueError(f"engine state version {state.version} is not one of {READABLE_VERSIONS}")
    if state.version < 4:
        state.credit_checks = False
    state.version = STATE_VERSION
    return state


def restore_state(state: EngineState) -> MatchingEngine:
    state = upcast(state)
    engine = MatchingEngine(state.instruments)
    engine.last_seq = state.last_seq
    engine.next_order_id = state.next_order_id
    engine.next_trade_id = state.next_trade_id
    engine.last_price.update(state.last_prices)
    risk = engine.risk
    risk.limits.update(((e.scope, e.target), e.limits) for e in state.risk_limits)
    risk.kill_switches.update(((e.scope, e.target), e.reason) for e in state.kill_switches)
    risk.halts.update(state.halts)
    risk.throttles.update(state.throttles)
    risk.audit.extend(state.risk_audit)
    engine.risk_on = risk.active
    ledger = engine.ledger
    ledger.assets.update((a.name, a) for a in state.assets)
    for e in state.balances:
        ledger.balances.setdefault(e.account, {})[e.asset] = Balance(e.total, e.held)
    ledger.transfers.update((r.transfer_id, r) for r in state.transfers)
    ledger.supply.update(state.supply)
    ledger.credit_checks = state.credit_checks
    ledger.fee_account = state.fee_account
    ledger.fee_tallies.update((asset, FeeTally(total)) for asset, total in state.fees)
    engine.configure_markets()
    for acct_state in state.accounts:
        acct = engine.accounts[acct_state.account] = AccountOrders(acct_state.account)
        acct.by_clid.update(acct_state.client_order_ids)
    # The decoder gives every order its own copy of its account, symbol, price and client
    # order id (also a key of by_clid): share one object per value instead, as orders that
    # arrive live do. A deep book's memory is mostly these copies, and a smaller heap is a
    # shorter fork for every snapshot (engine/snapshot_child.py).
    accounts = {name: name for name in engine.accounts}
    for book_state in state.books:
        book = engine.books[book_state.symbol]
        symbol = book.symbol
        for side, orders in ((book.bids, book_state.bids), (book.asks, book_state.asks)):
            for order in orders:
                side.add(order)
                order.symbol = symbol
                order.price = side.levels[order.price].price
                account = accounts.get(order.account)
                if account is None:
                    account = accounts[order.account] = order.account
                    engine.accounts[account] = AccountOrders(account)
                order.account = account
                engine.accounts[account].open[order.order_id] = order
    for acct_state in state.accounts:
        open_orders = engine.accounts[acct_state.account].open
        for clid, order_id in acct_state.client_order_ids:
            held = open_orders.get(order_id)
            if held is not None and held.client_order_id == clid:
                held.client_order_id = clid
    engine.clid_expiry.rebuild(engine.accounts.values())
    risk.watching = engine.risk_watch = risk.needs_watching()
    risk.counting = risk.needs_counting()
    if risk.watching:
        rebuild(risk.notional, engine.accounts)  # derived from the open orders, not exported
    return engine


_encoder = msgspec.msgpack.Encoder()


def encode_state(state: EngineState) -> bytes:
    return _encoder.encode(state)


def decode_state(data: bytes) -> EngineState:
    return msgspec.msgpack.decode(data, type=EngineState)


def state_hash(engine: MatchingEngine) -> str:
    """Deterministic digest of the engine state (BLAKE2b-256, hex)."""
    return hash_state(export_state(engine))


def hash_state(state: EngineState) -> str:
    """The digest of an exported state. The risk audit trail is left out: it is history
    that changes no future event, and a state written before it existed (version 3 and
    older) restores without the records of the commands before it, while a replay from the
    journal's start rebuilds them: both must hash alike."""
    audit = state.risk_audit
    if not audit:
        return hashlib.blake2b(encode_state(state), digest_size=32).hexdigest()
    state.risk_audit = []
    try:
        return hashlib.blake2b(encode_state(state), digest_size=32).hexdigest()
    finally:
        state.risk_audit = audit
