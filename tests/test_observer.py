"""The node's one telemetry seam (engine/observer.py): the commit loop hands each batch, with
its stamps, to every observer; a node without telemetry runs on the null observer."""

from __future__ import annotations

import asyncio

from engine.bench.workload import INSTRUMENT, SYMBOL
from engine.core.commands import NewOrder
from engine.core.domain import OrderType, Side
from engine.exchange import ExchangeNode, NodeConfig
from engine.observer import NULL_OBSERVER, CommittedBatch, Observer
from engine.service import ExchangeService


class Recording(Observer):
    wants_events = True

    def __init__(self) -> None:
        self.batches: list[CommittedBatch] = []

    def batch_committed(self, batch: CommittedBatch) -> None:
        self.batches.append(batch)


def order(clid: str, side: Side) -> NewOrder:
    return NewOrder("acct-" + clid, clid, SYMBOL, int(side), int(OrderType.LIMIT), 99_000, 5)


def run(service: ExchangeService, submissions: list[list]) -> None:
    async def main() -> None:
        service.start()
        for commands in submissions:
            await service.submit(commands, "test")
        await service.stop()

    asyncio.run(main())


def test_every_observer_gets_each_committed_batch_with_its_stamps(tmp_path):
    node = ExchangeNode(NodeConfig(tmp_path, (INSTRUMENT,), snapshot_every_s=0))
    primary, second = Recording(), Recording()
    service = ExchangeService(node, write_thread=False, observer=primary)
    service.add_observer(second)
    assert service.observer is primary  # the gateways' reports go to the primary
    run(service, [[order("a", Side.BUY)], [order("b", Side.SELL), order("c", Side.SELL)]])
    assert [len(b.commands) for b in primary.batches] == [1, 2]
    assert second.batches == primary.batches
    for batch in primary.batches:
        assert batch.error is None and batch.split is not None  # wants_events: the walk is built
        assert list(batch.stamps) == sorted(batch.stamps)  # taken <= sequenced <= ... <= answered
        assert [len(s.commands) for s in batch.submissions] == [len(batch.commands)]
        assert batch.written_bytes > 0
    trade = primary.batches[1].results[0]
    assert any(type(e).__name__ == "Trade" for e in trade)


def test_a_node_without_telemetry_runs_on_the_null_observer(tmp_path):
    node = ExchangeNode(NodeConfig(tmp_path, (INSTRUMENT,), snapshot_every_s=0))
    service = ExchangeService(node, write_thread=False)
    assert service.observer is NULL_OBSERVER
    run(service, [[order("a", Side.BUY)]])
    assert node.risk_check_ns is None  # nobody asked for risk timings: none are taken
    assert service.commands == 1
