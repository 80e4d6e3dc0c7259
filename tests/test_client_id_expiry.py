"""Forgetting client order ids costs what leaves the window, not what the venue holds.

The pass that forgot them (every 1,024 orders) used to walk every account's table and to move
each resting order's id to the back of its table once per window: with 10,000 accounts the
bench's orders ran at less than half the rate of 100 accounts (BENCHMARKS.md, "Session 12:
forgetting client order ids"). These count the table work directly: tables that count how
often they are read."""

from __future__ import annotations

from conftest import BTC, BUY, IOC, LIMIT, Exchange, assert_consistent

from engine.core.commands import NewOrder
from engine.core.state import decode_state, encode_state, export_state, restore_state, state_hash


class CountingTable(dict):
    """A client-id table that counts every read of it (lookups, pops, walks)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reads = 0

    def get(self, *args):
        self.reads += 1
        return super().get(*args)

    def pop(self, *args):
        self.reads += 1
        return super().pop(*args)

    def items(self):
        self.reads += 1
        return super().items()

    def __iter__(self):
        self.reads += 1
        return super().__iter__()


def ioc_buy(ex: Exchange, account: str, clid: str) -> None:
    """An IOC buy applied without the rule suite's check after each command (the invariant
    checker reads every table, which would be counted)."""
    ex.engine.apply(ex.stamp(NewOrder(account, clid, BTC, BUY, LIMIT, 100, 10, IOC)))


def test_a_pass_reads_no_table_of_an_account_that_registered_nothing_since(window5):
    ex = Exchange()
    idle = [f"idle{i}" for i in range(200)]
    for name in idle:  # one order each, long finished and past the window
        ex.buy(name, 100, 10, clid="c", tif=IOC)
    for _ in range(10):
        ex.buy("busy", 100, 10, clid=f"warm{_}", tif=IOC)
    tables = {}
    for name in idle:
        acct = ex.engine.accounts[name]
        acct.by_clid = tables[name] = CountingTable(acct.by_clid)
    for i in range(400):  # 200 passes (one every 2 orders here)
        ioc_buy(ex, "busy", f"b{i}")
    # Each idle account's one id left the window before the counting began: nothing to read.
    assert sum(t.reads for t in tables.values()) == 0
    assert_consistent(ex.engine)


def test_a_resting_orders_id_is_not_read_again_every_window(window5):
    ex = Exchange()
    resting = [ex.place("a", BUY, 50, 10, clid=f"r{i}") for i in range(50)]
    table = CountingTable(ex.engine.accounts["a"].by_clid)
    ex.engine.accounts["a"].by_clid = table
    for i in range(500):  # 100 windows of 5 orders, from another account (IOCs: nothing to fill)
        ioc_buy(ex, "b", f"i{i}")
    # Each resting id is read when its window passes and set aside; set-aside ids are read
    # again only once their number doubles. The old pass moved each back every window: 100x.
    assert table.reads <= 2 * len(resting)
    assert_consistent(ex.engine)
    acct = ex.engine.accounts["a"]
    assert all(acct.live_clid(f"r{i}", ex.engine.next_order_id) == oid for i, oid in enumerate(resting))
    for oid in resting:  # finished: their ids go at a later sweep, and meanwhile are free
        ex.cancel("a", oid)
    assert acct.live_clid("r0", ex.engine.next_order_id) is None
    for i in range(200):
        ex.buy("b", 100, 10, clid=f"j{i}", tif=IOC)
        ex.place("c", BUY, 40, 10, clid=f"k{i}")  # new ids set aside, until a sweep is due
    assert not any(f"r{i}" in acct.by_clid for i in range(50))


def test_a_restored_engine_forgets_the_ids_it_restored(window5):
    ex = Exchange()
    keep = ex.place("a", BUY, 50, 10, clid="keep")
    for i in range(4):
        ex.buy("a", 100, 10, clid=f"i{i}", tif=IOC)
    twin = Exchange(engine=restore_state(decode_state(encode_state(export_state(ex.engine)))))
    assert_consistent(twin.engine)  # every restored id is queued for expiry
    assert set(twin.engine.accounts["a"].by_clid) == {"keep", "i0", "i1", "i2", "i3"}
    for i in range(10):
        for side in (ex, twin):
            side.buy("z", 100, 10, clid=f"z{i}", tif=IOC)
    assert set(twin.engine.accounts["a"].by_clid) == {"keep"}
    assert twin.engine.accounts["a"].live_clid("keep", twin.engine.next_order_id) == keep
    assert state_hash(twin.engine) == state_hash(ex.engine)
