"""The ledger in the core (engine/core/balances.py, issue 15 first slice): assets, the quote
amount rule, idempotent audited transfers, conservation after every command (property),
replay and snapshot restore reaching the same balances and hash, and data written before
the ledger existed still recovering."""

from __future__ import annotations

import shutil
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.balances import MAX_AMOUNT, FeeTally, instrument_asset_problem, quote_amount
from engine.core.commands import (
    Amend,
    Cancel,
    ListAsset,
    ListInstrument,
    NewOrder,
    SetCreditChecks,
    SetKillSwitch,
    Transfer,
)
from engine.core.domain import Asset, Instrument, RejectReason, RiskScope, TransferKind
from engine.core.events import OrderRejected, TransferApplied
from engine.core.invariants import check_engine, check_fees
from engine.core.matcher import MatchingEngine
from engine.core.replay import SilentReplayer
from engine.core.state import decode_state, encode_state, export_state, restore_state, state_hash
from engine.exchange import ExchangeNode, NodeConfig

R = RejectReason
DEP, WDR, ADJ = (int(k) for k in TransferKind)
PRE_LEDGER = Path(__file__).parent / "data" / "pre_ledger"


class Seq:
    def __init__(self, engine: MatchingEngine) -> None:
        self.engine = engine
        self.n = engine.last_seq

    def __call__(self, cmd):
        self.n += 1
        cmd.seq, cmd.ts = self.n, 1_000 * self.n
        return self.engine.apply(cmd)


def funded() -> Seq:
    apply = Seq(MatchingEngine([]))
    apply(ListAsset(Asset("USD", 2)))
    apply(ListAsset(Asset("BTC", 8)))
    return apply


def test_quote_amount_is_exact_for_listed_units_and_rounds_up_otherwise():
    # 3 lots of 0.001 BTC (10**5 satoshis) at $65,000.00 (6,500,000 cents per BTC): $195.00
    assert quote_amount(6_500_000, 3, 10**5, 8) == 19_500
    assert quote_amount(1, 1, 1, 1) == 1  # 0.1 of a unit rounds up, toward the payer
    assert quote_amount(7, 3, 1, 0) == 21
    assets = {"USD": Asset("USD", 2), "BTC": Asset("BTC", 8)}
    fine = Instrument("BTC-USD", tick_size=1000, lot_size=1, base="BTC", quote="USD", contract_size=10**5)
    assert instrument_asset_problem(fine, assets) == (0, "")
    coarse = Instrument("BTC-USD", tick_size=1, lot_size=1, base="BTC", quote="USD", contract_size=10**5)
    reason, message = instrument_asset_problem(coarse, assets)
    assert reason == R.INEXACT_QUOTE_UNITS and "finer USD scale" in message
    unknown = Instrument("ETH-USD", base="ETH", quote="USD")
    assert instrument_asset_problem(unknown, assets)[0] == R.UNKNOWN_ASSET
    with pytest.raises(ValueError, match="both base and quote"):
        Instrument("X", base="BTC")


def test_deposit_withdrawal_adjustment_and_the_audit_record():
    apply = funded()
    [dep] = apply(Transfer("t1", "alice", "USD", DEP, 10_000, "admin"))
    assert type(dep) is TransferApplied
    assert (dep.old_total, dep.new_total, dep.requested_by, dep.applied_ts) == (0, 10_000, "admin", dep.ts)
    [wd] = apply(Transfer("t2", "alice", "USD", WDR, 2_500, "admin"))
    assert (wd.old_total, wd.new_total) == (10_000, 7_500)
    [adj] = apply(Transfer("t3", "alice", "USD", ADJ, -500, "ops-fix"))
    assert (adj.old_total, adj.new_total) == (7_500, 7_000)
    b = apply.engine.ledger.balance("alice", "USD")
    assert b is not None and (b.total, b.held, b.available) == (7_000, 0, 7_000)
    assert apply.engine.ledger.supply == {"USD": 7_000, "BTC": 0}
    assert check_engine(apply.engine) == []


def test_withdrawal_beyond_available_is_refused_and_leaves_nothing():
    apply = funded()
    apply(Transfer("t1", "alice", "USD", DEP, 100))
    before = state_hash(apply.engine)
    for cmd in (
        Transfer("t2", "alice", "USD", WDR, 101),
        Transfer("t3", "alice", "USD", ADJ, -101),
        Transfer("t4", "bob", "USD", WDR, 1),  # no balance at all
    ):
        [rej] = apply(cmd)
        assert type(rej) is OrderRejected and rej.reason == R.INSUFFICIENT_BALANCE, rej
        assert rej.client_order_id == cmd.transfer_id
    assert apply.engine.ledger.balance("alice", "USD").total == 100
    assert "bob" not in apply.engine.ledger.balances
    # Only last_seq moved: the rest of the state is as before.
    apply.engine.last_seq = 2 + 1
    assert state_hash(apply.engine) == before


def test_a_repeated_transfer_id_answers_with_the_original_result():
    apply = funded()
    [first] = apply(Transfer("t1", "alice", "USD", DEP, 100, "admin"))
    apply(Transfer("t2", "alice", "USD", DEP, 50))
    [again] = apply(Transfer("t1", "alice", "USD", DEP, 100, "someone-else"))
    assert again.repeated and not first.repeated
    assert (again.applied_seq, again.applied_ts, again.old_total, again.new_total) == (
        first.seq,
        first.ts,
        0,
        100,
    )
    assert again.requested_by == "admin"
    assert apply.engine.ledger.balance("alice", "USD").total == 150  # applied once
    [conflict] = apply(Transfer("t1", "alice", "USD", DEP, 101))
    assert conflict.reason == R.TRANSFER_ID_CONFLICT
    # A refused transfer is not remembered: its id may be used again.
    [refused] = apply(Transfer("t9", "alice", "USD", WDR, 1_000))
    assert refused.reason == R.INSUFFICIENT_BALANCE
    [later] = apply(Transfer("t9", "alice", "USD", WDR, 150))
    assert type(later) is TransferApplied and later.new_total == 0


@pytest.mark.parametrize(
    ("cmd", "reason"),
    [
        (Transfer("", "alice", "USD", DEP, 1), R.INVALID_TRANSFER_ID),
        (Transfer("x" * 65, "alice", "USD", DEP, 1), R.INVALID_TRANSFER_ID),
        (Transfer("t", "", "USD", DEP, 1), R.INVALID_ACCOUNT),
        (Transfer("t", "alice", "EUR", DEP, 1), R.UNKNOWN_ASSET),
        (Transfer("t", "alice", "USD", 9, 1), R.INVALID_TRANSFER_KIND),
        (Transfer("t", "alice", "USD", DEP, 0), R.INVALID_AMOUNT),
        (Transfer("t", "alice", "USD", WDR, -5), R.INVALID_AMOUNT),
        (Transfer("t", "alice", "USD", ADJ, 0), R.INVALID_AMOUNT),
        (Transfer("t", "alice", "USD", DEP, MAX_AMOUNT + 1), R.INVALID_AMOUNT),
    ],
)
def test_bad_transfers_are_refused_with_a_reason(cmd, reason):
    apply = funded()
    [rej] = apply(cmd)
    assert type(rej) is OrderRejected and rej.reason == reason


def test_supply_never_passes_int64():
    apply = funded()
    apply(Transfer("t1", "alice", "USD", DEP, MAX_AMOUNT))
    [rej] = apply(Transfer("t2", "bob", "USD", DEP, 1))
    assert rej.reason == R.INVALID_AMOUNT


def test_assets_list_once_and_an_instrument_gains_its_assets_once():
    apply = Seq(MatchingEngine([Instrument("BTC-USD", tick_size=5)]))
    assert apply(ListAsset(Asset("USD", 2)))[0].asset == "USD"
    assert apply(ListAsset(Asset("USD", 2))) == []
    assert apply(ListAsset(Asset("USD", 3)))[0].reason == R.ASSET_CONFLICT
    money = Instrument("BTC-USD", tick_size=5, base="BTC", quote="USD", contract_size=10**8)
    assert apply(ListInstrument(money))[0].reason == R.UNKNOWN_ASSET  # BTC not listed yet
    apply(ListAsset(Asset("BTC", 8)))
    [listed] = apply(ListInstrument(money))
    assert (listed.base, listed.quote, listed.contract_size) == ("BTC", "USD", 10**8)
    assert apply.engine.instruments["BTC-USD"] == money
    other = Instrument("BTC-USD", tick_size=5, base="BTC", quote="USD", contract_size=10**7)
    assert apply(ListInstrument(other))[0].reason == R.INSTRUMENT_CONFLICT
    changed = Instrument("ETH-USD", tick_size=1)
    apply(ListInstrument(changed))
    assert apply(ListInstrument(Instrument("ETH-USD", tick_size=2, base="BTC", quote="USD")))[0].reason == (
        R.INSTRUMENT_CONFLICT
    )
    on = SetCreditChecks(True, fee_account="venue-fees")
    assert apply(on)[0].enabled and apply(SetCreditChecks(True, fee_account="venue-fees")) == []


ACCOUNTS = ("alice", "bob", "carol")
transfer = st.builds(
    Transfer,
    st.sampled_from([f"t{i}" for i in range(12)]),
    st.sampled_from(ACCOUNTS),
    st.sampled_from(("USD", "BTC", "EUR")),
    st.sampled_from((DEP, WDR, ADJ, 7)),
    st.integers(-2_000, 5_000),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(transfer, max_size=40))
def test_property_conservation_after_every_command_and_replay_reaches_the_same_hash(cmds):
    live = funded()
    journal = [ListAsset(Asset("USD", 2), seq=1), ListAsset(Asset("BTC", 8), seq=2)]
    for cmd in cmds:
        events = live(cmd)
        journal.append(Transfer(*[getattr(cmd, f) for f in Transfer.__struct_fields__]))
        assert len(events) == 1
        assert check_engine(live.engine) == [], cmd
        for b in (x for held in live.engine.ledger.balances.values() for x in held.values()):
            assert b.total >= 0
    digest = state_hash(live.engine)
    replayed = MatchingEngine([])
    SilentReplayer(replayed).apply(journal)
    assert state_hash(replayed) == digest
    restored = restore_state(decode_state(encode_state(export_state(live.engine))))
    assert state_hash(restored) == digest and check_engine(restored) == []
    ledger = restored.ledger
    assert {a: {s: (b.total, b.held) for s, b in h.items()} for a, h in ledger.balances.items()} == {
        a: {s: (b.total, b.held) for s, b in h.items()} for a, h in live.engine.ledger.balances.items()
    }


def test_checker_finds_a_broken_ledger():
    apply = funded()
    apply(Transfer("t1", "alice", "USD", DEP, 100))
    apply.engine.ledger.balances["alice"]["USD"].total = 99
    problems = check_engine(apply.engine)
    assert problems == ["USD: balances sum to 99, but supply is 100"]
    apply.engine.ledger.balances["alice"]["USD"].total = -1
    assert any("total -1" in p for p in check_engine(apply.engine))


def test_a_node_with_data_written_before_the_ledger_recovers_and_gains_money(tmp_path):
    """tests/data/pre_ledger: a journal (22 commands) and a snapshot at seq 12, written by
    the main branch before this change (engine state version 2)."""
    data = tmp_path / "node"
    shutil.copytree(PRE_LEDGER, data)
    node = ExchangeNode(NodeConfig(data, fsync=False))
    try:
        rec = node.recovered
        assert (rec.snapshot_seq, rec.snapshots_skipped, node.engine.last_seq) == (12, 0, 22)
        from_snapshot = rec.state_hash
        assert node.engine.ledger.balances == {} and sum(len(a.open) for a in node.engine.accounts.values())
    finally:
        node.close()
    only_journal = tmp_path / "journal-only"
    shutil.copytree(PRE_LEDGER, only_journal)
    shutil.rmtree(only_journal / "snapshots")
    node = ExchangeNode(NodeConfig(only_journal, fsync=False))
    try:
        assert node.recovered.snapshot_seq == 0 and node.recovered.state_hash == from_snapshot
    finally:
        node.close()
    # The old venue gains assets, its instrument's base and quote, credit checks and money.
    assets = (Asset("USD", 2), Asset("BTC", 8))
    btc = Instrument("BTC-USD", tick_size=5, base="BTC", quote="USD", contract_size=10**8)
    node = ExchangeNode(NodeConfig(data, (btc,), assets, credit_checks=True, fsync=False))
    try:
        assert node.engine.instruments["BTC-USD"] == btc and node.engine.ledger.credit_checks
        [[applied]] = node.submit([Transfer("d1", "alice", "USD", DEP, 500, "admin")])
        assert type(applied) is TransferApplied
        written = node.take_snapshot()
        digest = state_hash(node.engine)
    finally:
        node.close()
    node = ExchangeNode(NodeConfig(data, (btc,), assets, credit_checks=True, fsync=False))
    try:
        assert node.recovered.snapshot_seq == written.seq and node.recovered.state_hash == digest
        assert node.engine.ledger.balance("alice", "USD").total == 500
    finally:
        node.close()


# -- settlement in the mix (engine/core/settlement.py) ---------------------------------------

XUSD = Instrument("X-USD", base="X", quote="USD", maker_fee_bps=-3, taker_fee_bps=7, max_sweep_ticks=3)
# Lots of 5 and contracts of 3 (the lot and contract arithmetic of reservation and
# settlement), with fees of +-1/den (no multiplication; X-USD's -3/7 bps need it).
LOTS = Instrument(
    "X-USD",
    base="X",
    quote="USD",
    maker_fee_bps=-1,
    taker_fee_bps=5,
    max_sweep_ticks=3,
    lot_size=5,
    min_qty=5,
    contract_size=3,
)
TRADERS = ("alice", "bob", "carol")


def _order(account, side, kind, price, qty, tif, stp):
    return NewOrder(account, "", "X-USD", side, kind, 0 if kind == 1 else price, qty, tif, False, stp)


new_order = st.builds(
    _order,
    st.sampled_from(TRADERS),
    st.sampled_from((1, 2)),
    st.sampled_from((1, 2, 2, 2)),
    st.integers(95, 105),
    st.integers(1, 40),
    st.sampled_from((1, 1, 3, 4)),
    st.sampled_from((0, 1, 2, 3)),
)
others = st.one_of(
    st.builds(Cancel, st.sampled_from(TRADERS), st.integers(1, 40)),
    st.builds(
        Amend,
        st.sampled_from(TRADERS),
        st.integers(1, 40),
        new_qty=st.integers(0, 40),
        new_price=st.integers(0, 106),
    ),
    st.builds(
        Transfer,
        st.sampled_from([f"m{i}" for i in range(8)]),
        st.sampled_from((*TRADERS, "venue-fees")),
        st.sampled_from(("USD", "X")),
        st.sampled_from((DEP, WDR)),
        st.integers(1, 3_000),
    ),
    st.builds(SetCreditChecks, st.booleans(), fee_account=st.just("venue-fees")),
    st.builds(SetKillSwitch, st.just(int(RiskScope.ACCOUNT)), st.sampled_from(TRADERS), st.booleans()),
    st.builds(SetKillSwitch, st.just(int(RiskScope.ACCOUNT)), st.sampled_from(TRADERS), st.just(False)),
)
# Mostly new orders (so trades happen), with the rest of what moves money or reservations.
money_cmd = st.integers(0, 9).flatmap(lambda n: new_order if n < 7 else others)


def _in_lots(cmd, lot: int):
    """A command's quantities in lots of `lot` (a new order's and an amend's)."""
    if type(cmd) is NewOrder:
        return msgspec.structs.replace(cmd, qty=cmd.qty * lot)
    if type(cmd) is Amend:
        return msgspec.structs.replace(cmd, new_qty=cmd.new_qty * lot)
    return cmd


@pytest.mark.parametrize("inst", [XUSD, LOTS], ids=["ones", "lots"])
@settings(max_examples=150, deadline=None)
@given(cmds=st.lists(money_cmd, max_size=60))
def test_property_settlement_conserves_money_after_every_command_and_replays_to_the_same_hash(inst, cmds):
    """Orders, cancels, amends, transfers, credit switches and kill switches in any order:
    after every command the ledger is conserved, held equals the open orders' reservations,
    fees paid equal fees received and nothing is negative; a replay of the journal and a
    snapshot restore reach the same balances and state hash. For lots and contracts of one
    and for lots of 5 and contracts of 3 (the order path's and the match loop's inlined lot
    arithmetic must keep to `Money.reservation`, the one rule)."""
    cmds = [_in_lots(cmd, inst.lot_size) for cmd in cmds]
    setup = [ListAsset(Asset("USD", 0)), ListAsset(Asset("X", 0)), ListInstrument(inst)]
    scale = inst.lot_size * inst.contract_size  # the same funds in lots as X-USD's
    funds = (("USD", 12_000 * scale), ("X", 90 * scale))
    setup += [Transfer(f"{a}-{s}", a, s, DEP, n) for a in TRADERS for s, n in funds]
    setup.append(SetCreditChecks(True, fee_account="venue-fees"))
    live = Seq(MatchingEngine([]))
    journal = []
    for cmd in (*setup, *cmds):
        live(cmd)
        journal.append(msgspec.msgpack.decode(msgspec.msgpack.encode(cmd), type=type(cmd)))
        problems = check_engine(live.engine) + check_fees(live.engine.ledger)
        assert problems == [], (cmd, problems)
    digest = state_hash(live.engine)
    replayed = MatchingEngine([])
    SilentReplayer(replayed).apply(journal)
    assert state_hash(replayed) == digest
    restored = restore_state(decode_state(encode_state(export_state(live.engine))))
    assert state_hash(restored) == digest and check_engine(restored) == []
    assert restored.ledger.fees == live.engine.ledger.fees


def test_checker_finds_a_reservation_that_does_not_match_held():
    apply = Seq(MatchingEngine([]))
    for cmd in (ListAsset(Asset("USD", 0)), ListAsset(Asset("X", 0)), ListInstrument(XUSD)):
        apply(cmd)
    apply(Transfer("t1", "alice", "USD", DEP, 10_000))
    apply(SetCreditChecks(True, fee_account="venue-fees"))
    apply(_order("alice", 1, 2, 100, 10, 1, 0))
    assert check_engine(apply.engine) == []
    apply.engine.ledger.balances["alice"]["USD"].held -= 1
    assert check_engine(apply.engine) == ["account alice USD: held 1009, its open orders reserve 1010"]
    apply.engine.ledger.fee_tallies["USD"] = FeeTally(5)
    assert check_fees(apply.engine.ledger) == ["fee account venue-fees USD: total 0 != fees 5 + transfers"]


def test_fees_accrue_into_the_ledgers_tallies_after_a_restore_and_a_fee_account_change():
    """The match loop adds each match's fees to the cells it finds once per market's Money
    (settlement.fee_cells): a restored engine's, and after the fee account changes, are
    still the ledger's own (a stale cell would count fees nowhere)."""
    apply = Seq(MatchingEngine([]))
    for cmd in (ListAsset(Asset("USD", 0)), ListAsset(Asset("X", 0)), ListInstrument(XUSD)):
        apply(cmd)
    for a in ("alice", "bob"):
        apply(Transfer(f"{a}-usd", a, "USD", DEP, 1_000_000))
        apply(Transfer(f"{a}-x", a, "X", DEP, 1_000))
    apply(SetCreditChecks(True, fee_account="venue-fees"))

    def trade(seq: Seq) -> None:  # 10 at 100: the maker's -3 bps round to 0, the taker's 7 bps to 1
        seq(_order("alice", 2, 2, 100, 10, 1, 0))
        seq(_order("bob", 1, 2, 100, 10, 3, 0))

    trade(apply)
    assert apply.engine.ledger.fees == {"USD": 1}
    restored = Seq(restore_state(decode_state(encode_state(export_state(apply.engine)))))
    trade(restored)
    ledger = restored.engine.ledger
    assert ledger.fees == {"USD": 2} and check_fees(ledger) == [] and check_engine(restored.engine) == []
    restored(SetCreditChecks(True, fee_account="other-fees"))
    trade(restored)
    assert ledger.fees == {"USD": 3}
    assert [ledger.balances[a]["USD"].total for a in ("venue-fees", "other-fees")] == [2, 1]


def test_a_version_3_state_recovers_with_credit_checks_off_as_they_acted_then():
    """Before settlement the switch was journaled but not enforced, and orders reserved
    nothing: a version 3 state restores with it off (its resting orders stay unreserved),
    and the node's next start turns it on by a journaled command that reserves for them."""
    apply = Seq(MatchingEngine([]))
    for cmd in (ListAsset(Asset("USD", 0)), ListAsset(Asset("X", 0)), ListInstrument(XUSD)):
        apply(cmd)
    apply(Transfer("t1", "alice", "USD", DEP, 10_000))
    apply(_order("alice", 1, 2, 100, 10, 1, 0))
    state = export_state(apply.engine)
    state.version, state.credit_checks = 3, True
    restored = restore_state(decode_state(encode_state(state)))
    assert not restored.ledger.credit_checks and check_engine(restored) == []
    again = Seq(restored)
    [changed] = again(SetCreditChecks(True, fee_account="venue-fees"))
    assert changed.cancelled == 0 and restored.ledger.balance("alice", "USD").held == 1_010
    assert check_engine(restored) == []
