"""One exchange node: sequencer, journal, matching engine and snapshot schedule wired in
one place, in the order of the order path:

    1. stamp     the sequencer gives each command its seq and ts (group commit batch)
    2. journal   the batch is written and fdatasync'd: nothing is acknowledged before this
    3. apply     the pure engine turns each command into events
    4. ack       the events go back to the caller (gateways turn them into replies)
    5. snapshot  every N commands and/or T seconds, and on demand, at a batch boundary:
                 asked of the snapshotter, a process following the journal with its own
                 engine (engine/snapshotter.py; snapshot_writer = "follower"), or
                 captured by a fork and written by the child (engine/snapshot_child.py)

A batch the journal cannot make durable, and knows it does not hold, is refused whole
(JOURNAL_WRITE_FAILED): the engine never sees it and the sequence numbers are given back,
so the node stays up and accepts again once writes succeed. A batch whose fate the journal
cannot tell (a lost PubAck; a failed fdatasync that could not be cut off) is first looked
into; if still unknown, answered OUTCOME_UNKNOWN and held as `unresolved`: nothing is
sequenced after it until `resolve_unknown` finds it landed (applied then, as if just
written) or absent (its numbers given back).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import snapshot_child
from engine.core.balances import DEFAULT_FEE_ACCOUNT
from engine.core.commands import (
    Amend,
    Cancel,
    CancelAll,
    ListAsset,
    ListInstrument,
    NewOrder,
    ReplayNewOrder,
    SetCreditChecks,
    SetKillSwitch,
    SetRiskLimits,
    SetTradingHalt,
    Transfer,
)
from engine.core.domain import Asset, Instrument, RejectReason, RequestKind
from engine.core.events import OrderRejected
from engine.core.risk import check_new
from engine.journal import JournalWriteError, OutcomeUnknownError
from engine.journal.format import BatchMeta
from engine.journal.retention import KEEP, RetentionStats, check_policy, retire
from engine.journal.segments import DEFAULT_SEGMENT_BYTES, FileJournal
from engine.recovery import Recovered, recover, tail_guard
from engine.refusal_log import RefusalLog
from engine.sequencer import Sequencer
from engine.snapshot_child import SnapshotJob, SnapshotWriteError
from engine.snapshot_follower import SnapshotFollower
from engine.snapshots import SnapshotStore, WrittenSnapshot
from telemetry.trace_ids import derived_trace_id, new_trace_id

log = logging.getLogger("loom.exchange")

# Who writes a running node's snapshots: "follower", the snapshotter process, which shares no
# memory with the node (a local journal only); "fork", a forked child of the node.
SNAPSHOT_WRITERS = ("follower", "fork")

_REQUEST_OF = {
    NewOrder: RequestKind.NEW,
    Cancel: RequestKind.CANCEL,
    Amend: RequestKind.AMEND,
    CancelAll: RequestKind.CANCEL_ALL,
    ListInstrument: RequestKind.LIST_INSTRUMENT,
    SetRiskLimits: RequestKind.RISK,
    SetKillSwitch: RequestKind.RISK,
    SetTradingHalt: RequestKind.RISK,
    Transfer: RequestKind.TRANSFER,
    ListAsset: RequestKind.ACCOUNTS_ADMIN,
    SetCreditChecks: RequestKind.ACCOUNTS_ADMIN,
}


RISK_TIMING_EVERY = 8  # batches
# How long a start keeps asking a refusing journal to list the configured instruments.
LISTING_RETRY_S = 10.0
LISTING_RETRY_PAUSE_S = 0.2
# How long an append with an unknown outcome is looked into before its commands are
# answered OUTCOME_UNKNOWN (a PubAck lost while the stream still answers reads is settled
# well within it; a NATS outage is not), and for each later attempt to resolve it.
RESOLVE_BEFORE_ANSWER_S = 2.0
RESOLVE_ATTEMPT_S = 1.0
# loom_journal_unknown_outcomes: (resolution, answered) - answered "definite" when settled
# before the answer (accepted, or a true refusal), "unknown" after an OUTCOME_UNKNOWN;
# "abandoned": the node stopped leading first, and the stream (followed) decides.
UNKNOWN_OUTCOME_KINDS = (
    ("landed", "definite"),
    ("absent", "definite"),
    ("landed", "unknown"),
    ("absent", "unknown"),
    ("abandoned", "unknown"),
)


def _setup_name(cmd) -> str:
    if isinstance(cmd, ListInstrument):
        return f"listing {cmd.instrument.symbol}"
    if isinstance(cmd, ListAsset):
        return f"asset {cmd.asset.name}"
    return "credit_checks"


def setup_stages(
    assets: Iterable[Asset],
    instruments: Iterable[Instrument],
    credit_checks: bool | None,
    fee_account: str = DEFAULT_FEE_ACCOUNT,
) -> list[Callable[[Any], list]]:
    """What a node journals at start (or a cluster leader on promotion), as three stages each
    naming the commands still missing from an engine: assets, then the instruments that name
    them (an instrument listed before assets existed gains its base and quote), then the
    credit switch with the fee account (None: as journaled). One rule for the single node
    and the cluster."""
    assets, instruments = tuple(assets), tuple(instruments)

    def missing_assets(engine) -> list:
        return [ListAsset(a) for a in assets if a.name not in engine.ledger.assets]

    def missing_instruments(engine) -> list:
        listed = engine.instruments
        return [
            ListInstrument(i)
            for i in instruments
            if i.symbol not in listed or (i.has_assets and not listed[i.symbol].has_assets)
        ]

    def credit_switch(engine) -> list:
        ledger = engine.ledger
        if credit_checks is None or (ledger.credit_checks, ledger.fee_account) == (
            credit_checks,
            fee_account,
        ):
            return []
        return [SetCreditChecks(credit_checks, fee_account=fee_account)]

    return [missing_assets, missing_instruments, credit_switch]


@dataclass
class NodeConfig:
    data_dir: Path
    instruments: tuple[Instrument, ...] = ()
    assets: tuple[Asset, ...] = ()  # journaled before the instruments that name them
    credit_checks: bool | None = None  # None: as journaled (engine/core/balances.py)
    fee_account: str = DEFAULT_FEE_ACCOUNT  # where fees accrue (engine/core/settlement.py)
    snapshot_every_commands: int = 500_000  # 0 = never by count
    snapshot_every_s: float = 300.0  # 0 = never by time
    keep_snapshots: int = 3
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    fsync: bool = True
    # After each snapshot: "keep" every segment, or "archive"/"delete" those no kept
    # snapshot needs (engine/journal/retention.py). The segment files only.
    journal_retention: str = KEEP
    # SNAPSHOT_WRITERS. A bare node (tools, tests) forks; `loom run` takes engine/config.py's.
    snapshot_writer: str = "fork"

    def __post_init__(self) -> None:
        check_policy(self.journal_retention)
        if self.snapshot_writer not in SNAPSHOT_WRITERS:
            raise ValueError(
                f"snapshot_writer must be one of {', '.join(SNAPSHOT_WRITERS)}, not {self.snapshot_writer!r}"
            )


def journal_failure_rejection(cmd, reason: RejectReason = RejectReason.JOURNAL_WRITE_FAILED) -> OrderRejected:
    return OrderRejected(
        0,
        cmd.ts,
        getattr(cmd, "account", ""),
        getattr(cmd, "client_order_id", getattr(cmd, "transfer_id", "")),
        getattr(cmd, "symbol", ""),
        int(_REQUEST_OF.get(type(cmd), 0)),
        int(reason),
        getattr(cmd, "order_id", 0),
    )


@dataclass
class Unresolved:
    """A batch answered OUTCOME_UNKNOWN, stamped but neither applied nor given back."""

    commands: list
    before: int  # the seq before it
    since: float  # clock() when it was answered

    @property
    def seqs(self) -> str:
        return f"{self.commands[0].seq}..{self.commands[-1].seq}"

    def holds_order(self, account: str, client_order_id: str) -> bool:
        """Whether a new order of `account` with this client order id is in the batch."""
        return any(
            type(c) is NewOrder and c.account == account and c.client_order_id == client_order_id
            for c in self.commands
        )


class DataDirLocked(RuntimeError):
    pass


def lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on the data directory for the life of the process (released
    by the kernel even on SIGKILL): two writers on one journal would corrupt it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise DataDirLocked(f"{data_dir} is in use by {holder}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
    return fd


class ExchangeNode:
    def __init__(self, config: NodeConfig, clock=time.monotonic, journal=None, replicated=None) -> None:
        """`journal`: a backend to use instead of the local segment files (the replicated
        journal of engine/cluster); the node then closes it too. `replicated`: the cluster's
        snapshot store, for a start where no local snapshot reaches the journal's first seq."""
        self.config = config
        self._clock = clock
        self._given_journal = journal
        self._replicated = replicated
        # Called with each WrittenSnapshot (the cluster's retention replicates it).
        self.on_snapshot: Callable[[WrittenSnapshot], None] | None = None
        # Scheduled snapshots are written by a child either way; False: the batch that
        # starts one waits for it (a bare node driven synchronously), True: it does not
        # and poll_snapshot reaps it (the service sets this and polls).
        self.background_snapshots = False
        # Called with a SnapshotJob when it starts and when it finishes (metrics).
        self.snapshot_observer: Callable[[SnapshotJob], None] | None = None
        data_dir = Path(config.data_dir)
        self._lock_fd = lock_data_dir(data_dir)
        try:
            self._open(data_dir)
        except BaseException:
            os.close(self._lock_fd)
            raise

    def _open(self, data_dir: Path) -> None:
        config = self.config
        clock = self._clock
        self.journal = self._given_journal or FileJournal(
            data_dir / "journal", config.segment_bytes, config.fsync, guard=tail_guard(data_dir / "snapshots")
        )
        self.remote_journal = getattr(self.journal, "remote", False)
        self.snapshots = SnapshotStore(data_dir / "snapshots", keep=config.keep_snapshots)
        self.recovered: Recovered = recover(self.journal, self.snapshots, replicated=self._replicated)
        self.engine = self.recovered.engine
        # No record holds the last seq after `loom journal repair --use-snapshot` (a fresh
        # journal continues after the snapshot): the clock starts from now then.
        last = next(iter(self.journal.read(self.journal.last_seq)), None) if self.journal.last_seq else None
        last_ts = last.ts if last is not None else 0
        self.sequencer = Sequencer(last_seq=self.engine.last_seq, last_ts=last_ts)
        self.last_applied_ts = last_ts
        self.last_snapshot_seq = self.recovered.snapshot_seq
        self.last_snapshot_attempt_seq = self.last_snapshot_seq
        self.last_snapshot_at = self._last_snapshot_attempt_at = clock()
        self.snapshot_failures = 0
        self.last_snapshot_error = ""
        self.snapshot_captures = 0  # forks taken for snapshots, and the last one's pause
        self.last_capture_s = 0.0
        self._snapshot_job: SnapshotJob | None = None
        self.last_snapshot: WrittenSnapshot | None = None
        self.snapshotter: SnapshotFollower | None = None
        if config.snapshot_writer == "follower":
            if self.remote_journal:  # nothing local to follow: the stream is the journal
                log.info("snapshot_writer = follower needs a local journal: cluster snapshots are forked")
            else:
                self.snapshotter = SnapshotFollower(data_dir)
                try:  # it loads while the node starts; started again on the first need if this fails
                    self.snapshotter.start()
                except OSError as exc:
                    log.error("cannot start the snapshotter: %s", exc)
        self.retention = RetentionStats()
        self.rejected_batches = 0
        self.refusals = RefusalLog(log, clock=clock)  # one line per outage, not per batch
        # Risk-check times (ns) of the new orders of a sampled batch, for the "risk" stage;
        # the service drains it. None: not measured (no metrics).
        self.risk_check_ns: list[int] | None = None
        # seq -> (perf_counter_ns at the check, its duration) of the last timed batch's new
        # orders: the "risk" spans of the orders the tracer exports.
        self.risk_timed: dict[int, tuple[int, int]] = {}
        self._finished_batches = 0
        self.journal_ok = True  # did the last journal write succeed (readiness)
        self.unresolved: Unresolved | None = None  # a batch with an unknown outcome
        self.unknown_outcomes = dict.fromkeys(UNKNOWN_OUTCOME_KINDS, 0)
        self.last_write_bytes = 0
        self._venue_id = 0
        self._list_instruments()

    def _list_instruments(self) -> None:
        """Journal the configured assets, instruments and credit switch the engine does not
        have yet, in that order (instruments name assets)."""
        cfg = self.config
        for stage in setup_stages(cfg.assets, cfg.instruments, cfg.credit_checks, cfg.fee_account):
            self._journal_setup(lambda stage=stage: stage(self.engine))

    def _journal_setup(self, pending: Callable[[], list]) -> None:
        """Submit the setup commands `pending` names until none is left. A journal that
        refuses at start is asked again for up to LISTING_RETRY_S: a replicated stream just
        created may not be routed to yet by the server this node is connected to ("no
        responders"). Each refusal is true and an unknown outcome is settled before the next
        try (`submit`), so a retry never lists anything twice."""
        deadline = time.monotonic() + LISTING_RETRY_S
        while new := pending():
            results = self.submit(new)
            refused = 0  # the journal's refusal, if any
            for cmd, events in zip(new, results, strict=True):
                if not events or not isinstance(events[0], OrderRejected):
                    continue
                if events[0].reason not in (RejectReason.JOURNAL_WRITE_FAILED, RejectReason.OUTCOME_UNKNOWN):
                    raise RuntimeError(f"cannot apply {_setup_name(cmd)}: reason {events[0].reason}")
                refused = events[0].reason
            if not refused:
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"cannot apply {', '.join(_setup_name(c) for c in new)}: the journal refused for "
                    f"{LISTING_RETRY_S:.0f} s ({RejectReason(refused).name})"
                )
            log.warning("setup (%d commands): the journal refused, trying again", len(new))
            time.sleep(LISTING_RETRY_PAUSE_S)

    @property
    def venue_id(self) -> int:
        """The timestamp of the journal's first command: names this venue's history (the
        prefix of derived trace ids). 0 until anything is journaled."""
        if not self._venue_id and self.journal.last_seq:
            # A replicated journal may have purged the first command: it keeps the venue id.
            venue = getattr(self.journal, "venue_id", None)
            self._venue_id = venue if venue is not None else next(iter(self.journal.read(1))).ts
        return self._venue_id

    def derived_trace_id(self, seq: int) -> str:
        return derived_trace_id(self._venue_id or self.venue_id, seq)

    def trace_id_of(self, cmd) -> str:
        """The order's trace id: the caller's, or derived from (venue, seq)."""
        return getattr(cmd, "trace_id", "") or self.derived_trace_id(cmd.seq)

    def submit(self, commands: list) -> list[list]:
        """Sequence, journal (durably) and apply one group-commit batch; the events of each
        command, in order. On a journal failure every command gets a rejection instead."""
        if not commands:
            return []
        if self.unresolved is not None:
            try:
                self.resolve_unknown()  # no listeners here to hand a landed batch to
            except OutcomeUnknownError:  # never sequenced: nothing was done
                return [[journal_failure_rejection(cmd)] for cmd in commands]
        before = self.stamp(commands)
        return self.finish(commands, before, self.write(commands))

    # The three steps of submit, apart so the service can run `write` (fdatasync) on a
    # worker thread while the event loop goes on reading requests for the next batch.

    def stamp(self, commands: list) -> int:
        """Give the batch its sequence numbers and timestamps; returns the seq before it."""
        before = self.sequencer.last_seq
        stamp = self.sequencer.stamp
        for cmd in commands:
            stamp(cmd)
        return before

    def write(self, commands: list, meta: BatchMeta | None = None) -> JournalWriteError | None:
        """Make the batch durable (with its timings, when given). Touches only the journal
        (safe on a worker thread)."""
        try:
            self.last_write_bytes = self.journal.append(commands, meta)
        except OutcomeUnknownError as exc:
            self.last_write_bytes = 0
            return self._look_into(exc, lambda: self.journal.resolve(RESOLVE_BEFORE_ANSWER_S))
        except JournalWriteError as exc:
            self.last_write_bytes = 0
            return exc
        return None

    async def write_async(self, commands: list, meta: BatchMeta | None = None) -> JournalWriteError | None:
        """`write` for a remote journal: the commit loop awaits the replication instead of
        blocking its event loop on it."""
        try:
            self.last_write_bytes = await self.journal.append_async(commands, meta)
        except OutcomeUnknownError as exc:
            self.last_write_bytes = 0
            if not self._writable():
                return exc
            try:
                landed = await self.journal.resolve_async(RESOLVE_BEFORE_ANSWER_S)
            except JournalWriteError as settled:
                return self._looked_into(exc, settled)
            return self._looked_into(exc, landed)
        except JournalWriteError as exc:
            self.last_write_bytes = 0
            return exc
        return None

    def _writable(self) -> bool:
        """False on a cluster node no longer leading: an unknown outcome is then left to
        the stream, which its follower applies (a new leader's marker settles it)."""
        return getattr(self.journal, "writable", True)

    def _look_into(self, exc: OutcomeUnknownError, resolve: Callable[[], bool]) -> JournalWriteError | None:
        if not self._writable():
            return exc
        try:
            return self._looked_into(exc, resolve())
        except JournalWriteError as settled:
            return self._looked_into(exc, settled)

    def _looked_into(
        self, exc: OutcomeUnknownError, found: bool | JournalWriteError
    ) -> JournalWriteError | None:
        """What `write` answers once the journal was asked about an unknown outcome: None
        (it landed: accepted), a true refusal (known absent; a FencedError says another
        writer took its place), or still OutcomeUnknownError."""
        if isinstance(found, OutcomeUnknownError):
            return found
        if found is True:
            self.unknown_outcomes["landed", "definite"] += 1
            return None
        self.unknown_outcomes["absent", "definite"] += 1
        if isinstance(found, JournalWriteError):
            return found
        return JournalWriteError(f"{exc}; looked into: it is not in the journal")

    def apply_replicated(self, commands: list) -> list[list]:
        """Apply a batch another node made durable (a standby following the replicated
        journal): the recovery path that never stops. Snapshots stay on schedule."""
        apply = self.engine.apply
        results = [apply(cmd) for cmd in commands]
        self.last_applied_ts = commands[-1].ts
        self._maybe_snapshot()
        return results

    def resume_sequencing(self) -> None:
        """Continue numbering after what was applied (a promoted standby)."""
        last_ts = max(self.last_applied_ts, self.sequencer.last_ts)
        self.sequencer = Sequencer(last_seq=self.engine.last_seq, last_ts=last_ts)

    def finish(self, commands: list, before: int, error: JournalWriteError | None) -> list[list]:
        """Apply a durable batch, refuse a batch known not to be written, or hold a batch
        whose outcome is unknown (answered OUTCOME_UNKNOWN)."""
        if isinstance(error, OutcomeUnknownError):
            self.unresolved = Unresolved(commands, before, self._clock())
            self.journal_ok = False
            self.refusals.unknown(len(commands), error)
            return [[journal_failure_rejection(cmd, RejectReason.OUTCOME_UNKNOWN)] for cmd in commands]
        if error is not None:
            self.sequencer.rewind(before)
            # Their seqs go to the next batch: a refused order's trace must not be derived
            # from one (its answer and its exported span would name another order's trace).
            for cmd in commands:
                if type(cmd) is NewOrder and not cmd.trace_id:
                    cmd.trace_id = new_trace_id()
            self.rejected_batches += 1
            self.journal_ok = False
            self.refusals.refused(len(commands), error)
            return [[journal_failure_rejection(cmd)] for cmd in commands]
        return self._apply_durable(commands)

    def resolve_unknown(self) -> list[list] | None:
        """Ask the journal again about the unresolved batch: its events when it landed
        (applied now), None when it is known absent (its seqs given back) or left to the
        stream (abandoned). Raises OutcomeUnknownError while the journal cannot tell."""
        if not self._writable():
            return self._settle(None)
        try:
            return self._settle(self.journal.resolve(RESOLVE_ATTEMPT_S))
        except OutcomeUnknownError:
            raise
        except JournalWriteError:  # fenced: another writer's message took its place
            return self._settle(False)

    async def resolve_unknown_async(self) -> list[list] | None:
        """resolve_unknown for a remote journal."""
        if not self._writable():
            return self._settle(None)
        try:
            return self._settle(await self.journal.resolve_async(RESOLVE_ATTEMPT_S))
        except OutcomeUnknownError:
            raise
        except JournalWriteError:
            return self._settle(False)

    def _settle(self, landed: bool | None) -> list[list] | None:
        held = self.unresolved
        self.unresolved = None
        if landed and self.engine.last_seq == held.before:
            self.unknown_outcomes["landed", "unknown"] += 1
            self.refusals.resolved(held.seqs, "landed: applied now")
            return self._apply_durable(held.commands)
        # Abandoned (or applied meanwhile by this standby's follower): the stream decides.
        kind = "absent" if landed is False else "abandoned"
        self.unknown_outcomes[kind, "unknown"] += 1
        self.refusals.resolved(held.seqs, "not in the journal" if kind == "absent" else "left to the stream")
        if self.sequencer.last_seq >= held.before:
            self.sequencer.rewind(held.before)
        return None

    def _apply_durable(self, commands: list) -> list[list]:
        self.journal_ok = True
        if self.refusals.since is not None:
            self.refusals.succeeded()
        self._finished_batches += 1
        if self.risk_timed:
            self.risk_timed = {}
        if (
            self.risk_check_ns is not None
            and self.engine.risk_on
            and not self._finished_batches % RISK_TIMING_EVERY
        ):
            results = self._apply_timing_risk(commands, self.risk_check_ns)
        else:
            apply = self.engine.apply
            results = [apply(cmd) for cmd in commands]
        self.last_applied_ts = commands[-1].ts
        self._maybe_snapshot()
        return results

    def _apply_timing_risk(self, commands: list, out: list[int]) -> list[list]:
        """Apply the batch, timing each new order's pre-trade checks around the real call:
        the core reads no clock, so for this batch its `check_new` is a wrapper that stamps
        the check the core runs anyway (nothing is run twice; FIX, issue 14: the check was
        run a second time only to time it). On one batch in RISK_TIMING_EVERY: the two clock
        reads per order are the whole cost."""
        engine = self.engine
        apply = engine.apply
        clock = time.perf_counter_ns
        timed = self.risk_timed

        def timed_check(core, cmd: NewOrder | ReplayNewOrder) -> int:
            started = clock()
            reason = check_new(core, cmd)
            took = clock() - started
            out.append(took)
            timed[cmd.seq] = (started, took)
            return reason

        engine.check_new = timed_check
        try:
            return [apply(cmd) for cmd in commands]
        finally:
            engine.check_new = check_new

    # -- snapshots: captured here at a batch boundary (a fork), written by the child ---------

    def _maybe_snapshot(self) -> None:
        # One at a time: a snapshot due meanwhile waits for this one. A service reaps it on
        # its timer (no waitpid per batch); a bare node reaps it here.
        if self._snapshot_job is not None and (
            self.background_snapshots or not self._snapshot_done(block=False)
        ):
            return
        cfg = self.config
        due = (
            cfg.snapshot_every_commands
            and self.engine.last_seq - self.last_snapshot_attempt_seq >= cfg.snapshot_every_commands
        ) or (
            cfg.snapshot_every_s
            and self._clock() - self._last_snapshot_attempt_at >= cfg.snapshot_every_s
            and self.engine.last_seq > self.last_snapshot_seq
        )
        if due:
            # The batch is already durable and applied: a snapshot that cannot be written
            # must not fail it. Logged and counted; tried again after another interval.
            try:
                self._start_snapshot(awaited=not self.background_snapshots)
            except OSError as exc:
                self._snapshot_failed(self.engine.last_seq, str(exc))
                return
            if not self.background_snapshots:
                self._snapshot_done(block=True)

    def _start_snapshot(self, fork: bool = False, awaited: bool = False) -> SnapshotJob:
        """`awaited`: the caller blocks on the job (a forked child then keeps its priority)."""
        self.last_snapshot_attempt_seq = self.engine.last_seq
        self._last_snapshot_attempt_at = self._clock()
        if self.snapshotter is not None and not fork:
            job = self._snapshot_job = self.snapshotter.request(self.engine.last_seq)
        else:
            job = self._snapshot_job = snapshot_child.fork_snapshot(self.snapshots, self.engine, awaited)
        self.snapshot_captures += 1
        self.last_capture_s = job.capture_s
        if self.snapshot_observer is not None:
            self.snapshot_observer(job)
        return job

    @property
    def snapshot_in_flight(self) -> bool:
        return self._snapshot_job is not None

    def poll_snapshot(self) -> None:
        """Reap a finished snapshot child, without waiting (the service calls this on a
        timer and every batch does): prune, journal retention, on_snapshot. Tells the
        snapshotter how far the journal is durable (it follows up to there)."""
        if self._snapshot_job is not None:
            self._snapshot_done(block=False)
        if self.snapshotter is not None:
            self.snapshotter.follow(self.engine.last_seq)

    def _snapshot_done(self, block: bool) -> bool:
        """Finish the job in flight if its child has ended (or wait for it); True when none
        is left in flight."""
        job = self._snapshot_job
        if job is None:
            return True
        poll = self.snapshotter.poll if job.writer == "follower" else snapshot_child.poll
        if not poll(job, block):
            return False
        self._snapshot_job = None
        if self.snapshot_observer is not None:
            self.snapshot_observer(job)
        written = job.written
        if written is None:
            self._snapshot_failed(job.seq, job.error or "unknown error")
            self.snapshots.prune()  # its temporary file
            return True
        self.last_snapshot_seq = written.seq
        self.last_snapshot_at = self._last_snapshot_attempt_at
        self.last_snapshot = written
        log.info(
            "snapshot at seq %d: %d bytes in %.3f s (%s, by the %s; the order path paused %.1f ms)",
            written.seq,
            written.size,
            written.duration_s,
            written.path.name,
            "snapshotter" if job.writer == "follower" else "forked child",
            job.capture_s * 1000,
        )
        try:
            self.snapshots.prune()
        except OSError as exc:
            log.error("pruning snapshots failed: %s", exc)
        self._retain()
        if self.on_snapshot is not None:
            try:
                self.on_snapshot(written)
            except Exception:
                log.exception("on_snapshot failed after the snapshot at seq %d", written.seq)
        return True

    def _snapshot_failed(self, seq: int, error: str) -> None:
        self.snapshot_failures += 1
        self.snapshots.write_failures += 1
        self.last_snapshot_error = error
        log.error("snapshot at seq %d failed (the previous one stands): %s", seq, error)

    def _snapshot_now(self, awaited: bool = False) -> SnapshotJob:
        """The job that will hold a snapshot of the state as it is now: the one in flight
        if it already covers it, else a new one (the caller has reaped any other)."""
        job = self._snapshot_job
        if job is not None and job.seq == self.engine.last_seq:
            return job
        return self._start_snapshot(awaited=awaited)

    def _outcome(self, job: SnapshotJob) -> WrittenSnapshot:
        if job.written is None:
            raise SnapshotWriteError(f"snapshot at seq {job.seq} failed: {job.error}")
        return job.written

    def take_snapshot(self) -> WrittenSnapshot:
        """Snapshot now and wait for it (CLI tools, tests, the drain). Raises
        SnapshotWriteError (an OSError) when it could not be written. When the snapshotter
        is gone (it died without an answer, or cannot be asked), a forked child writes it:
        the drain's final snapshot does not depend on the helper."""
        if self._snapshot_job is not None and self._snapshot_job.seq != self.engine.last_seq:
            self._snapshot_done(block=True)
        try:
            job = self._snapshot_now(awaited=True)
        except OSError as exc:
            if self.snapshotter is None:
                raise
            log.warning("snapshot at seq %d: %s; writing it with a fork", self.engine.last_seq, exc)
            job = self._start_snapshot(fork=True, awaited=True)
        self._snapshot_done(block=True)
        if job.unanswered and job.writer == "follower":
            log.warning("snapshot at seq %d: %s; writing it with a fork", job.seq, job.error)
            job = self._start_snapshot(fork=True, awaited=True)
            self._snapshot_done(block=True)
        return self._outcome(job)

    async def take_snapshot_async(self, poll_s: float = 0.01) -> WrittenSnapshot:
        """Snapshot now and await it without blocking the event loop (the admin endpoint,
        the runbook automation): only the fork runs on the loop."""
        while self._snapshot_job is not None and self._snapshot_job.seq != self.engine.last_seq:
            await asyncio.sleep(poll_s)
            self.poll_snapshot()
        job = self._snapshot_now()
        while not job.finished:
            await asyncio.sleep(poll_s)
            self.poll_snapshot()
        return self._outcome(job)

    def _retain(self) -> None:
        """Journal retention behind the oldest kept snapshot. Its failure must not fail
        the snapshot (already durable): logged and counted, tried after the next one."""
        if self.config.journal_retention == KEEP or self.remote_journal:
            return
        kept = self.snapshots.list()
        if not kept:
            return
        try:
            retire(self.journal, kept[0].seq, self.config.journal_retention, self.retention)
        except OSError as exc:
            log.error("journal retention (%s) failed: %s", self.config.journal_retention, exc)

    def close(self) -> None:
        if self._snapshot_job is not None:  # a snapshot being written is finished, not lost
            self._snapshot_done(block=True)
        if self.snapshotter is not None:
            self.snapshotter.stop()
        self.journal.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = -1
