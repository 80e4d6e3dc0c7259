"""The finished-order index on its own: the window of ids it answers for, the ring that
drops what falls out of it, and a rebuilt index handed over chunk by chunk."""

from __future__ import annotations

from engine.core.order_store import CANCELLED, FILLED, OrderStore, OrderView
from engine.order_index import CHUNK, FinishedOrders, Lookup


def view(oid: int, account: str = "alice", status: str = FILLED, trace_id: str = "") -> OrderView:
    return OrderView(
        oid, account, f"c-{oid}", "BTC-USD", 1, 1, 1, 100 + oid, 10, 0, 10 if status == FILLED else 3,
        status, 0 if status == FILLED else 1, 1000 + oid, 2000 + oid, 1001 + oid, 2001 + oid,
        trace_id=trace_id,
    )  # fmt: skip


def test_a_record_reads_back_as_the_view_without_fills():
    nxt = [10]
    index = FinishedOrders(5, lambda: nxt[0])
    index.add(view(7, status=CANCELLED, trace_id="ab" * 16))
    got = index.get(7)
    assert got is not None and got.fills is None
    expected = view(7, status=CANCELLED, trace_id="ab" * 16)
    expected.fills = None
    assert got == expected
    assert index.get(8) is None and index.missing(8) is Lookup.UNKNOWN  # open or never seen
    assert index.missing(10) is Lookup.UNKNOWN  # not assigned yet
    assert index.missing(4) is Lookup.EVICTED  # below next - capacity


def test_the_window_moves_with_the_next_order_id_and_newer_ids_own_their_slots():
    nxt = [4]
    index = FinishedOrders(3, lambda: nxt[0])
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


def test_ids_finished_before_the_start_are_rebuilding_then_known_or_gone():
    nxt = [100]
    index = FinishedOrders(1000, lambda: nxt[0])
    index.rebuild_hi, index.rebuilt = 100, False
    assert index.missing(50) is Lookup.REBUILDING and index.missing(100) is Lookup.UNKNOWN
    index.rebuilt, index.history_from = True, 40
    assert index.missing(39) is Lookup.HISTORY_GONE and index.missing(50) is Lookup.UNKNOWN


def test_a_rebuilt_index_is_merged_whole_or_record_by_record():
    nxt = [3 * CHUNK]
    rebuilt = FinishedOrders(4 * CHUNK, lambda: nxt[0])
    rebuilt.intern_names(["alice"], ["BTC-USD"])
    for oid in (1, 2, CHUNK + 5):
        rebuilt.add(view(oid, account="bob" if oid == 2 else "alice", trace_id="ef" * 16 if oid == 1 else ""))
    exported = rebuilt.export()
    live = FinishedOrders(4 * CHUNK, lambda: nxt[0])
    live.intern_names(["carol"], ["BTC-USD"])  # names interned otherwise: record by record
    live.add(view(CHUNK + 6, account="carol"))  # a chunk the live node wrote to already
    for chunk in exported["chunks"]:
        live.merge_chunk(exported, chunk)
    for oid in (1, 2, CHUNK + 5):
        assert live.get(oid) == rebuilt.get(oid)
    assert live.get(1).trace_id == "ef" * 16 and live.get(2).account == "bob"
    assert live.get(CHUNK + 6).account == "carol"

    same = FinishedOrders(4 * CHUNK, lambda: nxt[0])
    same.intern_names(["alice"], ["BTC-USD"])  # alike: chunks adopted whole
    for chunk in exported["chunks"]:
        same.merge_chunk(exported, chunk)
    assert all(same.get(oid) == rebuilt.get(oid) for oid in (1, 2, CHUNK + 5))


def test_the_store_moves_views_it_evicts_into_the_index_and_hides_those_past_the_window():
    nxt = [1]
    index = FinishedOrders(3, lambda: nxt[0])
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
