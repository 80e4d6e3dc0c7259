"""Balances: the money each account holds, per asset, and the transfers that move it.

Part of the deterministic core: the ledger lives in the engine (`MatchingEngine.ledger`),
changes only through journaled commands (ListAsset, Transfer, SetCreditChecks), and is
exported, hashed, snapshotted and replayed with the rest of the state (engine/core/state.py).

Per account and asset: `total` (what the account owns), `held` (reserved by open orders:
always 0 until reservations land with settlement) and `available = total - held`. Per
asset the ledger keeps `supply` = deposits - withdrawals + adjustments, so conservation is
one comparison (engine/core/invariants.py): the totals of an asset sum to its supply.

Transfers are idempotent by `transfer_id`: an applied transfer is remembered, and a repeat
with the same content answers with the original record (TransferApplied, repeated=true);
the same id with different content is refused (TRANSFER_ID_CONFLICT). A refused transfer
is not remembered, so a retry is judged afresh - as a refused order's client id is free.

Pure like the rest of the core: no clock, no I/O (docs/accounts.md).
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from engine.core.commands import AccountCommand, ListAsset, Transfer
from engine.core.domain import MAX_ACCOUNT_LEN, Asset, Instrument, RejectReason, RequestKind, TransferKind
from engine.core.events import AssetListed, Event, OrderRejected, TransferApplied

R = RejectReason
REQ_TRANSFER = int(RequestKind.TRANSFER)
REQ_ACCOUNTS_ADMIN = int(RequestKind.ACCOUNTS_ADMIN)
DEPOSIT = int(TransferKind.DEPOSIT)
WITHDRAWAL = int(TransferKind.WITHDRAWAL)
ADJUSTMENT = int(TransferKind.ADJUSTMENT)
# Every amount, balance and asset supply fits a signed 64-bit integer (JSON clients, the
# binary protocol, msgspec): a transfer that would pass it is refused (INVALID_AMOUNT).
MAX_AMOUNT = 2**63 - 1
MAX_TRANSFER_ID_LEN = 64
MAX_REQUESTED_BY_LEN = 64
# SetCreditChecks is the matching engine's: switching reserves or releases resting orders.
ACCOUNT_COMMANDS = frozenset((ListAsset, Transfer))


def quote_amount(price: int, qty: int, contract_size: int, base_scale: int) -> int:
    """The quote-asset amount of `qty` at `price`, in integer units of the quote asset.

    A quantity unit is `contract_size` units of the base asset, and a price is in quote
    units per one whole base asset (10**base_scale base units), as prices are quoted:

        amount = price * qty * contract_size / 10**base_scale

    For every order an instrument accepts the division is exact: listing an instrument
    requires tick_size * lot_size * contract_size to be a multiple of 10**base_scale
    (`instrument_asset_problem`), and price and qty are multiples of tick and lot. So
    no rounding happens on a trade, and the buyer's debit equals the seller's credit.
    For any other input the amount rounds up (toward the payer), so that a reservation
    computed by this function never falls short.
    """
    unit: int = 10**base_scale
    return -(-price * qty * contract_size // unit)


MAX_FEE_BPS = 10_000
DEFAULT_FEE_ACCOUNT = "venue-fees"


def fees_problem(inst: Instrument) -> str:
    """Why an instrument's fees cannot be listed ("" when they can): each rate within
    +-10,000 bps, and a maker rebate no larger than the taker fee (engine/core/settlement.py)."""
    m, t = inst.maker_fee_bps, inst.taker_fee_bps
    if not (-MAX_FEE_BPS <= m <= MAX_FEE_BPS and -MAX_FEE_BPS <= t <= MAX_FEE_BPS):
        return f"instrument {inst.symbol}: maker_fee_bps and taker_fee_bps must be within +-{MAX_FEE_BPS}"
    if m + t < 0:
        return (
            f"instrument {inst.symbol}: the maker rebate ({m} bps) exceeds the taker fee ({t} bps); "
            "the fee account would pay out more than it takes in"
        )
    return ""


def quote_factor(contract_size: int, base_scale: int) -> tuple[int, int]:
    """`quote_amount`'s rule as a reduced fraction (num, den) of price x qty, for the order
    path: amount = ceil(price * qty * num / den). Settlement computes it once per instrument
    (engine/core/settlement.py `Money.amount`) and skips the division when den is 1."""
    unit = 10**base_scale
    a, b = contract_size, unit
    while b:  # Euclid's greatest common divisor (the core imports no math module)
        a, b = b, a % b
    return contract_size // a, unit // a


def instrument_asset_problem(inst: Instrument, assets: Mapping[str, Asset]) -> tuple[int, str]:
    """Why an instrument's money fields cannot be listed against these assets:
    (reason, message), or (0, "") when they can (or it names no assets)."""
    problem = fees_problem(inst)
    if problem:
        return R.INVALID_FEES, problem
    if not inst.has_assets:
        return 0, ""
    for name in (inst.base, inst.quote):
        if name not in assets:
            return R.UNKNOWN_ASSET, f"instrument {inst.symbol}: asset {name!r} is not listed in [[assets]]"
    unit = 10 ** assets[inst.base].scale
    smallest = inst.tick_size * inst.lot_size * inst.contract_size
    if smallest % unit:
        return R.INEXACT_QUOTE_UNITS, (
            f"instrument {inst.symbol}: tick_size x lot_size x contract_size = {smallest} is not a "
            f"multiple of 10**{assets[inst.base].scale} ({inst.base}'s scale), so a trade's "
            f"{inst.quote} amount would need rounding; use a finer {inst.quote} scale or a larger tick"
        )
    return 0, ""


def listing_problem(assets: Mapping[str, Asset], listed: Instrument | None, inst: Instrument) -> int:
    """The reject reason for listing `inst` over `listed` (None: new), or 0. A listed
    instrument keeps its spec, but one listed before assets existed may gain its base,
    quote, contract size, fees and sweep limits once (an upgrade of an old venue)."""
    if listed is not None:
        bare = msgspec.structs.replace(
            inst,
            base="",
            quote="",
            contract_size=1,
            maker_fee_bps=0,
            taker_fee_bps=0,
            max_sweep_ticks=0,
            max_sweep_bps=0,
        )
        if listed.has_assets or listed != bare:
            return R.INSTRUMENT_CONFLICT
    return instrument_asset_problem(inst, assets)[0]


class Balance:
    """One account's holding of one asset."""

    __slots__ = ("total", "held")

    def __init__(self, total: int = 0, held: int = 0) -> None:
        self.total = total
        self.held = held

    @property
    def available(self) -> int:
        return self.total - self.held


class TransferRecord(msgspec.Struct, frozen=True, array_like=True):
    """An applied transfer: the audit record (who, when, old and new total)."""

    transfer_id: str
    account: str
    asset: str
    kind: int  # TransferKind
    amount: int  # signed for adjustments
    old_total: int
    new_total: int
    requested_by: str
    seq: int
    ts: int  # the sequencer's timestamp of the command that applied it


class FeeTally:
    """The fees of one asset credited to fee accounts, ever: a cell the match loop adds to
    (engine/core/settlement.py `fee_cells`), as it adds to the fee account's balance."""

    __slots__ = ("total",)

    def __init__(self, total: int = 0) -> None:
        self.total = total


class Ledger:
    """Assets, balances, applied transfers, per-asset supply and the credit switch."""

    __slots__ = ("assets", "balances", "transfers", "supply", "credit_checks", "fee_account", "fee_tallies")

    def __init__(self) -> None:
        self.assets: dict[str, Asset] = {}
        self.balances: dict[str, dict[str, Balance]] = {}  # account -> asset -> balance
        self.transfers: dict[str, TransferRecord] = {}  # transfer_id -> record
        self.supply: dict[str, int] = {}  # asset -> deposits - withdrawals + adjustments
        # Enforced at order admission, settled on every trade (engine/core/settlement.py).
        self.credit_checks = False
        self.fee_account = DEFAULT_FEE_ACCOUNT  # where fees accrue (SetCreditChecks names it)
        # asset -> net fees credited to fee accounts, ever (read as `fees`). A cell per asset,
        # not an int in a dict: the match loop adds to it without two dict probes a match.
        self.fee_tallies: dict[str, FeeTally] = {}

    @property
    def fees(self) -> dict[str, int]:
        """Asset -> net fees credited to fee accounts, ever (a copy: the cells are the record)."""
        return {asset: tally.total for asset, tally in self.fee_tallies.items()}

    def balance(self, account: str, asset: str) -> Balance | None:
        return self.balances.get(account, {}).get(asset)


def apply_account_command(ledger: Ledger, cmd: AccountCommand) -> list[Event]:
    if type(cmd) is Transfer:
        return _transfer(ledger, cmd)
    assert type(cmd) is ListAsset, "SetCreditChecks is applied by the matching engine"
    return _list_asset(ledger, cmd)


def _list_asset(ledger: Ledger, cmd: ListAsset) -> list[Event]:
    asset = cmd.asset
    listed = ledger.assets.get(asset.name)
    if listed == asset:
        return []
    if listed is not None:
        reason = int(R.ASSET_CONFLICT)
        return [OrderRejected(cmd.seq, cmd.ts, "", asset.name, "", REQ_ACCOUNTS_ADMIN, reason)]
    ledger.assets[asset.name] = asset
    ledger.supply[asset.name] = 0
    return [AssetListed(cmd.seq, cmd.ts, asset.name, asset.scale)]


def _same_transfer(record: TransferRecord, cmd: Transfer) -> bool:
    return (record.account, record.asset, record.kind, record.amount) == (
        cmd.account,
        cmd.asset,
        cmd.kind,
        cmd.amount,
    )


def transfer_problem(ledger: Ledger, cmd: Transfer) -> int:
    """The reject reason of a transfer not seen before, judged on its own fields, or 0."""
    if not 0 < len(cmd.account) <= MAX_ACCOUNT_LEN:
        return R.INVALID_ACCOUNT
    if cmd.asset not in ledger.assets:
        return R.UNKNOWN_ASSET
    if cmd.kind not in (DEPOSIT, WITHDRAWAL, ADJUSTMENT):
        return R.INVALID_TRANSFER_KIND
    if not (0 < cmd.amount <= MAX_AMOUNT or (cmd.kind == ADJUSTMENT and -MAX_AMOUNT <= cmd.amount < 0)):
        return R.INVALID_AMOUNT
    if len(cmd.requested_by) > MAX_REQUESTED_BY_LEN:
        return R.INVALID_ACCOUNT
    return 0


def _transfer(ledger: Ledger, cmd: Transfer) -> list[Event]:
    seq, ts, tid = cmd.seq, cmd.ts, cmd.transfer_id
    if not 0 < len(tid) <= MAX_TRANSFER_ID_LEN:
        return _reject(cmd, R.INVALID_TRANSFER_ID)
    record = ledger.transfers.get(tid)
    if record is not None:
        if not _same_transfer(record, cmd):
            return _reject(cmd, R.TRANSFER_ID_CONFLICT)
        now = ledger.balance(record.account, record.asset)
        held = now.held if now is not None else 0
        return [_applied(seq, ts, record, held, repeated=True)]
    reason = transfer_problem(ledger, cmd)
    if reason:
        return _reject(cmd, reason)
    delta = -cmd.amount if cmd.kind == WITHDRAWAL else cmd.amount
    balance = ledger.balance(cmd.account, cmd.asset)
    old_total = balance.total if balance is not None else 0
    available = balance.available if balance is not None else 0
    if delta < 0 and -delta > available:
        return _reject(cmd, R.INSUFFICIENT_BALANCE)
    supply = ledger.supply[cmd.asset] + delta
    if supply > MAX_AMOUNT:  # bounds every balance and every sum of them too
        return _reject(cmd, R.INVALID_AMOUNT)
    if balance is None:
        balance = ledger.balances.setdefault(cmd.account, {})[cmd.asset] = Balance()
    balance.total = old_total + delta
    ledger.supply[cmd.asset] = supply
    record = TransferRecord(
        tid, cmd.account, cmd.asset, cmd.kind, cmd.amount, old_total, balance.total, cmd.requested_by, seq, ts
    )
    ledger.transfers[tid] = record
    return [_applied(seq, ts, record, balance.held)]


def _applied(seq: int, ts: int, r: TransferRecord, held: int, repeated: bool = False) -> TransferApplied:
    return TransferApplied(
        seq,
        ts,
        r.transfer_id,
        r.account,
        r.asset,
        r.kind,
        r.amount,
        r.old_total,
        r.new_total,
        held,
        r.requested_by,
        r.seq,
        r.ts,
        repeated,
    )


def _reject(cmd: Transfer, reason: int) -> list[Event]:
    return [OrderRejected(cmd.seq, cmd.ts, cmd.account, cmd.transfer_id, "", REQ_TRANSFER, int(reason))]
