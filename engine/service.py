"""The asyncio face of a node: gateways submit commands, a single commit loop turns
whatever is waiting into one group-commit batch, and the durable events flow back to
the submitters and out to subscribers (market data, execution reports, the order store).

Batches grow by themselves: while one batch is being written and fdatasync'd (on a
worker thread when the disk is slow or the CPU busy, so the disk wait does not stop the
event loop) the gateways go on reading, and everything that arrives meanwhile forms the
next batch. That wait is the group commit's, not a backlog, so the queue-delay bound does not
count it (engine.overload.CommitCycles). One batch is in flight at a
time, so the journal, the engine and the acknowledgements all follow sequence order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ClassVar

from engine.core.batch_events import BatchEvents
from engine.core.commands import Amend, NewOrder
from engine.core.stage_timings import Durations, RecentBatches
from engine.exchange import ExchangeNode, journal_failure_rejection
from engine.journal import OutcomeUnknownError
from engine.journal.format import BatchMeta
from engine.logfmt import fields
from engine.observer import NULL_OBSERVER, CommittedBatch, Observer
from engine.overload import (
    MAX_QUEUE_DELAY_S,
    RETRY_AFTER_S,
    CommitCycles,
    cancels_refused,
    orders_refused,
    overloaded_text,
)

log = logging.getLogger("loom.service")

SATURATED_CPU = 0.8  # share of a core above which fdatasync moves to the journal thread
# An fdatasync this slow moves the next writes to the journal thread too: a process waiting
# on the disk uses no CPU, so the CPU test alone kept a slow disk's wait on the event loop
# (no accept, read or close while it synced: most of the loop's time under a connection
# flood, session 7). A quiet disk syncs in ~0.2-0.3 ms; below this the thread's hand-off
# (GIL, wake-ups) costs more than it frees (binary p99 at 20k/s 0.7 -> 3-4 ms when always on).
SLOW_FSYNC_NS = 2_000_000
# Admission control: the most commands that may wait for the commit loop. 10,000 is
# - over two full batches (max_batch 4096): a node that keeps up holds about one batch's
#   worth while the previous one is written, so it never sheds;
# - ~0.8 s of this machine's REST capacity (~12.5k orders/s, measured): the last admitted
#   order is acknowledged within about a second, before a typical client timeout (20,000
#   would allow ~1.6 s);
# - a few tens of ms of the binary gateway's capacity. (A binary session may have 16,384
#   commands in flight, more than the bound: one pipelining that deep into a node that is
#   behind gets some of them refused with reason 603 OVERLOADED, retryable.)
# A sustained overload is refused at once instead of queueing without bound (latency and
# memory growing until the process falls over). This bounds what the gateways hand to the
# service: WebSocket messages and binary reads are submitted as they arrive, so their
# overload lands here (measured: WS at 90k/s offered, max ack 0.41 s instead of 2.8 s). A
# REST connection submits one request at a time (aiohttp handles a pipeline in order), so
# this queue holds at most one request per connection; a backlog of pipelined requests waits
# in the connections, which this bound does not see.
DEFAULT_MAX_QUEUED_COMMANDS = 10_000
# Submissions of cancels only (Cancel, CancelAll) and of the admin's risk commands (kill
# switch, halt, limits) may fill the queue a quarter beyond the bound: an overloaded venue
# must still let traders pull their orders and operators stop trading.
CANCEL_HEADROOM = 0.25
# While a batch's outcome is unknown the commit loop asks the journal again, waiting
# between attempts from RESOLVE_BACKOFF_S, doubling up to RESOLVE_BACKOFF_MAX_S.
RESOLVE_BACKOFF_S = 0.05
RESOLVE_BACKOFF_MAX_S = 2.0
SNAPSHOT_POLL_S = 0.05  # how often a finished snapshot child is looked for between batches
BatchListener = Callable[[list, list[list]], None]
EventListener = Callable[[list, list[list], BatchEvents], None]


@dataclass
class _Pending:
    commands: list
    future: asyncio.Future | None = field(repr=False)
    callback: Callable[[list[list]], None] | None = field(default=None, repr=False)
    protocol: str = "internal"
    queued_at: float = 0.0  # perf_counter when it entered the queue
    received: float = 0.0  # perf_counter when the gateway received it (queued_at if unknown)


class ExchangeService:
    def __init__(
        self,
        node: ExchangeNode,
        max_batch: int = 4096,
        write_thread: bool = True,
        observer: Observer | None = None,
        max_queued_commands: int = DEFAULT_MAX_QUEUED_COMMANDS,
        max_queue_delay_s: float = MAX_QUEUE_DELAY_S,
    ) -> None:
        if max_queued_commands < 1:
            raise ValueError(f"max_queued_commands must be at least 1, not {max_queued_commands}")
        self.node = node
        # Telemetry's one seam (engine/observer.py): the metrics (or the null observer), and
        # any more batch observers added later (the order traces: add_observer).
        self.observer: Observer = observer or NULL_OBSERVER
        self._batch_observers: list[Observer] = []
        self._wants_events = False
        self._snapshot_failures_seen = 0
        node.background_snapshots = True  # written by a child; reaped by _reap_snapshots
        if observer is not None:
            self.add_observer(observer, primary=True)
        self._reaper: asyncio.Task | None = None
        self.max_batch = max_batch
        self._io = ThreadPoolExecutor(1, thread_name_prefix="journal") if write_thread else None
        self._queue: deque[_Pending] = deque()
        self._queued = 0  # commands in self._queue, kept with it (read on every submission)
        self.max_queued_commands = max_queued_commands
        self.max_queue_delay_s = max_queue_delay_s  # 0: no time bound (engine.overload)
        self.cycles = CommitCycles()  # what the queue-delay bound does not count
        self.max_queued_cancels = max_queued_commands + max(1, int(max_queued_commands * CANCEL_HEADROOM))
        self.overload_refusals = 0  # commands refused by admission control
        self._wakeup = asyncio.Event()
        self._listeners: list[BatchListener] = []
        self._event_listeners: list[EventListener] = []
        self._task: asyncio.Task | None = None
        self._closing = False
        self.batches = 0
        self.commands = 0
        self.threaded_writes = 0
        self._window = (time.perf_counter(), time.process_time())
        self._saturated = False
        self.accepting = True
        # Builds the error for "not accepting" when it is not a shutdown (a cluster standby).
        self.refusal: Callable[[], ServiceStopped] | None = None
        self.recent = RecentBatches()  # stage timings of the newest batches (order lookup)
        # (first seq, journal, match, ack ns) of the last journaled batch: its durations are
        # known only once it is done, so they are journaled with the next batch.
        self._prev_durations = (0, 0, 0, 0)
        # perf_counter when the batch being handed to the listeners became durable (market
        # data measures its fan-out lag from it): one store per batch.
        self.durable_at = 0.0

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._commit_loop(), name="commit-loop")
            self._reaper = asyncio.get_running_loop().create_task(self._reap_snapshots(), name="snapshots")

    async def stop(self) -> None:
        """Refuse new work, commit what is queued, then stop the loop."""
        self.accepting = False
        self.refusal = None
        self._closing = True
        self._wakeup.set()
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        if self._task is not None:
            try:
                await self._task
            finally:
                self._task = None
                if self._io is not None:
                    self._io.shutdown(wait=True)

    def add_observer(self, observer: Observer, primary: bool = False) -> None:
        """Feed `observer` every committed batch (`primary`: it also gets the gateways' and
        the node's other reports, as `self.observer`)."""
        if primary:
            self.observer = observer
            self.node.snapshot_observer = self._observe_snapshot
        self._batch_observers.append(observer)
        self._wants_events = any(o.wants_events for o in self._batch_observers)
        if observer.times_risk:
            self.node.risk_check_ns = []  # the node times risk checks on a sample of batches

    def publish_replicated(self, batch: list, results: list[list]) -> None:
        """Hand a batch applied from the replicated journal (a standby) to the listeners,
        as if this node had committed it: order store, market data, metrics."""
        self.durable_at = time.perf_counter()
        self._publish(batch, results)

    def _publish(self, batch: list, results: list[list]) -> BatchEvents | None:
        """Every listener sees the batch: the plain ones, then those sharing one walk of
        its events. Returns that walk (None when nobody needed it)."""
        for listener in self._listeners:
            try:
                listener(batch, results)
            except Exception:
                log.exception("batch listener %r failed", listener)
        split = BatchEvents(results) if self._event_listeners or self._wants_events else None
        for listener in self._event_listeners:
            try:
                listener(batch, results, split)
            except Exception:
                log.exception("batch listener %r failed", listener)
        return split

    def add_listener(self, listener: BatchListener) -> None:
        """Called after every durable batch with (commands, events per command)."""
        self._listeners.append(listener)

    def add_event_listener(self, listener: EventListener) -> None:
        """Called after every durable batch with (commands, events per command, the batch's
        events split by type): one walk of the events, however many listeners."""
        self._event_listeners.append(listener)

    # -- submission --------------------------------------------------------------------

    async def submit(self, commands: list, protocol: str = "internal", received: float = 0.0) -> list[list]:
        """Queue commands for the next batch; resolves with each command's events once the
        batch is durable and applied. `received`: the gateway's perf_counter when the
        request arrived (before decoding), for the journaled stage timings."""
        if not self.accepting:
            raise self.refusal() if self.refusal else ServiceStopped("the exchange is shutting down")
        if not commands:
            return []
        self._admit(commands, protocol)
        future = asyncio.get_running_loop().create_future()
        now = time.perf_counter()
        self._queue.append(_Pending(commands, future, None, protocol, now, received or now))
        self._queued += len(commands)
        self._wakeup.set()
        return await future

    def enqueue(
        self, commands: list, callback: Callable[[list[list]], None], protocol: str = "internal"
    ) -> None:
        """Like submit, without a future: `callback(events per command)` runs in the commit
        loop once the batch is durable. For pipelined sessions (one order per message)
        where a task or future per order would cost more than the order itself."""
        if not self.accepting:
            raise self.refusal() if self.refusal else ServiceStopped("the exchange is shutting down")
        if commands:
            self._admit(commands, protocol)
            now = time.perf_counter()
            self._queue.append(_Pending(commands, None, callback, protocol, now, now))
            self._queued += len(commands)
            self._wakeup.set()

    async def submit_one(self, command, protocol: str = "internal", received: float = 0.0) -> list:
        return (await self.submit([command], protocol, received))[0]

    @property
    def queued(self) -> int:
        """Commands submitted and waiting for the next batch (O(1): a counter kept with the queue)."""
        return self._queued

    def oldest_queued_age(self, now: float | None = None) -> float:
        """Seconds the oldest submission still in the commit queue has waited (0 when empty).
        Read at scrape time from its queued_at stamp: nothing more per order."""
        queue = self._queue
        if not queue:
            return 0.0
        return max(0.0, (time.perf_counter() if now is None else now) - queue[0].queued_at)

    def _admit(self, commands: list, protocol: str) -> None:
        """Raise Overloaded, before anything is sequenced, when these commands would take the
        queue past its bound: `max_queued_commands`, or `max_queued_cancels` for a submission
        without new orders or amends (the rule: engine.overload)."""
        queued = self._queued
        n = len(commands)
        if not self.refuses_orders(n):
            return
        if not cancels_refused(queued, n, self.max_queued_cancels) and not any(
            type(c) is NewOrder or type(c) is Amend for c in commands
        ):
            return
        self.refused(protocol, n)
        raise Overloaded(self.overload_text(), queued)

    def overload_text(self) -> str:
        """Why new orders are refused now (the queue's count, bound and oldest wait)."""
        return overloaded_text(self._queued, self.max_queued_commands, self.oldest_queued_age())

    def refuses_orders(self, n: int) -> bool:
        """Whether n new orders would be refused now: for a gateway to shed them before it
        decodes them (then it reports them with `refused`)."""
        queue = self._queue
        if not queue:
            return False
        waited = self.cycles.backlog_wait(queue[0].queued_at, time.perf_counter())
        return orders_refused(self._queued, n, self.max_queued_commands, waited, self.max_queue_delay_s)

    def refused(self, protocol: str, n: int) -> None:
        """Count n commands refused for overload (here or by a gateway before decoding)."""
        self.overload_refusals += n
        self.observer.overload_refused(protocol, n)

    def _observe(self, taken, batch, results, stamps, error, split) -> None:
        """Hand the finished batch to every batch observer (metrics, order traces)."""
        node = self.node
        risk_ns = node.risk_check_ns
        journal = node.journal
        committed = CommittedBatch(
            taken,
            batch,
            results,
            stamps,
            error,
            split,
            risk_ns or [],
            node.risk_timed,
            node.last_write_bytes,
            journal.last_fsync_ns / 1e9 if journal.fsync else None,
            node.trace_id_of,
        )
        for observer in self._batch_observers:
            try:
                observer.batch_committed(committed)
            except Exception:
                log.exception("batch observer %r failed", observer)
        if risk_ns:
            risk_ns.clear()
        self._observe_snapshot_failures()

    def _observe_snapshot(self, job) -> None:
        """A snapshot's capture pause (order path) when it starts, its background write's
        duration when it is written."""
        if not job.finished:
            self.observer.snapshot_captured(job.capture_s)
        elif job.written is not None:
            self.observer.snapshot_written(job.written.duration_s)

    def _observe_snapshot_failures(self) -> None:
        node = self.node
        if node.snapshot_failures > self._snapshot_failures_seen:
            self.observer.snapshot_failed(node.snapshot_failures - self._snapshot_failures_seen)
            self._snapshot_failures_seen = node.snapshot_failures

    async def _reap_snapshots(self) -> None:
        """Finish a snapshot whose child has ended even when no batch comes to do it."""
        while True:
            await asyncio.sleep(SNAPSHOT_POLL_S)
            try:
                self.node.poll_snapshot()
                self._observe_snapshot_failures()
            except Exception:
                log.exception("reaping the snapshot child failed")

    # -- the commit loop -----------------------------------------------------------------

    def _cpu_saturated(self) -> bool:
        """Whether this process has been using nearly a whole core lately (measured over
        windows of 50 ms): only then is there request parsing to overlap with fdatasync."""
        wall, cpu = time.perf_counter(), time.process_time()
        span = wall - self._window[0]
        if span >= 0.05:
            self._saturated = (cpu - self._window[1]) / span > SATURATED_CPU
            self._window = (wall, cpu)
        return self._saturated

    def _write_off_loop(self) -> bool:
        """Whether the next journal write goes to the journal thread: when the disk was slow
        at the last fdatasync, or the CPU is busy (there is request parsing to overlap)."""
        return self._io is not None and (
            self.node.journal.last_fsync_ns >= SLOW_FSYNC_NS or self._cpu_saturated()
        )

    async def _resolve_unknown(self) -> bool:
        """Hold the commit loop while the node has a batch with an unknown outcome: the
        next batch's place in the journal (a NATS append's expected last sequence, a
        segment's end) depends on it. Asks the journal again with backoff; submissions
        meanwhile queue, and admission control sheds past the bound as always. A batch
        found landed is applied and handed to the listeners (order store, market data),
        its submitters having been answered OUTCOME_UNKNOWN. Returns False when the service
        stops first (the batch is left to recovery: it reads what the journal holds)."""
        node = self.node
        delay = RESOLVE_BACKOFF_S
        while node.unresolved is not None:
            held = node.unresolved.commands
            try:
                if node.remote_journal:
                    results = await node.resolve_unknown_async()
                elif self._io is not None:
                    results = await asyncio.get_running_loop().run_in_executor(self._io, node.resolve_unknown)
                else:
                    results = node.resolve_unknown()
            except OutcomeUnknownError as exc:
                if self._closing:
                    log.error("stopping with the outcome of seq %s unknown: %s", node.unresolved.seqs, exc)
                    return False
                log.debug("journal outcome still unknown, next try in %.2f s: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESOLVE_BACKOFF_MAX_S)
                continue
            if results is not None:
                self.batches += 1
                self.commands += len(held)
                self.durable_at = time.perf_counter()
                self.observer.commands_resolved(len(held))
                self._publish(held, results)
        return True

    def _refuse_queued(self) -> None:
        """Answer every queued submission with a refusal: none was sequenced or journaled."""
        while self._queue:
            pending = self._queue.popleft()
            results = [[journal_failure_rejection(cmd)] for cmd in pending.commands]
            if pending.callback is not None:
                pending.callback(results)
            elif not pending.future.done():
                pending.future.set_result(results)
        self._queued = 0

    def _fail_pending(self, taken: list[_Pending], exc: Exception) -> None:
        # FIX (tests/test_http_gateway.py): with the loop gone, later submissions
        # queued forever while /readyz still said ready. Refuse them instead
        # (ServiceStopped: 503) and report not ready.
        self.accepting = False
        for pending in [*taken, *self._queue]:
            if pending.future is not None and not pending.future.done():
                pending.future.set_exception(exc)
        self._queue.clear()
        self._queued = 0

    async def _commit_loop(self) -> None:
        while True:
            if self.node.unresolved is not None:
                try:
                    resolved = await self._resolve_unknown()
                except Exception as exc:  # a broken invariant (the journal lost acked data)
                    log.critical("commit loop failed resolving an unknown outcome", exc_info=True)
                    self._fail_pending([], exc)
                    raise
                if not resolved:
                    self._refuse_queued()
                    return
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            taken: list[_Pending] = []
            batch: list = []
            queue = self._queue
            while queue and (not batch or len(batch) + len(queue[0].commands) <= self.max_batch):
                pending = queue.popleft()
                taken.append(pending)
                batch.extend(pending.commands)
            self._queued -= len(batch)
            try:
                node = self.node
                t0 = time.perf_counter()
                meta = BatchMeta(
                    time.time_ns(),
                    [len(p.commands) for p in taken],
                    [int((t0 - p.received) * 1e9) for p in taken],
                    *self._prev_durations,
                )
                before = node.stamp(batch)
                t1 = time.perf_counter()
                self.cycles.begin(t1)
                if node.remote_journal:  # replication: await the PubAck, keep serving
                    error = await node.write_async(batch, meta)
                elif self._write_off_loop():
                    # fdatasync waits on the disk, not the CPU: on a worker thread the event
                    # loop keeps accepting and parsing requests meanwhile. With a fast disk and
                    # CPU to spare the thread hand-off (GIL, wake-ups) would only add latency,
                    # so the write stays inline.
                    self.threaded_writes += 1
                    error = await asyncio.get_running_loop().run_in_executor(
                        self._io, node.write, batch, meta
                    )
                else:
                    error = node.write(batch, meta)
                t2 = self.durable_at = time.perf_counter()
                results = node.finish(batch, before, error)
                t3 = time.perf_counter()
            except Exception as exc:  # a broken invariant: crash-only, after telling everyone
                log.critical(
                    "commit loop failed on a batch of %d commands",
                    len(batch),
                    exc_info=True,
                    extra=fields(seq=batch[0].seq),
                )
                self._fail_pending(taken, exc)
                raise
            self.batches += 1
            self.commands += len(batch)
            start = 0
            for pending in taken:
                end = start + len(pending.commands)
                if pending.callback is not None:
                    try:
                        pending.callback(results[start:end])
                    except Exception:
                        log.exception("submission callback failed")
                elif not pending.future.done():  # the submitter may have been cancelled
                    pending.future.set_result(results[start:end])
                start = end
            split = self._publish(batch, results)
            t4 = time.perf_counter()
            if error is None:
                durations = Durations(int((t2 - t1) * 1e9), int((t3 - t2) * 1e9), int((t4 - t3) * 1e9))
                self._prev_durations = (
                    batch[0].seq,
                    durations.journal_ns,
                    durations.match_ns,
                    durations.ack_ns,
                )
                self.recent.add(batch[0].seq, len(batch), meta, durations)
            else:
                self._prev_durations = (0, 0, 0, 0)  # the refused batch is not in the journal
            if self._batch_observers:
                self._observe(taken, batch, results, (t0, t1, t2, t3, t4), error, split)
            # The cycle ends here, not when fdatasync returns: what was read meanwhile goes in
            # the next batch (up to max_batch) whatever this batch's apply and answers cost.
            self.cycles.end(time.perf_counter())
            # Let gateways read more input before the next batch.
            await asyncio.sleep(0)


class ServiceStopped(RuntimeError):
    pass


class Overloaded(RuntimeError):
    """Admission control refused a submission: the commit queue is at its bound. Nothing of it
    was sequenced or journaled, so it is safe to resend after `retry_after_s`. Not a
    ServiceStopped: the node is up, ready and committing what it did admit."""

    retry_after_s = RETRY_AFTER_S

    def __init__(self, message: str, queued: int = 0) -> None:
        super().__init__(message)
        self.queued = queued


class NotLeader(ServiceStopped):
    """A cluster node that is not the leader. `leader`: the live lease holder's node id, epoch
    and endpoint per protocol ("url" for REST and WebSocket, "fix" and "binary" host:port; ""
    when that listener is off). During an election (no live holder) its node is "" and
    `retry_after_s` says when to try again; with a leader known it is 0 (go there now).
    `message` says what this node is; `text(protocol)` adds the leader's endpoint for it."""

    # which field of `leader` each protocol's answer names
    ENDPOINT_KEY: ClassVar[dict[str, str]] = {
        "rest": "url",
        "websocket": "url",
        "fix": "fix",
        "binary": "binary",
    }

    def __init__(self, message: str, leader: dict, retry_after_s: float = 0.0) -> None:
        self.about = message
        self.leader = leader
        self.retry_after_s = retry_after_s
        super().__init__(self.text("rest"))

    @property
    def election(self) -> bool:
        return not self.leader.get("node")

    def text(self, protocol: str) -> str:
        if self.election:
            wait = self.retry_after_s
            view = "no live leader in this node's view"
            return f"{self.about}; election in progress ({view}), retry after {wait:.1f} s"
        endpoint = self.leader.get(self.ENDPOINT_KEY[protocol], "")
        where = f"at {endpoint}" if endpoint else f"(it has no {protocol} listener)"
        return f"{self.about}; the leader is node {self.leader['node']} {where}"
