"""The WebSocket gateway (/v1/ws) against a real exchange: authentication, order entry,
execution reports, L2 book and trade streams, and garbage that must not end a session.

Uses the LiveExchange harness of test_http_gateway (a real node on a free port, driven on
its own event loop). To know that nothing more is coming, a test sends a ping: replies and
pushes go out through one ordered outbox, so everything queued before the ping arrives
before its pong.
"""

from __future__ import annotations

import errno
import itertools
import json
import uuid

import aiohttp
import pytest
from aiohttp import WSMsgType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_http_gateway import (  # the shared harness
    BTC,
    ETH,
    KEY,
    LiveExchange,
    big_ints,
    json_values,
    mostly,
    on_loop,
    weighted,
)


@pytest.fixture
def make_exchange(tmp_path):
    """Start LiveExchanges with config overrides; all are stopped when the test ends."""
    started: list[LiveExchange] = []

    def make(**overrides) -> LiveExchange:
        started.append(LiveExchange(tmp_path / f"node{len(started)}", **overrides))
        return started[-1]

    try:
        yield make
    finally:
        for server in reversed(started):
            server.close()


@pytest.fixture
def srv(make_exchange) -> LiveExchange:
    return make_exchange()


REPLIES = {"error", "ack", "rejected", "authenticated", "subscribed", "unsubscribed", "pong"}
PUSHES = {"l2snapshot", "l2update", "trade", "execution"}


class WsClient:
    """A WebSocket session: requests are matched to replies by req_id; everything else
    received meanwhile is kept in `pushed`."""

    _ids = itertools.count(1)

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.pushed: list[dict] = []
        self.last_req_id = ""

    async def recv(self, timeout: float = 10) -> dict:
        msg = await self.ws.receive(timeout=timeout)
        assert msg.type == WSMsgType.TEXT, f"session ended or sent non-text: {msg}"
        data = json.loads(msg.data)
        assert isinstance(data, dict) and data.get("type") in REPLIES | PUSHES, data
        if data["type"] == "error":
            assert "req_id" in data, data
            assert isinstance(data["code"], str) and data["code"], data
            assert isinstance(data["message"], str) and data["message"], data
        return data

    async def send(self, op: str, **fields) -> str:
        req_id = self.last_req_id = f"req-{next(self._ids)}"
        await self.ws.send_json({"op": op, "req_id": req_id, **fields})
        return req_id

    async def reply(self, req_id) -> dict:
        while True:
            msg = await self.recv()
            if msg.get("req_id") == req_id and msg["type"] in REPLIES:
                return msg
            self.pushed.append(msg)

    async def call(self, op: str, **fields) -> dict:
        return await self.reply(await self.send(op, **fields))

    async def sync(self) -> list[dict]:
        """Everything queued for this session so far (a pong follows all of it)."""
        pong = await self.call("ping")
        assert pong["type"] == "pong"
        out, self.pushed = self.pushed, []
        return out

    async def order(self, side: str, price: int, qty: int, symbol: str = BTC, **fields) -> dict:
        body = {"symbol": symbol, "side": side, "qty": qty, **fields}
        if price:
            body["price"] = price
        ack = await self.call("order", **body)
        assert ack["type"] == "ack", ack
        return ack


async def connect(srv: LiveExchange, account: str | None = None, headers: dict | None = None) -> WsClient:
    hdrs = dict(headers or {})
    if account is not None:
        hdrs["X-API-Key"] = KEY[account]
    return WsClient(await srv.http.ws_connect("/v1/ws", headers=hdrs))


def _req(client: WsClient) -> str:
    """The req_id of the request `client` sent last."""
    return client.last_req_id


def assert_ws_error(msg: dict, code: str, req_id=None) -> None:
    assert msg["type"] == "error", msg
    assert msg["code"] == code, msg
    assert msg["req_id"] == req_id, msg
    assert isinstance(msg["message"], str) and msg["message"], msg


# -- authentication -------------------------------------------------------------------------


@on_loop
async def test_an_unknown_outcome_is_its_own_rejection_code(srv):
    client = await connect(srv, "alice")
    srv.node.journal.fail_writes(errno.EIO, at="fsync")
    srv.node.journal.fail_cuts(errno.EIO)
    try:
        reply = await client.call("order", symbol=BTC, side="buy", qty=1, price=100, client_order_id="u")
    finally:
        srv.node.journal.fail_writes(None)
        srv.node.journal.fail_cuts(None)
    assert (reply["type"], reply["code"]) == ("rejected", "OUTCOME_UNKNOWN"), reply
    assert "by-client-id" in reply["message"] and "nothing was done" not in reply["message"]
    await client.order("buy", 100, 1, client_order_id="u")  # settled as absent: resent, accepted


@on_loop
async def test_auth_by_header(srv):
    for headers in ({"X-API-Key": KEY["alice"]}, {"Authorization": f"Bearer {KEY['alice']}"}):
        client = await connect(srv, headers=headers)
        try:
            ack = await client.order("buy", 100, 1)
            (accepted,) = ack["events"]
            assert (accepted["type"], accepted["account"]) == ("accepted", "alice")
        finally:
            await client.ws.close()


@on_loop
async def test_a_wrong_key_header_is_refused_before_the_upgrade(srv):
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await srv.http.ws_connect("/v1/ws", headers={"X-API-Key": "wrong-key-0123456789abcdef"})
    assert refused.value.status == 401


@on_loop
async def test_auth_by_op_and_unauthenticated_requests(srv):
    client = await connect(srv)
    try:
        before = srv.seq
        order = {"symbol": BTC, "side": "buy", "qty": 2, "price": 100}
        assert_ws_error(await client.call("order", **order), "UNAUTHENTICATED", _req(client))
        for op, fields in (
            ("cancel", {"order_id": 1}),
            ("amend", {"order_id": 1, "qty": 1}),
            ("cancel_all", {}),
            ("subscribe", {"channel": "executions"}),
        ):
            msg = await client.call(op, **fields)
            assert (msg["type"], msg["code"]) == ("error", "UNAUTHENTICATED"), msg
        assert_ws_error(
            await client.call("auth", api_key="wrong-key-0123456789abcdef"), "UNAUTHENTICATED", _req(client)
        )
        assert_ws_error(await client.call("auth"), "UNAUTHENTICATED", _req(client))
        assert_ws_error(await client.call("auth", api_key=12345), "INVALID_REQUEST", _req(client))
        assert_ws_error(await client.call("auth", api_key=["x"]), "INVALID_REQUEST", _req(client))
        assert srv.seq == before  # nothing reached the journal
        # Public market data needs no authentication.
        assert (await client.call("subscribe", channel="book", symbol=BTC))["type"] == "subscribed"

        reply = await client.call("auth", api_key=KEY["alice"])
        assert reply == {"type": "authenticated", "req_id": _req(client), "account": "alice"}
        ack = await client.order("buy", 100, 2, client_order_id="ws-1")
        assert ack["req_id"] == _req(client)
        (accepted,) = ack["events"]
        assert (accepted["type"], accepted["account"], accepted["client_order_id"]) == (
            "accepted",
            "alice",
            "ws-1",
        )
        # Durable before the ack, and the same order REST serves.
        assert srv.node.journal.last_seq >= accepted["seq"]
        view = await srv.get_order("alice", accepted["order_id"])
        assert (view["status"], view["qty"], view["price"]) == ("open", 2, 100)
    finally:
        await client.ws.close()


@on_loop
async def test_req_id_is_echoed_whatever_its_json_type(srv):
    client = await connect(srv, "alice")
    try:
        for req_id in (7, "x", None, [1, "a"], {"k": {"n": 1}}, 1.5, True):
            await client.ws.send_json({"op": "ping", "req_id": req_id})
            assert await client.recv() == {"type": "pong", "req_id": req_id}
        await client.ws.send_json({"op": "ping"})
        assert await client.recv() == {"type": "pong", "req_id": None}
        await client.ws.send_json(
            {"op": "order", "req_id": {"mine": 1}, "symbol": BTC, "side": "buy", "qty": 1, "price": 5}
        )
        ack = await client.recv()
        assert (ack["type"], ack["req_id"]) == ("ack", {"mine": 1})
    finally:
        await client.ws.close()


# -- order entry ----------------------------------------------------------------------------


@on_loop
async def test_order_cancel_amend_and_cancel_all_over_ws(srv):
    client = await connect(srv, "alice")
    try:
        a = (await client.order("buy", 100, 5, client_order_id="a"))["events"][0]["order_id"]
        b = (await client.order("buy", 95, 5, client_order_id="b"))["events"][0]["order_id"]
        c = (await client.order("sell", 120, 5, client_order_id="c"))["events"][0]["order_id"]
        d = (await client.order("sell", 300, 1, symbol=ETH))["events"][0]["order_id"]

        amended = await client.call("amend", order_id=a, qty=3)
        assert amended["type"] == "ack", amended
        assert [(e["type"], e["qty"], e["priority_kept"]) for e in amended["events"]] == [
            ("amended", 3, True)
        ]
        amended = await client.call("amend", client_order_id="b", price=90, new_client_order_id="b2")
        assert [(e["type"], e["price"], e["client_order_id"]) for e in amended["events"]] == [
            ("amended", 90, "b2")
        ]

        rejected = await client.call("amend", order_id=a, price=101)
        assert (rejected["type"], rejected["code"]) == ("rejected", "PRICE_OFF_TICK")
        assert rejected["message"] and rejected["events"][0]["code"] == "PRICE_OFF_TICK"
        rejected = await client.call("order", symbol=BTC, side="buy", qty=1, price=100, client_order_id="a")
        assert (rejected["type"], rejected["code"]) == ("rejected", "DUPLICATE_CLIENT_ORDER_ID")

        cancelled = await client.call("cancel", order_id=a)
        assert [(e["type"], e["order_id"]) for e in cancelled["events"]] == [("cancelled", a)]
        cancelled = await client.call("cancel", client_order_id="b2")
        assert [(e["type"], e["order_id"]) for e in cancelled["events"]] == [("cancelled", b)]
        rejected = await client.call("cancel", client_order_id="b")  # renamed by the amend
        assert (rejected["type"], rejected["code"]) == ("rejected", "ORDER_NOT_OPEN")
        rejected = await client.call("cancel", order_id=a)
        assert (rejected["type"], rejected["code"]) == ("rejected", "UNKNOWN_ORDER")
        assert_ws_error(await client.call("cancel"), "INVALID_REQUEST", _req(client))

        done = await client.call("cancel_all", symbol=BTC)
        assert [(e["type"], e["order_id"], e["reason"]) for e in done["events"]] == [
            ("cancelled", c, "CANCEL_ALL")
        ]
        left = (await srv.api("GET", "/v1/orders", account="alice")).body["orders"]
        assert [o["order_id"] for o in left] == [d]
        done = await client.call("cancel_all")
        assert [e["order_id"] for e in done["events"]] == [d]
        assert (await client.call("cancel_all"))["events"] == []
    finally:
        await client.ws.close()


@on_loop
async def test_execution_stream_gets_fills_of_a_resting_order(srv):
    alice = await connect(srv, "alice")
    try:
        assert (await alice.call("subscribe", channel="executions"))["type"] == "subscribed"
        resting = (await alice.order("sell", 100, 5))["events"][0]
        own = await alice.sync()
        assert [(m["type"], m["event"]["type"], m["event"]["order_id"]) for m in own] == [
            ("execution", "accepted", resting["order_id"])
        ]
        # Other accounts' business is not alice's.
        await srv.order("carol", "buy", 50, 1)
        await srv.order("bob", "sell", 200, 1)
        assert await alice.sync() == []

        await srv.order("bob", "buy", 100, 3)
        first = await alice.sync()
        assert [m["event"]["type"] for m in first] == ["trade"]
        trade = first[0]["event"]
        assert (trade["maker_order_id"], trade["maker_account"], trade["maker_leaves"]) == (
            resting["order_id"],
            "alice",
            2,
        )
        assert (trade["taker_account"], trade["price"], trade["qty"]) == ("bob", 100, 3)

        await srv.order("carol", "buy", 105, 4)
        second = await alice.sync()
        assert [m["event"]["type"] for m in second] == ["trade", "filled"]
        assert (second[0]["event"]["qty"], second[0]["event"]["maker_leaves"]) == (2, 0)
        assert second[1]["event"]["order_id"] == resting["order_id"]
        seqs = [m["event"]["seq"] for m in own + first + second]
        assert seqs == sorted(seqs)
        # The same fills as the order store has.
        view = await srv.get_order("alice", resting["order_id"])
        assert [f["trade_id"] for f in view["fills"]] == [trade["trade_id"], second[0]["event"]["trade_id"]]

        # One executions subscription per session, whatever symbol it names.
        again = await alice.call("subscribe", channel="executions", symbol=ETH)
        assert_ws_error(again, "ALREADY_SUBSCRIBED", _req(alice))
        await srv.order("bob", "sell", 200, 1, symbol=ETH)
        await alice.order("buy", 200, 1, symbol=ETH)
        assert [m["event"]["type"] for m in await alice.sync()] == ["accepted", "trade", "filled"]
        assert (await alice.call("unsubscribe", channel="executions"))["type"] == "unsubscribed"
        await alice.order("buy", 10, 1)
        assert await alice.sync() == []
    finally:
        await alice.ws.close()


# -- market data ----------------------------------------------------------------------------


def apply_l2(book: dict, update: dict) -> None:
    for side, price, qty in update["changes"]:
        levels = book["bids" if side == "bid" else "asks"]
        if qty:
            levels[price] = qty
        else:
            assert price in levels, (update, levels)
            del levels[price]


def rest_levels(rest_book: dict) -> dict:
    return {
        "bids": {p: q for p, q, _n in rest_book["bids"]},
        "asks": {p: q for p, q, _n in rest_book["asks"]},
    }


@on_loop
async def test_book_stream_updates_reproduce_the_rest_book(srv):
    await srv.order("carol", "buy", 90, 7)  # on the book before the subscription
    client = await connect(srv)
    try:
        assert (await client.call("subscribe", channel="book", symbol=BTC))["type"] == "subscribed"
        snapshot = await client.recv()
        assert snapshot["type"] == "l2snapshot" and snapshot["symbol"] == BTC
        assert (snapshot["bids"], snapshot["asks"]) == ([[90, 7]], [])
        book = {"bids": dict(map(tuple, snapshot["bids"])), "asks": dict(map(tuple, snapshot["asks"]))}

        ids = []
        for account, side, price, qty in (
            ("alice", "buy", 100, 5),
            ("alice", "buy", 100, 2),
            ("bob", "sell", 110, 4),
            ("bob", "sell", 115, 6),
            ("carol", "buy", 95, 1),
        ):
            ids.append((await srv.order(account, side, price, qty))["order"]["order_id"])
        await srv.order("alice", "sell", 300, 1, symbol=ETH)  # another symbol: no BTC update
        await srv.order("bob", "sell", 100, 6)  # trades 5+1 at 100
        await srv.api("PATCH", f"/v1/orders/{ids[3]}", account="bob", json={"price": 120})
        await srv.api("PATCH", f"/v1/orders/{ids[2]}", account="bob", json={"qty": 1})
        await srv.api("DELETE", f"/v1/orders/{ids[4]}", account="carol")
        await srv.order("carol", "buy", 0, 2, type="market", tif="ioc")  # takes 110x1 then 120x1
        await srv.api("DELETE", "/v1/orders", account="bob", params={"symbol": BTC})

        updates = await client.sync()
        assert updates and all(u["type"] == "l2update" and u["symbol"] == BTC for u in updates), updates
        assert [u["seq"] for u in updates] == list(
            range(snapshot["seq"] + 1, snapshot["seq"] + 1 + len(updates))
        )
        assert all(u["changes"] for u in updates)
        for update in updates:
            apply_l2(book, update)
        assert book == rest_levels(await srv.book(BTC, depth=50))
        assert book == {"bids": {100: 1, 90: 7}, "asks": {}}

        # A late subscriber's snapshot is the same book, at the stream's current seq.
        late = await connect(srv)
        try:
            await late.call("subscribe", channel="book", symbol=BTC)
            snap2 = await late.recv()
            assert snap2["seq"] == updates[-1]["seq"]
            assert (snap2["bids"], snap2["asks"]) == ([[100, 1], [90, 7]], [])
        finally:
            await late.ws.close()

        # After unsubscribing, no more updates.
        assert (await client.call("unsubscribe", channel="book", symbol=BTC))["type"] == "unsubscribed"
        await srv.order("alice", "buy", 50, 1)
        assert await client.sync() == []
    finally:
        await client.ws.close()


@on_loop
async def test_trades_subscription_and_unsubscribe(srv):
    client = await connect(srv)
    try:
        reply = await client.call("subscribe", channel="trades", symbol=BTC)
        assert (reply["type"], reply["channel"], reply["symbol"]) == ("subscribed", "trades", BTC)
        await srv.order("alice", "sell", 100, 2)
        await srv.order("alice", "sell", 105, 2)
        await srv.order("bob", "buy", 105, 3)
        await srv.order("bob", "buy", 10, 1, symbol=ETH)
        await srv.order("carol", "sell", 0, 1, symbol=ETH, type="market", tif="ioc")  # an ETH trade
        trades = await client.sync()
        assert [(t["type"], t["symbol"], t["price"], t["qty"], t["aggressor"]) for t in trades] == [
            ("trade", BTC, 100, 2, "buy"),
            ("trade", BTC, 105, 1, "buy"),
        ]
        rest = (await srv.api("GET", f"/v1/trades/{BTC}")).body["trades"]
        assert [t["trade_id"] for t in trades] == [t["trade_id"] for t in rest]
        assert [t["seq"] for t in trades] == [t["seq"] for t in rest]

        assert_ws_error(
            await client.call("subscribe", channel="trades", symbol=BTC), "ALREADY_SUBSCRIBED", _req(client)
        )
        assert_ws_error(
            await client.call("subscribe", channel="trades", symbol="NOPE"), "UNKNOWN_SYMBOL", _req(client)
        )
        assert_ws_error(await client.call("subscribe", channel="book"), "UNKNOWN_SYMBOL", _req(client))
        assert_ws_error(
            await client.call("subscribe", channel="candles", symbol=BTC), "INVALID_REQUEST", _req(client)
        )
        assert_ws_error(
            await client.call("unsubscribe", channel="book", symbol=BTC), "NOT_SUBSCRIBED", _req(client)
        )

        assert (await client.call("unsubscribe", channel="trades", symbol=BTC))["type"] == "unsubscribed"
        await srv.order("carol", "sell", 0, 1, type="market", tif="ioc")
        assert await client.sync() == []
        assert_ws_error(
            await client.call("unsubscribe", channel="trades", symbol=BTC), "NOT_SUBSCRIBED", _req(client)
        )
    finally:
        await client.ws.close()


# -- garbage in, the session goes on ---------------------------------------------------------

GARBAGE = [
    ("{not json", "MALFORMED_JSON"),
    ("", "MALFORMED_JSON"),
    ('{"op": "ping"', "MALFORMED_JSON"),
    ("[1, 2, 3]", "INVALID_REQUEST"),
    ('"ping"', "INVALID_REQUEST"),
    ("42", "INVALID_REQUEST"),
    ("null", "INVALID_REQUEST"),
    ("{}", "UNKNOWN_OP"),
    ('{"op": "fly"}', "UNKNOWN_OP"),
    ('{"op": 5}', "UNKNOWN_OP"),
    ('{"op": ["order"]}', "UNKNOWN_OP"),
    ('{"op": "order"}', "INVALID_REQUEST"),
    ('{"op": "order", "symbol": "BTC-USD", "side": "buy", "qty": "ten"}', "INVALID_REQUEST"),
    ('{"op": "order", "symbol": "BTC-USD", "side": "buy", "qty": 1, "price": 1.5}', "INVALID_REQUEST"),
    ('{"op": "order", "symbol": "BTC-USD", "side": "buy", "qty": 1, "account": "bob"}', "INVALID_REQUEST"),
    (
        '{"op": "order", "symbol": "BTC-USD", "side": "buy", "qty": 1, "price": 1' + "0" * 30 + "}",
        "INVALID_REQUEST",
    ),
    ('{"op": "cancel", "order_id": "1"}', "INVALID_REQUEST"),
    ('{"op": "cancel", "order_id": 99999999999999999999999999}', "INVALID_REQUEST"),
    ('{"op": "amend", "order_id": 1, "qty": -99999999999999999999999999}', "INVALID_REQUEST"),
    ('{"op": "cancel_all", "symbol": 5}', "INVALID_REQUEST"),
    ('{"op": "subscribe"}', "INVALID_REQUEST"),
    ('{"op": "subscribe", "channel": "book", "symbol": ["BTC-USD"]}', "INVALID_REQUEST"),
    ('{"op": "auth", "api_key": {"k": 1}}', "INVALID_REQUEST"),
]


@on_loop
async def test_garbage_is_answered_with_errors_and_the_session_keeps_working(srv):
    client = await connect(srv, "alice")
    try:
        before = srv.seq
        for text, code in GARBAGE:
            await client.ws.send_str(text)
            msg = await client.recv()
            assert (msg["type"], msg["code"]) == ("error", code), (text, msg)
        # Binary frames are read as JSON text too; bytes that are not UTF-8 are an error.
        for data in (b"\xff\xfe\x00", b'{"op": "\xc3\x28"}'):
            await client.ws.send_bytes(data)
            msg = await client.recv()
            assert (msg["type"], msg["code"]) == ("error", "MALFORMED_JSON"), (data, msg)
        await client.ws.send_bytes(b'{"op": "ping", "req_id": "bin"}')
        assert await client.recv() == {"type": "pong", "req_id": "bin"}
        assert srv.seq == before  # none of it reached the journal
        assert await client.sync() == []
        # The same session still trades.
        ack = await client.order("buy", 100, 1)
        assert ack["events"][0]["type"] == "accepted"
        assert srv.seq == before + 1
    finally:
        await client.ws.close()


def test_ws_rate_limit_per_session(make_exchange):
    srv = make_exchange(rate_limit=0.001, rate_burst=2)

    async def run():
        client = await connect(srv, "alice")
        try:
            await client.order("buy", 100, 1)
            await client.order("buy", 100, 1)
            before = srv.seq
            limited = await client.call("order", symbol=BTC, side="buy", qty=1, price=100)
            assert_ws_error(limited, "RATE_LIMITED", _req(client))
            assert_ws_error(await client.call("cancel_all"), "RATE_LIMITED", _req(client))
            assert srv.seq == before
            assert (await client.call("ping"))["type"] == "pong"  # not a trading request
            other = await connect(srv, "alice")  # a new session has its own bucket
            try:
                await other.order("buy", 100, 1)
            finally:
                await other.ws.close()
        finally:
            await client.ws.close()

    srv.call(run())


# -- hypothesis: random frames --------------------------------------------------------------

OPS = ["auth", "order", "cancel", "amend", "cancel_all", "subscribe", "unsubscribe", "ping"]
_symbol = mostly(st.sampled_from([BTC, ETH, "NOPE", ""]))
_clid = mostly(st.sampled_from(["", "a", "b"]), st.text(max_size=70))
_FIELDS = {
    "auth": {
        "api_key": mostly(st.sampled_from(["", "nope-nope-nope-nope", KEY["carol"][:-1]]), st.integers())
    },
    "order": {
        "symbol": _symbol,
        "side": mostly(st.sampled_from(["buy", "sell"])),
        "qty": mostly(st.integers(1, 20), big_ints),
        "price": mostly(st.sampled_from([0, 95, 100, 105]), big_ints),
        "type": mostly(st.sampled_from(["limit", "market"])),
        "tif": mostly(st.sampled_from(["gtc", "ioc", "fok"])),
        "client_order_id": _clid,
    },
    "cancel": {"order_id": mostly(st.integers(0, 30), big_ints), "client_order_id": _clid},
    "amend": {
        "order_id": mostly(st.integers(0, 30), big_ints),
        "client_order_id": _clid,
        "qty": mostly(st.integers(0, 20), big_ints),
        "price": mostly(st.sampled_from([0, 95, 100]), big_ints),
        "new_client_order_id": _clid,
    },
    "cancel_all": {"symbol": _symbol},
    "subscribe": {"channel": mostly(st.sampled_from(["book", "trades", "executions"])), "symbol": _symbol},
    "unsubscribe": {"channel": mostly(st.sampled_from(["book", "trades", "executions"])), "symbol": _symbol},
    "ping": {},
}


def _op_object(op: str) -> st.SearchStrategy:
    return st.fixed_dictionaries({"op": st.just(op)}, optional={**_FIELDS[op], "junk": json_values})


ws_objects = weighted(
    (9, st.sampled_from(OPS).flatmap(_op_object)),
    (1, st.fixed_dictionaries({"op": json_values}, optional={"symbol": _symbol, "junk": json_values})),
)
frames = weighted(
    (6, ws_objects.map(lambda obj: ("object", obj))),
    (1, json_values.map(lambda v: ("text", json.dumps(v)))),
    (1, st.text(max_size=200).map(lambda t: ("text", t))),
    (1, st.binary(max_size=100).map(lambda b: ("binary", b))),
    # raw bytes, often not UTF-8, inside a string of an otherwise plausible request
    (
        1,
        st.tuples(ws_objects, st.binary(min_size=1, max_size=6)).map(
            lambda t: ("binary", json.dumps({**t[0], "symbol": "@@"}).encode().replace(b"@@", t[1], 1))
        ),
    ),
)


@pytest.mark.parametrize("authenticated", [True, False], ids=["authenticated", "anonymous"])
def test_fuzz_random_frames_never_end_the_session(srv, authenticated):
    state: dict = {}

    async def open_session():
        state["client"] = await connect(srv, "alice" if authenticated else None)
        state["orders"] = 0

    async def one(kind: str, payload) -> None:
        client: WsClient = state["client"]
        req_id = f"fz-{uuid.uuid4().hex}"
        if kind == "binary":
            await client.ws.send_bytes(payload)
            text = payload
        else:
            text = json.dumps({**payload, "req_id": req_id}) if kind == "object" else payload
            await client.ws.send_str(text)
        # A marker behind it: a ping, or when trading a cancel through the commit loop (the
        # replies to orders come from there), so every reply to the frame is in by then.
        marker = await client.send("cancel", order_id=10**12) if authenticated else await client.send("ping")
        await client.reply(marker)
        seen, client.pushed = client.pushed, []
        # Exactly one reply per frame, whatever it held (pushes may come besides).
        replies = [m for m in seen if m["type"] in REPLIES]
        assert len(replies) == 1, (text, seen)
        if kind == "object":
            assert replies[0]["req_id"] == req_id, (text, seen)
        assert not client.ws.closed

    srv.call(open_session())
    try:

        @settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(frame=frames)
        def check(frame):
            srv.call(one(*frame))

        check()

        async def still_fine():
            client: WsClient = state["client"]
            if not authenticated:
                assert (await client.call("auth", api_key=KEY["alice"]))["type"] == "authenticated"
            await client.call("unsubscribe", channel="executions")  # may or may not be subscribed
            ack = await client.order("buy", 5, 1, client_order_id=f"after-{uuid.uuid4().hex[:8]}")
            assert ack["events"][0]["type"] == "accepted"
            reply = await srv.api("GET", "/readyz")
            assert reply.status == 200, reply
            fresh = await connect(srv, "bob")
            try:
                assert (await fresh.order("sell", 10_000, 1))["events"][0]["type"] == "accepted"
            finally:
                await fresh.ws.close()

        srv.call(still_fine())
    finally:
        if "client" in state:
            srv.call(state["client"].ws.close())
