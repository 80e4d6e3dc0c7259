"""The finished-order index on its own: the window of ids it answers for, the ring that
drops what falls out of it, and a rebuilt index handed over chunk by chunk."""

from __future__ import annotations

import tracemalloc

import pytest

from engine.core.order_store import CANCELLED, FILLED, OrderStore, OrderView
from engine.order_index import CHUNK, FinishedOrders, Lookup


@pytest.fixture(params=["memory", "file"])
def new_index(request, tmp_path):
    """FinishedOrders with its records in the heap or in a scratch file (the node's default)."""
    made = []

    def make(capacity, next_order_id):
        path = tmp_path / f"index-{len(made)}" if request.param == "file" else None
        made.append(FinishedOrders(capacity, next_order_id, path))
        return made[-1]

    yield make
    for index in made:
        index.close()


def view(oid: int, account: str = "alice", status: str = FILLED, trace_id: str = "") -> OrderView:
    return OrderView(
        oid, account, f"c-{oid}", "BTC-USD", 1, 1, 1, 100 + oid, 10, 0, 10 if status == FILLED else 3,
        status, 0 if status == FILLED else 1, 1000 + oid, 2000 + oid, 1001 + oid, 2001 + oid,
        trace_id=trace_id,
    )  # fmt: skip


def test_a_record_reads_back_as_the_view_without_fills(new_index):
    nxt = [10]
    index = new_index(5, lambda: nxt[0])
    index.add(view(7, status=CANCELLED, trace_id="ab" * 16))
    got = index.get(7)
    assert got is not None and got.fills is None
    expected = view(7, status=CANCELLED, trace_id="ab" * 16)
    expected.fills = None
    assert got == expected
    assert index.get(8) is None and index.missing(8) is Lookup.UNKNOWN  # open or never seen
    assert index.missing(10) is Lookup.UNKNOWN  # not assigned yet
    assert index.missing(4) is Lookup.EVICTED  # below next - capacity


def test_the_window_moves_with_the_next_order_id_and_newer_ids_own_their_slots(new_index):
    nxt = [4]
    index = new_index(3, lambda: nxt[0])
    for oid in (1, 2, 3):
        index.add(view(oid))
    nxt[0] = 7
    index.add(view(4, trace_id="cd" * 16))  # same slot as 1: 1 is gone
    assert index.get(1) is None and index.missing(1) is Lookup.EVICTED
    assert index.get(4).trace_id == "cd" * 16
    index.add(view(1))  # a late finish below the window is dropped, never over a newer one
    assert index.get(1) is None and index.get(4) is not None
    nxt[0] = 8
    index.add(view(7))  # 7 takes 4's slot, and its trace id goes with it
    assert index.get(4) is None and index.get(7).trace_id == ""


def test_ids_finished_before_the_start_are_rebuilding_then_known_or_gone(new_index):
    nxt = [100]
    index = new_index(1000, lambda: nxt[0])
    index.rebuild_hi, index.rebuilt = 100, False
    assert index.missing(50) is Lookup.REBUILDING and index.missing(100) is Lookup.UNKNOWN
    index.rebuilt, index.history_from = True, 40
    assert index.missing(39) is Lookup.HISTORY_GONE and index.missing(50) is Lookup.UNKNOWN


def test_a_rebuilt_index_is_merged_whole_or_record_by_record(new_index):
    nxt = [3 * CHUNK]
    rebuilt = new_index(4 * CHUNK, lambda: nxt[0])
    rebuilt.intern_names(["alice"], ["BTC-USD"])
    for oid in (1, 2, CHUNK + 5):
        rebuilt.add(view(oid, account="bob" if oid == 2 else "alice", trace_id="ef" * 16 if oid == 1 else ""))
    exported = rebuilt.export()
    live = new_index(4 * CHUNK, lambda: nxt[0])
    live.intern_names(["carol"], ["BTC-USD"])  # names interned otherwise: record by record
    live.add(view(CHUNK + 6, account="carol"))  # a chunk the live node wrote to already
    for chunk in exported["chunks"]:
        live.merge_chunk(exported, chunk)
    for oid in (1, 2, CHUNK + 5):
        assert live.get(oid) == rebuilt.get(oid)
    assert live.get(1).trace_id == "ef" * 16 and live.get(2).account == "bob"
    assert live.get(CHUNK + 6).account == "carol"

    same = new_index(4 * CHUNK, lambda: nxt[0])
    same.intern_names(["alice"], ["BTC-USD"])  # alike: chunks adopted whole
    for chunk in exported["chunks"]:
        same.merge_chunk(exported, chunk)
    assert all(same.get(oid) == rebuilt.get(oid) for oid in (1, 2, CHUNK + 5))


def test_the_store_moves_views_it_evicts_into_the_index_and_hides_those_past_the_window(new_index):
    nxt = [1]
    index = new_index(3, lambda: nxt[0])
    store = OrderStore(keep_done=1, index=index)
    for oid in (1, 2):
        store.orders[oid] = view(oid)
        store.orders[oid].status = "open"
        store._finish(store.orders[oid], FILLED)
    nxt[0] = 3
    assert store.done.keys() == {2} and index.get(1) is not None  # 1 went on, compacted
    assert store.find(1).fills is None and store.find(2).fills == ()
    nxt[0] = 6  # window 3..5: both are past it, even 2 whose full view is still recent
    assert store.find(1) is None and store.find(2) is None and store.get(2) is not None


def test_client_order_ids_of_any_length_read_back(new_index):
    nxt = [10]
    index = new_index(5, lambda: nxt[0])
    for oid, clid in ((6, ""), (7, "é" * 64), (8, "x" * 64)):  # 128 UTF-8 bytes: kept beside the file
        v = view(oid)
        v.client_order_id = clid
        index.add(v)
    assert [index.get(oid).client_order_id for oid in (6, 7, 8)] == ["", "é" * 64, "x" * 64]
    exported = index.export()
    again = new_index(5, lambda: nxt[0])
    for chunk in exported["chunks"]:
        again.merge_chunk(exported, chunk)
    assert [again.get(oid) for oid in (6, 7, 8)] == [index.get(oid) for oid in (6, 7, 8)]


def test_the_file_index_keeps_finished_orders_out_of_the_heap(tmp_path):
    """Issue 16's soak: the index held ~140 bytes of heap per finished order (the record and
    its client order id) up to its 1M-order window, most of the node's RSS growth. On file,
    the heap holds only the write-behind buffer (at most WRITE_BEHIND slots), whatever the
    count; each slot's order id is a fixed array allocated with the index."""
    n = 100_000
    nxt = [1]
    index = FinishedOrders(1_000_000, lambda: nxt[0], tmp_path / "index")
    views = [view(oid) for oid in range(1, n + 1)]
    for v in views:
        v.client_order_id = f"soak-run-client-order-{v.order_id}"  # a fresh string, as decoded
    nxt[0] = n + 1
    tracemalloc.start()
    try:
        for v in views:
            index.add(v)
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 1_500_000, held  # the heap layout: ~11 MB for these 100,000
    assert index.get(1).client_order_id == "soak-run-client-order-1"  # written out, read back
    assert index.get(n).client_order_id == f"soak-run-client-order-{n}"  # maybe still pending
    index.close()
