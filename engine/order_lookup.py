"""Order lookups that read history, off the event loop.

- Trace lookups (`GET /v1/orders/{id}/trace` for an order the store no longer holds in
  full) go to ONE long-lived worker process that keeps the journal (or, in cluster mode, a
  NATS connection to the stream) open and knows each snapshot's next order id after the
  first look. A thread would hold the GIL for the whole replay and stall every answer; a
  process per request (as before) costs an interpreter start each. At most `max_pending`
  lookups wait or run: the next is refused at once (LookupBusy: 503 with Retry-After).
- The finished-order index of everything that finished before this node started (a
  restart, a promoted standby, a node that joined late) is rebuilt once after start, in a
  one-shot process that replays the journal or stream with events from an older snapshot,
  and handed back as whole chunks. Until it is in, those ids answer "rebuilding" (503):
  recovery's replay and the time to ready are untouched.

Unknown ids never come here: the index answers them (engine/order_index.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

from engine.ledger_history import read_back_ledger
from engine.ledger_index import LedgerIndex
from engine.order_history import HistorySource, history, history_json, rebuild_index
from engine.order_index import FinishedOrders
from engine.procutil import die_with_parent

log = logging.getLogger("loom.lookup")

MAX_PENDING = 8  # trace lookups running or queued in the worker
TIMEOUT_S = 60.0
REBUILD_RETRY_S = 5.0


class LookupBusy(Exception):
    """Every lookup slot is taken: try again shortly."""


@dataclass(frozen=True)
class SourceSpec:
    """Where a worker process reads history from (picklable)."""

    data_dir: str
    cluster: tuple[str, ...] = ()
    stream: str = ""
    node_id: str = ""


def open_source(spec: SourceSpec) -> HistorySource:
    if spec.cluster:
        from engine.cluster.history import StreamHistory

        return StreamHistory(list(spec.cluster), spec.stream, spec.data_dir, spec.node_id)
    from engine.order_history import LocalHistory

    return LocalHistory(spec.data_dir)


# -- in the worker process ----------------------------------------------------------------------

_source: HistorySource | None = None


def _worker_init(node: int) -> None:
    die_with_parent(node)  # a SIGKILLed node takes its worker along
    # Ctrl-C reaches the whole process group: the node drains and stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _trace(spec: SourceSpec, order_id: int, upto_seq: int) -> dict | None:
    global _source
    if _source is None:
        _source = open_source(spec)  # opened on first use; a failed open is retried next time
    found = history(_source, order_id, upto_seq)
    return history_json(found) if found is not None else None


def _rebuild(spec: SourceSpec, capacity: int, lo: int, hi: int, upto_seq: int, names) -> dict:
    source = open_source(spec)
    try:
        return rebuild_index(source, capacity, lo, hi, upto_seq, names)
    finally:
        source.close()


def _rebuild_ledger(spec: SourceSpec, per_account: int, upto_seq: int) -> dict:
    source = open_source(spec)
    try:
        return read_back_ledger(source, per_account, upto_seq)
    finally:
        source.close()


async def _read_back(fn: Callable[..., dict], job: tuple, what: str) -> dict:
    """fn(*job) in a one-shot worker process, retried until it succeeds (a journal being
    trimmed under it, a stream not reachable yet)."""
    loop = asyncio.get_running_loop()
    attempt = 0
    while True:
        attempt += 1
        pool = spawn_pool()
        try:
            return await loop.run_in_executor(pool, fn, *job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            (log.warning if attempt == 1 else log.error)(
                "lookup: %s failed: %s; retrying in %.0f s", what, exc, REBUILD_RETRY_S
            )
        finally:
            stop_pool(pool)
        await asyncio.sleep(REBUILD_RETRY_S)


def stop_pool(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Stop a pool now, its running job too: a long history read must not hold up a drain
    (the interpreter joins pool processes at exit). Python 3.11's executor has no public
    way to end a running job, hence its process table."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        proc.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


def spawn_pool() -> concurrent.futures.ProcessPoolExecutor:
    # spawn, not fork: the node has threads (the journal's, the NATS link's) a fork would copy mid-flight.
    return concurrent.futures.ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init, initargs=(os.getpid(),)
    )


# -- in the node ----------------------------------------------------------------------------------


class OrderLookups:
    def __init__(
        self,
        spec: SourceSpec,
        index: FinishedOrders,
        engine: Callable[[], object],
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.spec = spec
        self.index = index
        self.engine = engine
        self.max_pending = max_pending
        self.pending = 0
        self._worker: concurrent.futures.ProcessPoolExecutor | None = None
        self._rebuild: asyncio.Task | None = None
        self._ledger: asyncio.Task | None = None

    async def trace(self, order_id: int) -> dict | None:
        """The order's history (history_json) from the worker, or None when the journal
        holds no such order. Raises LookupBusy, TimeoutError, JournalRangeGone."""
        if self.pending >= self.max_pending:
            raise LookupBusy(f"{self.pending} order lookups are already reading the journal")
        if self._worker is None:
            self._worker = spawn_pool()
        self.pending += 1
        try:
            upto = self.engine().last_seq
            future = asyncio.get_running_loop().run_in_executor(
                self._worker, _trace, self.spec, order_id, upto
            )
            return await asyncio.wait_for(future, TIMEOUT_S)
        except concurrent.futures.process.BrokenProcessPool:
            self._worker = None  # the worker died (killed, out of memory): a new one next time
            raise
        except TimeoutError:
            # The worker would go on reading for this lookup while `pending` says its slot is
            # free: end it, so the bound stays true (a new worker next time).
            stop_pool(self._worker)
            self._worker = None
            raise
        finally:
            self.pending -= 1

    def start_rebuild(self) -> None:
        """Read back the finished orders from before this node's start (in the background)."""
        engine = self.engine()
        index = self.index
        hi, lo = engine.next_order_id, index.window_lo
        index.rebuild_hi = hi
        index.rebuilt = hi <= lo
        if not index.rebuilt:
            names = (sorted(engine.accounts), sorted(engine.instruments))
            index.intern_names(*names)
            job = (self.spec, index.capacity, lo, hi, engine.last_seq, names)
            loop = asyncio.get_running_loop()
            self._rebuild = loop.create_task(self._run_rebuild(job), name="index-rebuild")

    def start_ledger_rebuild(self, ledger: LedgerIndex) -> None:
        """Read back the ledger entries from before this node's start (in the background);
        until they are in, ledger pages answer Rebuilding."""
        engine = self.engine()
        upto = engine.last_seq
        if engine.next_trade_id == 1:
            return  # no trade before this start: the seeded transfers are every entry there was
        ledger.rebuilt = False
        job = (self.spec, ledger.per_account, upto)
        what = f"reading back the ledger entries up to seq {upto}"
        self._ledger = asyncio.get_running_loop().create_task(
            self._run_ledger_rebuild(ledger, job, what), name="ledger-rebuild"
        )

    async def _run_ledger_rebuild(self, ledger: LedgerIndex, job: tuple, what: str) -> None:
        read_back = await _read_back(_rebuild_ledger, job, what)
        upto = job[-1]
        ledger.merge_read_back(read_back, upto)
        log.info(
            "lookup: ledger entries read back up to seq %d (history from seq %d)",
            upto,
            read_back["history_from"],
        )

    async def _run_rebuild(self, job: tuple) -> None:
        _spec, _capacity, lo, hi, upto, _names = job
        exported = await _read_back(_rebuild, job, f"rebuilding the order index (ids {lo}..{hi - 1})")
        for chunk in exported["chunks"]:
            self.index.merge_chunk(exported, chunk)
            await asyncio.sleep(0)  # one chunk at a time: answers go on in between
        self.index.history_from = exported["history_from"]
        self.index.rebuilt = True
        log.info(
            "lookup: order index rebuilt for ids %d..%d up to seq %d (history from id %d)",
            lo,
            hi - 1,
            upto,
            exported["history_from"],
        )

    async def close(self) -> None:
        for task in (self._rebuild, self._ledger):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._worker is not None:
            stop_pool(self._worker)
            self._worker = None
