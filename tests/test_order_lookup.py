"""Order lookup that survives restarts and failovers, on real `loom run` processes (and a
real NATS cluster for cluster mode): finished orders by id and by client order id after a
restart, on a node that joined late, on a promoted standby; the trace read from the stream
in cluster mode; 410 past the lookup window; unknown ids answered without reading history."""

from __future__ import annotations

import functools
import os
import threading
import time

from loomproc import loom_run
from natsproc import unique_stream

from engine.cluster import drill
from engine.cluster.drill import TRADER_KEY, NodeProcess, in_sync, wait_for

# Every request waits this long for its answer: a loaded machine answers late (the first trace
# lookup after a start spawns the lookup worker, an interpreter start; the index rebuild runs
# beside it), and the drills' 2 s made a late answer read as none (status 0). The tests assert
# what is answered, never how fast.
ANSWER_S = 60.0
http = functools.partial(drill.http, timeout=ANSWER_S)

ALICE, BOB = "lookup-alice-key-00000", "lookup-bob-key-000000"
CONFIG = f"""
admin_key = "lookup-admin-key-00000"
rate_limit = 0.0

[[accounts]]
name = "alice"
api_key = "{ALICE}"

[[accounts]]
name = "bob"
api_key = "{BOB}"

[[instruments]]
symbol = "BTC-USD"
tick_size = 1
lot_size = 1
"""
ARGS = ["--http-port", "0", "--fix-port", "-1", "--binary-port", "-1"]


def node(tmp_path, extra: str = "", top: str = ""):
    config = tmp_path / "loom.toml"
    config.write_text(top + CONFIG + extra)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOM_", "OTEL_"))}
    return loom_run(["--config", str(config), "--data-dir", str(tmp_path / "data"), *ARGS], env)


def place(base: str, key: str, side: str, price: int, qty: int, clid: str, **extra) -> int:
    body = {"symbol": "BTC-USD", "side": side, "qty": qty, "price": price, "client_order_id": clid}
    status, answer = http("POST", base + "/v1/orders", {**body, **extra}, key=key)
    assert status == 201, answer
    return answer["order"]["order_id"]


def settled(base: str, path: str, key: str) -> tuple[int, dict]:
    """The answer once the order index is rebuilt (503 INDEX_REBUILDING until then)."""
    answer: list = []

    def probe():
        answer[:] = http("GET", base + path, key=key)
        rebuilding = answer[0] == 503 and answer[1]["error"]["code"] == "INDEX_REBUILDING"
        return answer[0] != 0 and not rebuilding  # 0: no answer at all, not an answer

    wait_for(f"{path} past the index rebuild", probe, timeout=60)
    return answer[0], answer[1]


def finished_orders(base: str) -> dict[str, int]:
    """A filled maker and taker, a cancelled order and an open one."""
    ids = {
        "filled": place(base, ALICE, "buy", 100, 10, "a-filled"),
        "taker": place(base, BOB, "sell", 100, 10, "b-taker"),
        "cancelled": place(base, ALICE, "buy", 90, 5, "a-cancel"),
        "open": place(base, ALICE, "buy", 80, 5, "a-open"),
    }
    status, _ = http("DELETE", f"{base}/v1/orders/{ids['cancelled']}", key=ALICE)
    assert status == 200
    return ids


def test_finished_orders_are_found_by_id_and_client_order_id_after_a_restart(tmp_path):
    # Snapshots every 3 commands: the rebuild starts from one older than the orders.
    extra = "\n[snapshots]\nevery_commands = 3\nkeep = 5\n"
    with node(tmp_path, extra) as base:
        ids = finished_orders(base)
    with node(tmp_path, extra) as base:
        status, filled = settled(base, f"/v1/orders/{ids['filled']}", ALICE)
        assert status == 200, filled
        assert filled["status"] == "filled" and filled["filled"] == 10 and filled["leaves"] == 0
        assert filled["client_order_id"] == "a-filled" and filled["account"] == "alice"
        assert filled["accepted_seq"] > 0 and filled["trace_id"]
        status, by_clid = http("GET", base + "/v1/orders/by-client-id/a-filled", key=ALICE)
        assert status == 200 and by_clid == filled

        status, cancelled = http("GET", base + "/v1/orders/by-client-id/a-cancel", key=ALICE)
        assert status == 200, cancelled
        assert cancelled["order_id"] == ids["cancelled"] and cancelled["status"] == "cancelled"
        assert cancelled["cancel_reason"] == "user"
        status, taker = http("GET", f"{base}/v1/orders/{ids['taker']}", key=BOB)
        assert status == 200 and taker["status"] == "filled" and taker["client_order_id"] == "b-taker"
        status, still_open = http("GET", base + "/v1/orders/by-client-id/a-open", key=ALICE)
        assert status == 200 and still_open["status"] == "open" and still_open["order_id"] == ids["open"]

        # Another account's order is answered exactly like an id never assigned.
        status, theirs = http("GET", f"{base}/v1/orders/{ids['filled']}", key=BOB)
        status_unknown, unknown = http("GET", f"{base}/v1/orders/{ids['filled']}", key=BOB)
        assert (status, theirs) == (status_unknown, unknown) == (404, theirs)
        assert theirs["error"] == {
            "code": "UNKNOWN_ORDER",
            "message": f"no order {ids['filled']} for this account",
        }
        status, never = http("GET", f"{base}/v1/orders/{ids['open'] + 1000}", key=BOB)
        assert status == 404 and never["error"]["code"] == "UNKNOWN_ORDER"
        assert never["error"]["message"] == f"no order {ids['open'] + 1000} for this account"
        status, theirs = http("GET", base + "/v1/orders/by-client-id/a-filled", key=BOB)
        assert status == 404 and theirs["error"]["code"] == "UNKNOWN_ORDER"

        # The whole history, read back by the lookup worker.
        status, trace = http("GET", f"{base}/v1/orders/{ids['filled']}/trace", key=ALICE)
        assert status == 200, trace
        assert trace["source"] == "journal" and trace["status"] == "filled"
        assert [e["type"] for e in trace["events"]] == ["accepted", "trade", "filled"]
        status, theirs = http("GET", f"{base}/v1/orders/{ids['filled']}/trace", key=BOB)
        assert status == 404 and theirs["error"]["code"] == "UNKNOWN_ORDER"


def test_past_the_lookup_window_the_answer_is_410_naming_it(tmp_path):
    top = "lookup_window_orders = 3\n"
    with node(tmp_path, top=top) as base:
        ids = [place(base, ALICE, "buy", 50, 1, f"w-{n}") for n in range(6)]
        for oid in ids:
            assert http("DELETE", f"{base}/v1/orders/{oid}", key=ALICE)[0] == 200
        status, gone = http("GET", f"{base}/v1/orders/{ids[0]}", key=ALICE)
        assert status == 410, gone
        assert gone["error"]["code"] == "ORDER_EVICTED" and gone["error"]["window_orders"] == 3
        assert "newest 3 order ids" in gone["error"]["message"]
        assert http("GET", f"{base}/v1/orders/{ids[-1]}", key=ALICE)[0] == 200
    with node(tmp_path, top=top) as base:
        status, kept = settled(base, f"/v1/orders/{ids[-1]}", ALICE)
        assert status == 200 and kept["status"] == "cancelled"
        status, gone = http("GET", base + "/v1/orders/by-client-id/w-0", key=ALICE)
        assert status == 410 and gone["error"]["code"] == "ORDER_EVICTED"
        assert gone["error"]["order_id"] == ids[0]
        # Another account gets the same answer for the id: it is about the id, not the order.
        assert http("GET", f"{base}/v1/orders/{ids[0]}", key=BOB)[0] == 410


def test_lookups_of_unknown_ids_never_read_the_journal(tmp_path):
    with node(tmp_path) as base:
        ids = finished_orders(base)
        results: list[int] = []

        def look(oid: int, key: str) -> None:
            results.append(http("GET", f"{base}/v1/orders/{oid}/trace", key=key)[0])

        # Far more at once than the lookup worker takes (8): had any reached it, the rest
        # would be refused with 503 LOOKUP_BUSY.
        threads = [
            threading.Thread(
                target=look, args=(ids["open"] + 1 + n, ALICE) if n % 2 else (ids["filled"], BOB)
            )
            for n in range(200)
        ]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [404] * 200, sorted(set(results))
        print(f"\n200 concurrent unknown-id trace lookups in {time.monotonic() - started:.2f} s")


def test_cluster_lookup_on_a_late_joiner_a_promoted_standby_and_a_restarted_node(nats_cluster, tmp_path):
    stream, _prefix = unique_stream()
    a, b = (NodeProcess(n, nats_cluster.urls, tmp_path, stream) for n in ("a", "b"))
    try:
        a.start()
        wait_for("a to lead", lambda: a.status().get("role") == "leader")

        def order(side: str, price: int, clid: str) -> int:
            body = {"symbol": "BTC-USD", "side": side, "qty": 2, "price": price}
            status, answer = http(
                "POST", a.base + "/v1/orders", {**body, "client_order_id": clid, "stp": "none"}, TRADER_KEY
            )
            assert status == 201, answer
            return answer["order"]["order_id"]

        filled, taker, cancelled = (
            order("buy", 7, "c-filled"),
            order("sell", 7, "c-taker"),
            order("buy", 5, "c-x"),
        )
        assert http("DELETE", f"{a.base}/v1/orders/{cancelled}", key=TRADER_KEY)[0] == 200

        b.start()  # joins late: it recovers from the stream with no event of those orders
        wait_for("b to follow a", lambda: in_sync([a, b]))
        status, view = settled(b.base, f"/v1/orders/{filled}", TRADER_KEY)
        assert status == 200 and view["status"] == "filled" and view["client_order_id"] == "c-filled"
        status, trace = http("GET", f"{b.base}/v1/orders/{filled}/trace", key=TRADER_KEY)
        assert status == 200, trace
        assert [e["type"] for e in trace["events"]] == ["accepted", "trade", "filled"]

        a.kill()
        wait_for("b to lead", lambda: b.status().get("role") == "leader", timeout=90)
        status, view = http("GET", b.base + "/v1/orders/by-client-id/c-x", key=TRADER_KEY)
        assert status == 200 and view["order_id"] == cancelled and view["status"] == "cancelled"
        status, view = http("GET", f"{b.base}/v1/orders/{taker}", key=TRADER_KEY)
        assert status == 200 and view["status"] == "filled"

        a.start()  # restarted: everything it knew is from before its start
        status, view = settled(a.base, "/v1/orders/by-client-id/c-taker", TRADER_KEY)
        assert status == 200 and view["order_id"] == taker and view["status"] == "filled"
        status, trace = http("GET", f"{a.base}/v1/orders/{cancelled}/trace", key=TRADER_KEY)
        assert status == 200, trace
        assert trace["status"] == "cancelled" and trace["client_order_id"] == "c-x"
    finally:
        for n in (a, b):
            n.stop()
