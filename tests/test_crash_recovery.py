"""Crash recovery under SIGKILL.

The engine runs in a subprocess (tests/crashkit/driver.py) under a deterministic client
order flow and is killed with SIGKILL at seeded-random points: after a seeded-random number
of acknowledgements read from its output. Each restart recovers (snapshot + journal tail)
and resends from an index before the last acknowledgement, so it resends orders that were
acknowledged, orders that were journaled but never acknowledged, and orders that never
reached the journal. After the last run ends normally, the journal is replayed from its
first record into a fresh engine and checked against everything the clients were told:

  (a) recovery (newest snapshot + journal tail) reaches the state hash of that replay, at
      every restart and at the end; nothing acknowledged before a kill is missing after it;
  (b) every acknowledged accepted order is accepted exactly once in the replay, with the
      acknowledged order id and seq;
  (c) every acknowledged fill is in the replay exactly once, identical;
  (d) no client order id is accepted twice;
  (e) a resend refused as a duplicate names an order accepted earlier.

A third test runs the drill on `loom run` with money: funded accounts trading over REST,
SIGKILLed mid-flow, the balances and the settlement of every acknowledged trade checked
through the API after each recovery (tests/money_drill.py).

A second test parks the driver at exact points of a snapshot write or a journal append
(after a real partial write) and kills it there.

Everything is seeded: the flow by the seed and the index, the kill schedule by
random.Random(seed). Where in the code a kill lands depends on timing; what is checked
does not.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
import waiting
from crashkit.driver import STALL_PHASES, events_digest, flow_command
from loomproc import loom_run_process
from money_drill import ALICE_KEY, BOB_KEY, MoneyTrader, check_money, single_node_config

from engine.core.commands import Cancel, ListInstrument, NewOrder
from engine.core.events import OrderAccepted, Trade
from engine.core.invariants import check_engine
from engine.core.matcher import MatchingEngine
from engine.core.state import state_hash
from engine.exchange import ExchangeNode, NodeConfig
from engine.journal.segments import FileJournal
from engine.snapshots import SnapshotError, decode_snapshot

ROOT = Path(__file__).resolve().parent.parent
DRIVER_MODULE = "tests.crashkit.driver"
RUN_TIMEOUT_S = 60.0  # guard per driver run; a healthy run takes well under a second

SEEDS = (11, 23, 37, 41)
KILLS_PER_SEED = 8
MAX_KILL_AFTER_ACKS = 150
MAX_RESEND = 30  # a restart resends 1..MAX_RESEND already-acknowledged indices
# A run that is to be killed gets more flow than it can possibly get through before the
# kill: the acks it may print ahead of the reader are bounded by the pipe buffer (64 KiB)
# plus one read chunk (64 KiB), at >= 100 bytes an ack.
KILL_RUN_HEADROOM = 1_500
FINAL_RUN_COUNT = 400

assert len(SEEDS) * KILLS_PER_SEED >= 20, "the suite must SIGKILL the engine at least 20 times"


# -- one driver process --------------------------------------------------------------------


@dataclass
class Run:
    argv: list[str]
    ready: dict = field(default_factory=dict)
    acks: list[dict] = field(default_factory=list)
    done: dict | None = None
    stall: dict | None = None
    killed: bool = False
    returncode: int | None = None
    torn_output: bytes = b""  # an incomplete last line (cut by the kill): never delivered
    stderr: str = ""


def _fields(line: str) -> dict:
    out: dict = {}
    for item in line.split()[1:]:
        key, _, value = item.partition("=")
        out[key] = int(value) if value.lstrip("-").isdigit() else value
    return out


class Driver:
    """One driver subprocess with its stdout read line by line under a deadline (select on
    the pipe: readiness comes from the output, never from a sleep)."""

    def __init__(self, args: list[str], stderr_path: Path) -> None:
        self.run = Run([sys.executable, "-m", DRIVER_MODULE, *args])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        self.stderr_path = stderr_path
        self._stderr_fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self.proc = subprocess.Popen(
                self.run.argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,  # never written: a stalled driver exits when it closes
                stdout=subprocess.PIPE,
                stderr=self._stderr_fd,
            )
        except BaseException:
            os.close(self._stderr_fd)
            raise
        self._fd = self.proc.stdout.fileno()
        self._buf = bytearray()
        self._eof = False
        self.deadline = time.monotonic() + RUN_TIMEOUT_S

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=RUN_TIMEOUT_S)
        finally:
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    stream.close()
            os.close(self._stderr_fd)
            self.run.stderr = self.stderr_path.read_text(errors="replace")

    def _readline(self) -> bytes | None:
        """The next complete line, or None at end of output (an unterminated tail is kept
        aside as torn output: a line the kill cut short was never delivered)."""
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return line
            if self._eof:
                self.run.torn_output = bytes(self._buf)
                self._buf.clear()
                return None
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"driver silent for too long: {self.describe()}")
            readable, _, _ = select.select([self._fd], [], [], remaining)
            if readable:
                chunk = os.read(self._fd, 65536)
                if chunk:
                    self._buf += chunk
                else:
                    self._eof = True

    def _next(self) -> str | None:
        """Read and record one line; returns its kind (READY, ACK, DONE, STALL) or None at EOF."""
        raw = self._readline()
        if raw is None:
            return None
        line = raw.decode()
        kind = line.split(" ", 1)[0]
        if kind == "ACK":
            self.run.acks.append(json.loads(line[4:]))
        elif kind == "READY":
            assert not self.run.ready, f"two READY lines: {self.describe()}"
            self.run.ready = _fields(line)
        elif kind == "DONE":
            self.run.done = _fields(line)
        elif kind == "STALL":
            self.run.stall = _fields(line)
        else:
            raise AssertionError(f"unexpected driver output {line!r}: {self.describe()}")
        return kind

    def describe(self) -> str:
        tail = self.stderr_path.read_text(errors="replace")[-2000:] if self.stderr_path.exists() else ""
        return f"{' '.join(self.run.argv[2:])} (acks so far {len(self.run.acks)}); stderr: {tail}"

    def wait_for(self, kind: str) -> None:
        while True:
            got = self._next()
            if got == kind:
                return
            if got is None:
                raise AssertionError(f"driver ended before {kind}: {self.describe()}")

    def wait_acks(self, n: int) -> None:
        while len(self.run.acks) < n:
            if self._next() is None:
                raise AssertionError(
                    f"driver ended after {len(self.run.acks)} of {n} acks: {self.describe()}"
                )

    def kill(self) -> None:
        """SIGKILL, then collect every line it wrote before dying (those acks were delivered)."""
        self.proc.send_signal(signal.SIGKILL)
        self.run.killed = True
        self.finish()

    def finish(self) -> Run:
        while self._next() is not None:
            pass
        self.run.returncode = self.proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        return self.run


def driver_args(
    data: Path,
    seed: int,
    start: int,
    count: int,
    batch: int,
    snapshot_every: int,
    segment_bytes: int,
    stall: str = "",
) -> list[str]:
    args = ["--data", str(data), "--seed", str(seed), "--start", str(start), "--count", str(count)]
    args += ["--batch", str(batch), "--snapshot-every", str(snapshot_every)]
    args += ["--segment-bytes", str(segment_bytes)]
    return [*args, "--stall", stall] if stall else args


# -- the history of one data directory -----------------------------------------------------


@dataclass
class History:
    seed: int
    data: Path
    segment_bytes: int
    runs: list[Run] = field(default_factory=list)

    def start(self, tmp: Path, start: int, count: int, batch: int, snapshot_every: int, stall: str = ""):
        args = driver_args(
            self.data, self.seed, start, count, batch, snapshot_every, self.segment_bytes, stall
        )
        return Driver(args, tmp / f"driver-{len(self.runs)}.stderr")

    def record(self, run: Run) -> Run:
        self.runs.append(run)
        return run

    @property
    def kills(self) -> int:
        return sum(1 for r in self.runs if r.killed and r.returncode == -signal.SIGKILL)

    def finish_and_probe(self, tmp: Path, start: int, batch: int, snapshot_every: int) -> None:
        """The last run goes to the end of its flow normally; then a fresh node recovers and
        reports its state without submitting anything."""
        with self.start(tmp, start, FINAL_RUN_COUNT, batch, snapshot_every) as d:
            d.wait_for("READY")
            run = self.record(d.finish())
        assert run.returncode == 0 and run.done is not None, f"final run failed: {run.stderr[-2000:]}"
        assert len(run.acks) == FINAL_RUN_COUNT
        with self.start(tmp, start + FINAL_RUN_COUNT, 0, batch, snapshot_every) as d:
            d.wait_for("READY")
            probe = self.record(d.finish())
        assert probe.returncode == 0 and probe.done is not None and not probe.acks


def last_acked_index(run: Run, default: int) -> int:
    return max((a["i"] for a in run.acks), default=default)


# -- verification against a replay from the first record -----------------------------------


def verify(history: History) -> Counter:
    """Checks (a)-(e) of the module docstring; returns counts of what the history exercised."""
    stats: Counter = Counter()
    journal = FileJournal(history.data / "journal")
    try:
        commands = list(journal.read(1))
    finally:
        journal.close()
    assert commands, "empty journal"
    assert [c.seq for c in commands] == list(range(1, len(commands) + 1)), "journal not gap-free from seq 1"
    assert type(commands[0]) is ListInstrument

    ready_seqs = {r.ready["last_seq"] for r in history.runs}
    engine = MatchingEngine([])
    events_at: dict[int, list] = {}
    command_at: dict[int, object] = {}
    hash_at: dict[int, str] = {}
    for cmd in commands:
        events_at[cmd.seq] = engine.apply(cmd)
        command_at[cmd.seq] = cmd
        if cmd.seq in ready_seqs:
            hash_at[cmd.seq] = state_hash(engine)
    replay_hash = state_hash(engine)
    last_seq = commands[-1].seq
    assert check_engine(engine) == []

    accepted: dict[tuple[str, str], list[OrderAccepted]] = defaultdict(list)
    trades: dict[int, list[Trade]] = defaultdict(list)
    for seq, events in events_at.items():
        for ev in events:
            if type(ev) is OrderAccepted:
                accepted[ev.account, ev.client_order_id].append(ev)
            elif type(ev) is Trade:
                trades[ev.trade_id].append(ev)
        cmd = command_at[seq]
        if type(cmd) is NewOrder:
            # Every journaled order is the flow's own (stamps aside): nothing invented, nothing mangled.
            expected = flow_command(history.seed, int(cmd.client_order_id[1:]))
            expected.seq, expected.ts = cmd.seq, cmd.ts
            assert cmd == expected, f"journaled {cmd} is not flow command {expected}"

    # (a) snapshot + tail recovery == replay from record one: at every restart and at the end.
    acked_seq = 0
    for n, run in enumerate(history.runs):
        ready = run.ready
        assert ready["last_seq"] >= acked_seq, (
            f"run {n} recovered to seq {ready['last_seq']} but seq {acked_seq} had been acknowledged"
        )
        assert ready["hash"] == hash_at[ready["last_seq"]], (
            f"run {n}: recovered state (snapshot at {ready['snapshot_seq']} + {ready['replayed']} "
            f"replayed) differs from a replay from the first record at seq {ready['last_seq']}"
        )
        stats["restarts_from_snapshot"] += ready["snapshot_seq"] > 0
        stats["torn_tails_truncated"] += ready["torn"]
        acked_seq = max([acked_seq, *(a["seq"] for a in run.acks)])
    probe = history.runs[-1]
    assert probe.ready["last_seq"] == last_seq and probe.ready["hash"] == replay_hash
    assert history.runs[-2].done == {"last_seq": last_seq, "hash": replay_hash}
    node = ExchangeNode(NodeConfig(history.data))
    try:
        rec = node.recovered
        assert (rec.state_hash, node.engine.last_seq) == (replay_hash, last_seq)
        assert 0 < rec.snapshot_seq <= last_seq, "recovery did not start from a snapshot"
        assert rec.replayed_commands == last_seq - rec.snapshot_seq
    finally:
        node.close()

    # Every acknowledgement is the journaled command at its seq, with exactly the events of
    # the replay.
    acks = [a for run in history.runs for a in run.acks]
    for a in acks:
        cmd = command_at.get(a["seq"])
        assert cmd is not None, f"ack {a} names seq beyond the journal ({last_seq})"
        expected_type = NewOrder if a["kind"] == "new" else Cancel
        assert type(cmd) is expected_type and (cmd.account, cmd.client_order_id) == (a["account"], a["clid"])
        assert events_digest(events_at[a["seq"]]) == a["digest"], f"ack {a} differs from the replay"
        assert a["outcome"] in ("accepted", "duplicate", "cancelled", "cancel_rejected"), a
        stats[f"ack_{a['outcome']}"] += 1

    # (b) every acknowledged accepted order: exactly once, same order id and seq.
    acked_accept = Counter()
    for a in (a for a in acks if a["outcome"] == "accepted"):
        key = (a["account"], a["clid"])
        acked_accept[key] += 1
        got = [(ev.order_id, ev.seq) for ev in accepted.get(key, [])]
        assert got == [(a["oid"], a["seq"])], f"acknowledged order {key} appears in the replay as {got}"
    # (d) no client order id accepted twice, in the replay or in the acknowledgements.
    assert [k for k, evs in accepted.items() if len(evs) != 1] == []
    assert [k for k, n in acked_accept.items() if n != 1] == []

    # (c) every acknowledged fill: exactly once, identical.
    for a in acks:
        for trade_id, qty, price, maker, taker in a["fills"]:
            got = trades.get(trade_id, [])
            assert len(got) == 1, f"acknowledged fill {trade_id} appears {len(got)} times"
            t = got[0]
            assert (t.qty, t.price, t.maker_order_id, t.taker_order_id, t.seq) == (
                qty,
                price,
                maker,
                taker,
                a["seq"],
            )
            stats["acked_fills"] += 1
    assert [tid for tid, ts in trades.items() if len(ts) != 1] == []

    # (e) a resend refused as a duplicate names an order accepted earlier (and, when that
    # acceptance was acknowledged, the same order).
    for a in (a for a in acks if a["outcome"] == "duplicate"):
        key = (a["account"], a["clid"])
        first = accepted.get(key)
        assert first and first[0].seq < a["seq"], f"duplicate ack {a} but no earlier acceptance: {first}"
        if acked_accept[key]:
            stats["dup_of_acked"] += 1
        else:
            stats["dup_of_journaled_unacked"] += 1  # kill landed between fdatasync and the ack
    stats["journaled_commands"] = last_seq
    stats["trades"] = len(trades)
    return stats


# -- the tests -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_sigkill_under_load_loses_and_duplicates_nothing(seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    batch = rng.choice((1, 3, 4, 8))
    snapshot_every = rng.choice((3, 5, 8, 13))  # small: kills land around snapshot writes too
    history = History(seed, tmp_path / "node", rng.choice((4096, 16384, 65536)))
    start = 0
    mid_snapshot = 0  # kills that left an unfinished snapshot file behind (timing-dependent)
    for _ in range(KILLS_PER_SEED):
        kill_after = 0 if rng.random() < 0.15 else rng.randint(1, MAX_KILL_AFTER_ACKS)
        count = kill_after + KILL_RUN_HEADROOM
        with history.start(tmp_path, start, count, batch, snapshot_every) as d:
            d.wait_for("READY")
            d.wait_acks(kill_after)
            d.kill()
        run = history.record(d.run)
        assert run.returncode == -signal.SIGKILL, f"driver was not killed: rc {run.returncode}, {run.stderr}"
        assert len(run.acks) < count, "driver got through its whole flow before the kill"
        mid_snapshot += any((history.data / "snapshots").glob("*.snap.tmp"))
        # Restart before the last acknowledgement: resend acknowledged orders, orders that may
        # be journaled but unacknowledged, and orders that never reached the journal.
        start = max(0, last_acked_index(run, start - 1) + 1 - rng.randint(1, MAX_RESEND))
    history.finish_and_probe(tmp_path, start, batch, snapshot_every)

    stats = verify(history)
    print(f"seed {seed}: batch {batch}, snapshot every {snapshot_every}, {mid_snapshot} kills mid-snapshot")
    print(f"  {dict(stats)}")
    assert history.kills == KILLS_PER_SEED
    assert stats["ack_accepted"] > 0 and stats["acked_fills"] > 0 and stats["ack_cancelled"] > 0
    assert stats["dup_of_acked"] > 0, "no acknowledged order was resent"
    assert stats["restarts_from_snapshot"] > 0, "no restart recovered from a snapshot"


# phase -> (stall at the nth snapshot write / journal append / segment creation)
STALL_NTH = {
    "snapshot-partial": 6,
    "snapshot-tmp": 6,
    "snapshot-renamed": 6,
    "journal-torn": 40,
    "segment-torn": 3,
}


@pytest.mark.parametrize("phase", STALL_PHASES)
def test_sigkill_mid_snapshot_or_journal_write_is_survivable(phase: str, tmp_path: Path) -> None:
    seed = 500 + STALL_PHASES.index(phase)
    batch, snapshot_every = 4, 5
    history = History(seed, tmp_path / "node", segment_bytes=2048)
    with history.start(tmp_path, 0, 2_000, batch, snapshot_every, f"{phase}:{STALL_NTH[phase]}") as d:
        d.wait_for("READY")
        d.wait_for("STALL")
        d.kill()
    stalled = history.record(d.run)
    assert stalled.returncode == -signal.SIGKILL, stalled.stderr
    stall_seq, stall_path = stalled.stall["seq"], Path(stalled.stall["path"])
    acked = stalled.acks
    assert acked and acked[-1]["seq"] <= stall_seq

    snapshots = history.data / "snapshots"
    final_snapshot = snapshots / f"snapshot-{stall_seq:020d}.snap"
    if phase in ("snapshot-partial", "snapshot-tmp"):
        assert stall_path.name.endswith(".snap.tmp") and stall_path.exists()
        assert not final_snapshot.exists()
        if phase == "snapshot-partial":
            with pytest.raises(SnapshotError):  # what the kill left behind is a damaged snapshot
                decode_snapshot(stall_path.read_bytes(), str(stall_path))
    elif phase == "snapshot-renamed":
        assert final_snapshot.exists()
    else:  # the journal holds a torn record / a torn segment header
        assert acked[-1]["seq"] == stall_seq, "the stalled batch must be the one after the last ack"
        assert stall_path.exists()

    start = max(0, last_acked_index(stalled, -1) + 1 - 6)
    with history.start(tmp_path, start, 200, batch, snapshot_every) as d:
        d.wait_for("READY")
        resumed = history.record(d.finish())
    assert resumed.returncode == 0, resumed.stderr
    ready = resumed.ready
    assert ready["last_seq"] >= acked[-1]["seq"]
    if phase in ("snapshot-partial", "snapshot-tmp"):
        # The unfinished snapshot is ignored (the previous one is used) and later cleaned up.
        assert 0 < ready["snapshot_seq"] < stall_seq
        assert list(snapshots.glob("*.snap.tmp")) == []
    elif phase == "snapshot-renamed":
        assert ready["snapshot_seq"] == stall_seq
    else:
        # The cut-short write is truncated away; the batch in it was never acknowledged, so
        # its orders are accepted afresh when resent (not refused as duplicates).
        assert (ready["torn"], ready["last_seq"]) == (1, stall_seq)
        never_acked = [a for a in resumed.acks if a["i"] > acked[-1]["i"] and a["kind"] == "new"]
        assert never_acked and all(a["outcome"] == "accepted" for a in never_acked), never_acked
        for a in resumed.acks:
            if a["kind"] == "new" and a["i"] <= acked[-1]["i"]:
                assert a["outcome"] == "duplicate", a

    # Restart once more (a clean restart after recovering from the crash) and check it all.
    history.finish_and_probe(tmp_path, start + 200, batch, snapshot_every)
    stats = verify(history)
    assert history.kills == 1
    assert stats["ack_duplicate"] > 0
    if phase.startswith("snapshot"):
        # The batch that triggered the snapshot was journaled and applied but never
        # acknowledged: resent, its orders are refused as duplicates, not accepted twice.
        assert stats["dup_of_journaled_unacked"] > 0


def test_flow_is_a_function_of_seed_and_index() -> None:
    """What makes resending safe to reason about: the same index always yields the same
    command, and different seeds give different flows."""
    enc = msgspec.msgpack.encode
    first = [enc(flow_command(11, i)) for i in range(500)]
    assert first == [enc(flow_command(11, i)) for i in range(500)]
    assert first != [enc(flow_command(12, i)) for i in range(500)]
    kinds = Counter(type(flow_command(11, i)).__name__ for i in range(500))
    assert kinds["NewOrder"] > 0 and kinds["Cancel"] > 0
    for i in range(500):
        cmd = flow_command(11, i)
        if type(cmd) is Cancel:  # cancels name an earlier order of the same account
            target = flow_command(11, int(cmd.client_order_id[1:]))
            assert type(target) is NewOrder and target.account == cmd.account
            assert int(cmd.client_order_id[1:]) < i


MONEY_KILLS = 3  # small in `make test`: each is a loom run start, some trading and a SIGKILL
MONEY_PAIRS_PER_RUN = 8


def test_sigkill_of_loom_run_keeps_every_balance(tmp_path: Path) -> None:
    """The single-node kill drill with money (issue 15): a funded venue (fees, a rebate)
    traded over REST by two accounts, `loom run` SIGKILLed mid-flow MONEY_KILLS times; after
    each recovery, read through its API, the balances conserve what was deposited less
    withdrawn, none is negative, and every acknowledged trade is settled exactly once
    (tests/money_drill.py)."""
    admin = "money-admin-key-00000000"
    config = tmp_path / "loom.toml"
    config.write_text(single_node_config(admin))
    args = ["--config", str(config), "--data-dir", str(tmp_path / "data")]
    args += ["--http-port", "0", "--fix-port", "-1", "--binary-port", "-1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    base = [""]
    trader = MoneyTrader(lambda: [base[0]], {"alice": ALICE_KEY, "bob": BOB_KEY}, admin)
    for run in range(MONEY_KILLS + 1):
        with loom_run_process(args, env) as (proc, ports):
            base[0] = f"http://127.0.0.1:{ports['http']}"
            if run == 0:
                trader.fund()
            figures = check_money(base[0], trader)  # after the recovery (or the funding)
            print(f"run {run}: {figures}")
            if run == MONEY_KILLS:
                break
            trader.stop.clear()
            thread = threading.Thread(target=trader.run, daemon=True)
            thread.start()
            want = len(trader.trades) + MONEY_PAIRS_PER_RUN
            waiting.wait_until("acknowledged trades", lambda w=want: len(trader.trades) >= w, timeout=60)
            proc.kill()  # mid-flow: the trader's next request goes nowhere
            proc.wait(timeout=30)
            trader.stop.set()
            thread.join(30)
            assert not thread.is_alive()
    assert len(trader.trades) >= MONEY_KILLS * MONEY_PAIRS_PER_RUN
