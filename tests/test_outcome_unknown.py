"""Definite outcomes on a single node's journal: a refusal (JOURNAL_WRITE_FAILED) is sent only
when the batch's bytes are known not to be in the journal; otherwise the answer is
OUTCOME_UNKNOWN, and the node sequences nothing more until it has settled the batch.

A failed fdatasync after a whole write leaves the record in the file (and the page cache is
no witness of what reaches the disk): the node cuts the file back to the batch's start and
makes the cut durable; only then is the refusal true. When the cut fails too, the answer is
OUTCOME_UNKNOWN: a restart finds the record whole and applies it, so "nothing was done"
would have been a lie.
"""

from __future__ import annotations

import asyncio
import errno
import os

from prometheus_client import CollectorRegistry
from test_write_failures import full_replay_hash, node_config

import engine.journal.segments as segments_mod
from engine.bench.workload import SYMBOL
from engine.core.commands import NewOrder
from engine.core.domain import OrderType, RejectReason, Side
from engine.core.events import OrderAccepted, OrderRejected
from engine.core.state import state_hash
from engine.exchange import ExchangeNode
from engine.service import ExchangeService
from telemetry.collectors import ExchangeCollector

FAILED = int(RejectReason.JOURNAL_WRITE_FAILED)
UNKNOWN = int(RejectReason.OUTCOME_UNKNOWN)


def order(clid: str, price: int = 99_000) -> NewOrder:
    return NewOrder("alice", clid, SYMBOL, int(Side.BUY), int(OrderType.LIMIT), price, 1)


def reasons(results: list[list]) -> list[int]:
    return [ev[0].reason if type(ev[0]) is OrderRejected else 0 for ev in results]


def live(node: ExchangeNode, clid: str) -> bool:
    acct = node.engine.accounts.get("alice")
    return acct is not None and clid in acct.by_clid


class _FailingSync:
    """Stands in for `os` inside engine.journal.segments (works on any version of it): the
    next fdatasync fails after `fail_fsync()`, and ftruncate fails while `cut_fails`."""

    def __init__(self) -> None:
        self._fsync_fails = False
        self.cut_fails = False
        self.cuts = 0

    def __getattr__(self, name):
        return getattr(os, name)

    def fail_fsync(self) -> None:
        self._fsync_fails = True

    def fdatasync(self, fd):
        if self._fsync_fails:
            self._fsync_fails = False
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return os.fdatasync(fd)

    def ftruncate(self, fd, length):
        self.cuts += 1
        if self.cut_fails:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return os.ftruncate(fd, length)


def test_a_failed_fsync_that_cannot_be_cut_off_is_never_called_nothing_done(tmp_path, monkeypatch):
    """The defect: the node answered JOURNAL_WRITE_FAILED ("nothing was done") for a batch
    whose whole record was in the file; after a restart the order was live."""
    shim = _FailingSync()
    monkeypatch.setattr(segments_mod, "os", shim)
    config = node_config(tmp_path)
    node = ExchangeNode(config)
    try:
        assert reasons(node.submit([order("a-1")])) == [0]
        shim.fail_fsync()
        shim.cut_fails = True
        answer = reasons(node.submit([order("a-2", 99_001)]))
        assert answer == [UNKNOWN], answer  # never FAILED: the bytes may be in the journal
        assert node.unresolved is not None and not node.journal_ok
        assert not live(node, "a-2")  # not applied while unknown
        # Nothing is sequenced after it while it is unknown: a true refusal, not stamped.
        assert reasons(node.submit([order("a-3")])) == [FAILED]
    finally:
        node.close()  # a crash, as far as the journal is concerned
    monkeypatch.undo()

    node = ExchangeNode(config)  # recovery reads what the file holds
    try:
        assert live(node, "a-2")  # it was durable after all: the answer did not deny it
        assert not live(node, "a-3")
        assert node.recovered.state_hash == full_replay_hash(node.journal)
    finally:
        node.close()


def test_a_failed_fsync_is_cut_off_and_then_refused_truly(tmp_path):
    config = node_config(tmp_path)
    node = ExchangeNode(config)
    try:
        node.submit([order("b-1")])
        (seg,) = node.journal.segments
        size = seg.path.stat().st_size
        node.journal.fail_writes(errno.EIO, at="fsync")  # the whole record is written first
        assert reasons(node.submit([order("b-2")])) == [FAILED]
        assert seg.path.stat().st_size == size == seg.size  # cut back: known absent
        assert node.sequencer.last_seq == node.engine.last_seq == node.journal.last_seq
        node.journal.fail_writes(None)
        assert reasons(node.submit([order("b-2")])) == [0]  # resent with the same id
        live_hash = state_hash(node.engine)
    finally:
        node.close()
    node = ExchangeNode(config)
    try:
        assert node.recovered.torn_tail_truncations == 0
        assert node.recovered.state_hash == live_hash == full_replay_hash(node.journal)
        assert [c.client_order_id for c in node.journal.read() if type(c) is NewOrder] == ["b-1", "b-2"]
    finally:
        node.close()


def test_the_service_holds_an_unknown_outcome_until_the_journal_settles_it(tmp_path, monkeypatch):
    """Through the commit loop: the batch is answered OUTCOME_UNKNOWN, the next submission
    waits (nothing is sequenced on an unknown tail) while the node retries the cut, is not
    ready and counts it; once the cut succeeds the batch is known absent, its seqs are given
    back, and the waiting order is accepted in its place."""
    config = node_config(tmp_path)
    node = ExchangeNode(config)
    registry = CollectorRegistry()
    shim = _FailingSync()
    monkeypatch.setattr(segments_mod, "os", shim)

    async def main() -> None:
        service = ExchangeService(node, write_thread=False)
        registry.register(ExchangeCollector(service))
        service.start()
        try:
            assert reasons([await service.submit_one(order("c-1"))]) == [0]
            seq_before = node.engine.last_seq
            shim.fail_fsync()
            shim.cut_fails = True
            events = await service.submit_one(order("c-2"))
            assert reasons([events]) == [UNKNOWN]
            assert node.unresolved is not None
            assert node.journal.write_errors == 0  # an unknown outcome is no refusal
            assert registry.get_sample_value("loom_journal_unresolved") == 1
            waiting = asyncio.ensure_future(service.submit_one(order("c-3")))
            tried = shim.cuts
            while shim.cuts < tried + 3:  # the loop tries the cut again, with backoff
                await asyncio.sleep(0.01)
            assert not waiting.done()  # held: nothing sequenced after the unknown batch
            assert node.sequencer.last_seq == seq_before + 1
            shim.cut_fails = False
            accepted = await asyncio.wait_for(waiting, 10)
            assert type(accepted[0]) is OrderAccepted and accepted[0].seq == seq_before + 1
            assert node.unresolved is None
            counted = {
                (s.labels["resolution"], s.labels["answered"]): s.value
                for s in registry.collect()
                if s.name == "loom_journal_unknown_outcomes"
                for s in s.samples
                if s.name.endswith("_total")
            }
            assert counted[("absent", "unknown")] == 1 and counted[("landed", "unknown")] == 0
            assert registry.get_sample_value("loom_journal_unresolved") == 0
        finally:
            await service.stop()

    try:
        asyncio.run(main())
        assert not live(node, "c-2") and live(node, "c-3")
        live_hash = state_hash(node.engine)
    finally:
        node.close()
    node = ExchangeNode(config)
    try:
        assert node.recovered.state_hash == live_hash == full_replay_hash(node.journal)
    finally:
        node.close()
