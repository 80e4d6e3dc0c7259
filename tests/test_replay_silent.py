"""The silent replay path (engine/core/replay.py, `MatchingEngine.replay`: the one order path
and match loop without an event sink) against `MatchingEngine.apply`.

Random command streams - crossing and resting orders in every time in force and STP mode,
post-only, duplicate and over-long client ids, invalid values, unknown symbols, cancels and
amends of live, finished and never-issued orders, cancel-all, a listing mid-stream, risk
limits, kill switches and halts set and released - are applied both ways. After every
command the state hash and the event count must agree; the commands replayed are decoded
from the wire, so they carry fresh strings as from a journal.
"""

from __future__ import annotations

import itertools

import msgspec
import pytest
from conftest import BTC, ETH, INSTRUMENTS, SOL, T0
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.bench.workload import generate, make_engine
from engine.core.commands import (
    Amend,
    Cancel,
    CancelAll,
    ListInstrument,
    NewOrder,
    ReplayCancel,
    ReplayNewOrder,
    SetKillSwitch,
    SetRiskLimits,
    SetTradingHalt,
)
from engine.core.domain import Instrument, RiskLimits
from engine.core.invariants import check_engine
from engine.core.matcher import MatchingEngine, SequenceError
from engine.core.replay import SilentReplayer
from engine.core.state import decode_state, encode_state, export_state, restore_state, state_hash
from engine.journal.format import BatchMeta, decode_for_replay, decode_record

LISTED = INSTRUMENTS[:2]  # BTC (tick 5, lot 10, min 10) and ETH; SOL gets listed mid-stream
# Names longer than one character: CPython shares one-character strings, which would hide
# a comparison by identity where the engine compares by value.
ACCOUNTS = ("acct-a", "acct-b", "acct-c")
CLIDS = ("", "", *(f"c{i}" for i in range(40)), "L" * 65)
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

accounts = st.sampled_from(ACCOUNTS)
clids = st.sampled_from(CLIDS)
# Prices around 100 on BTC's tick of 5 (ETH's tick is 1): buys and sells overlap, so many
# orders cross.
prices = st.sampled_from([85, 90, 95, 100, 100, 105, 110, 115])
# One invalid value in some new orders (each a rejection reason of its own).
MUTATIONS = {
    "account": ["", "a" * 65],
    "client_order_id": ["L" * 65],
    "symbol": ["NOPE-USD"],
    "side": [0, 3],
    "order_type": [7],
    "price": [101, 0, -5],  # 101: off BTC's tick
    "qty": [5, 0, -10, 10_000_000],
    "tif": [2, 9],
    "stp": [9, -1],
}


@st.composite
def new_orders(draw) -> NewOrder:
    order_type = draw(st.sampled_from([2, 2, 2, 2, 1]))
    cmd = NewOrder(
        draw(accounts),
        draw(clids),
        draw(st.sampled_from([BTC, BTC, BTC, ETH, SOL])),  # SOL is valid once listed
        draw(st.sampled_from([1, 2])),
        order_type,
        draw(prices) if order_type == 2 else 0,
        draw(st.sampled_from([10, 20, 30, 50, 60, 100])),
        draw(st.sampled_from([1, 1, 1, 3, 3, 4])),
        draw(st.sampled_from([False] * 4 + [True])),
        draw(st.sampled_from([0, 1, 2, 3])),
    )
    if draw(st.integers(0, 9)) == 0:
        field = draw(st.sampled_from(sorted(MUTATIONS)))
        setattr(cmd, field, draw(st.sampled_from(MUTATIONS[field])))
    return cmd


cancels = st.builds(
    Cancel,
    account=accounts,
    order_id=st.integers(0, 30),  # 0: by client id
    client_order_id=clids,
)
amends = st.builds(
    Amend,
    account=accounts,
    order_id=st.integers(0, 30),
    client_order_id=clids,
    new_qty=st.sampled_from([0, 0, 10, 20, 40, 100, 5]),
    new_price=st.sampled_from([0, 0, 90, 95, 100, 105, 110]),
    new_client_order_id=clids,
)
cancel_alls = st.builds(CancelAll, account=accounts, symbol=st.sampled_from(["", BTC, "NOPE-USD"]))
listings = st.builds(
    ListInstrument,
    instrument=st.sampled_from([INSTRUMENTS[2], Instrument(SOL, tick_size=2), INSTRUMENTS[1]]),
)
# Risk administration: with any limit, switch or halt set, new orders go through `apply`
# (its risk checks); released again, the fast path resumes. Targets hit live names.
scopes = st.sampled_from([(1, ""), (2, BTC), (2, ETH), (3, "acct-a"), (3, "acct-b")])
risk_limits = st.builds(
    lambda target, limits: SetRiskLimits(target[0], target[1], limits),
    scopes,
    st.sampled_from(
        [
            RiskLimits(),  # removes the entry
            RiskLimits(max_order_qty=40),
            RiskLimits(price_band_bps=500),
            RiskLimits(max_open_orders=2),
            RiskLimits(max_order_notional=3000, max_open_notional=6000),
            # Risk watches the order flow (engine/core/risk_watch.py): the running open
            # notional and the throttles' counts, which replay must reproduce.
            RiskLimits(max_open_notional=20_000),
            RiskLimits(max_orders_per_sec=3),
            RiskLimits(max_cancel_ratio=1),
        ]
    ),
)
kill_switches = st.builds(
    lambda target, engaged, cancel: SetKillSwitch(target[0], target[1], engaged, "drill", cancel),
    scopes,
    st.booleans(),
    st.booleans(),
)
halts = st.builds(SetTradingHalt, symbol=st.sampled_from([BTC, ETH]), halted=st.booleans())
risk_commands = st.one_of(risk_limits, kill_switches, halts)
# Weighted by sampling a kind first (st.one_of would treat repeated branches as one).
KINDS = {
    "new": new_orders(),
    "cancel": cancels,
    "amend": amends,
    "cancel_all": cancel_alls,
    "list": listings,
    "risk": risk_commands,
}
MIX = ("new",) * 12 + ("cancel",) * 6 + ("amend",) * 3 + ("cancel_all", "list", "risk")
commands = st.sampled_from(MIX).flatmap(KINDS.__getitem__)
streams = st.one_of(
    st.lists(commands, min_size=1, max_size=10), st.lists(commands, min_size=30, max_size=120)
)


def sequenced(cmds: list) -> list:
    for i, cmd in enumerate(cmds):
        cmd.seq = i + 1
        cmd.ts = T0 + i
    return cmds


def from_the_wire(cmds: list, for_replay: bool = False) -> list:
    """A fresh copy, as decoded from a journal record: by `decode_record`, or as replay
    decodes it (new orders and cancels as `ReplayNewOrder` and `ReplayCancel`)."""
    payload = msgspec.msgpack.encode((BatchMeta(), cmds))
    return decode_for_replay(payload) if for_replay else decode_record(payload)[1]


def live_run(cmds: list) -> tuple[list[int], list[str]]:
    """Event count and state hash after each command under `apply`."""
    engine = MatchingEngine(LISTED)
    counts, hashes = [], []
    for cmd in from_the_wire(cmds):
        counts.append(len(engine.apply(cmd)))
        hashes.append(state_hash(engine))
    return counts, hashes


@SETTINGS
@given(cmds=streams)
def test_silent_replay_matches_apply_after_every_command(cmds):
    cmds = sequenced(cmds)
    counts, hashes = live_run(cmds)
    engine = MatchingEngine(LISTED)
    replayer = SilentReplayer(engine)
    for i, cmd in enumerate(from_the_wire(cmds, for_replay=True)):
        assert replayer.apply([cmd]) == counts[i], f"command {i}: {cmd}"
        assert state_hash(engine) == hashes[i], f"command {i}: {cmd}"
    assert check_engine(engine) == []


@SETTINGS
@given(
    cmds=streams,
    cuts=st.lists(st.integers(0, 120), max_size=4),
    snapshot_at=st.integers(0, 120),
    for_replay=st.booleans(),
)
def test_silent_replay_in_batches_and_after_a_snapshot(cmds, cuts, snapshot_at, for_replay):
    """Batches of any size give the same result, and a replayer started on a restored
    snapshot continues exactly (its account cache starts empty, the accounts do not)."""
    cmds = sequenced(cmds)
    counts, hashes = live_run(cmds)
    wire = from_the_wire(cmds, for_replay)
    snapshot_at %= len(wire) + 1
    bounds = sorted({0, snapshot_at, len(wire), *(c % (len(wire) + 1) for c in cuts)})
    engine = MatchingEngine(LISTED)
    replayer = SilentReplayer(engine)
    for lo, hi in itertools.pairwise(bounds):
        if lo == snapshot_at:
            engine = restore_state(decode_state(encode_state(export_state(engine))))
            replayer = SilentReplayer(engine)
        assert replayer.apply(wire[lo:hi]) == sum(counts[lo:hi])
        assert state_hash(engine) == hashes[hi - 1]
    assert check_engine(engine) == []


def test_the_benchmark_workload_takes_only_the_silent_paths(monkeypatch: pytest.MonkeyPatch):
    """Resting and crossing (IOC limit and market) orders and cancels by order
    id never reach `apply`, and the replay ends on the generator's state hash."""
    workload = generate(5_000, seed=3)
    engine = make_engine()

    def no_apply(cmd):
        raise AssertionError(f"handed to apply: {cmd}")

    monkeypatch.setattr(engine, "apply", no_apply)
    events = SilentReplayer(engine).apply(from_the_wire(workload.commands, for_replay=True))
    reference = make_engine()
    assert events == sum(len(reference.apply(cmd)) for cmd in workload.commands)
    assert state_hash(engine) == workload.state_hash


def test_replay_decoding_keeps_every_field_but_those_only_events_carry():
    """`ReplayNewOrder` and `ReplayCancel` are the leading fields of their commands, with
    the same defaults; what they leave out only ever goes into events. A field appended to
    `NewOrder` or `Cancel` fails this test until it is added to the prefix too (or listed
    here, if it never changes state). `ts` changes state: the core's throttles read it."""
    events_only = {NewOrder: ("trace_id", "trace_parent"), Cancel: ()}
    for full, prefix in ((NewOrder, ReplayNewOrder), (Cancel, ReplayCancel)):
        fields = prefix.__struct_fields__
        assert full.__struct_fields__ == fields + events_only[full]
        defaults = {f.name: f.default for f in msgspec.structs.fields(full)}
        assert {f.name: f.default for f in msgspec.structs.fields(prefix)} == {n: defaults[n] for n in fields}
        assert prefix.__struct_config__.tag == full.__struct_config__.tag
    cmd = NewOrder("acct-a", "c1", BTC, 1, 2, 100, 10, 3, True, 2, seq=7, ts=T0, trace_id="t" * 32)
    (decoded,) = from_the_wire([cmd], for_replay=True)
    assert type(decoded) is ReplayNewOrder
    assert decoded.full() == NewOrder("acct-a", "c1", BTC, 1, 2, 100, 10, 3, True, 2, seq=7, ts=T0)
    (decoded,) = from_the_wire([Cancel("acct-a", 5, "c1", seq=8, ts=T0)], for_replay=True)
    assert decoded.full() == Cancel("acct-a", 5, "c1", seq=8, ts=T0)


def test_a_stale_sequence_number_is_refused_as_by_apply():
    engine = MatchingEngine(LISTED)
    replayer = SilentReplayer(engine)
    first = sequenced([NewOrder("acct-a", "c1", BTC, 1, 2, 100, 10), Cancel("acct-a", 1)])
    assert replayer.apply(first) == 2
    for stale in (NewOrder("acct-a", "c2", BTC, 1, 2, 100, 10, seq=2), Cancel("acct-a", 1, seq=1)):
        with pytest.raises(SequenceError):
            replayer.apply([stale])
    assert engine.last_seq == 2


def test_full_commands_take_the_same_paths_as_their_replay_prefixes():
    """A standby or a test may hand whole `NewOrder` and `Cancel` commands to the replayer:
    same state and event count as the replay prefixes decoded from the wire."""
    workload = generate(3_000, seed=4)
    full = from_the_wire(workload.commands)
    prefixes = from_the_wire(workload.commands, for_replay=True)
    assert {type(c) for c in full} == {NewOrder, Cancel}
    engines = make_engine(), make_engine()
    batches = zip(engines, (full, prefixes), strict=True)
    counts = [SilentReplayer(engine).apply(cmds) for engine, cmds in batches]
    assert counts[0] == counts[1] > len(full)
    assert state_hash(engines[0]) == state_hash(engines[1]) == workload.state_hash


@pytest.mark.parametrize("for_replay", [True, False])
def test_resting_orders_share_their_symbol_and_account_strings(for_replay):
    """Each decoded command brings fresh copies of its symbol and account; a resting order
    keeps the market's and the account's one string instead (a deep book would otherwise
    hold two strings per order), whether it came through replay or `apply`."""
    workload = generate(2_000, seed=5)
    engine = make_engine()
    wire = from_the_wire(workload.commands, for_replay)
    if for_replay:
        SilentReplayer(engine).apply(wire)
    else:
        for cmd in wire:
            engine.apply(cmd)
    assert state_hash(engine) == workload.state_hash
    (book,) = engine.books.values()
    resting = [o for acct in engine.accounts.values() for o in acct.open.values()]
    assert len(resting) > 100
    for order in resting:
        assert order.symbol is book.symbol
        assert order.account is engine.accounts[order.account].name


def test_one_batch_in_which_a_risk_command_starts_and_stops_the_watch():
    """`MatchingEngine.replay` takes a whole record's batch and keeps the risk watch flag and
    the last seq in locals: a throttle set mid-batch must send the orders after it through
    `apply`'s hook (the third order is refused, counts kept), and its removal must send them
    back to the silent path, exactly as command-by-command `apply` decides."""
    throttle = RiskLimits(max_orders_per_sec=2)
    cmds = sequenced(
        [
            NewOrder("acct-a", "c1", BTC, 1, 2, 100, 10),
            SetRiskLimits(3, "acct-a", throttle),  # RiskScope.ACCOUNT: the watch starts
            NewOrder("acct-a", "c2", BTC, 1, 2, 95, 10),
            NewOrder("acct-a", "c3", BTC, 1, 2, 90, 10),
            NewOrder("acct-a", "c4", BTC, 1, 2, 85, 10),  # third within the second: refused
            Cancel("acct-a", 1),
            SetRiskLimits(3, "acct-a", RiskLimits()),  # removed: the watch stops
            NewOrder("acct-a", "c5", BTC, 2, 2, 85, 10),  # crosses c2 and c3
            Cancel("acct-a", 2),
        ]
    )
    counts, hashes = live_run(cmds)
    assert counts[4] == 1  # the throttle refused c4 under apply
    for for_replay in (True, False):
        engine = MatchingEngine(LISTED)
        assert SilentReplayer(engine).apply(from_the_wire(cmds, for_replay)) == sum(counts)
        assert state_hash(engine) == hashes[-1]
        assert not engine.risk_watch
        assert check_engine(engine) == []
