"""Every NOT_LEADER answer names the leader's endpoint for its own protocol (REST and
WebSocket: the URL; FIX: host:port in the reject's Text; binary: a NotLeader frame, version 2
sessions, reason 604), on real `loom run --cluster` nodes and a real NATS cluster. A fenced
ex-leader never names itself, and an answer given while nobody leads says "election in
progress" with a retry-after (in-process cluster members, to hold the lease still)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from natsproc import unique_stream
from waiting import wait_until_async

from engine.app import start_exchange
from engine.cluster.drill import TRADER_KEY, NodeProcess, in_sync, wait_for
from engine.cluster.member import Role
from engine.config import Config
from engine.core.commands import NewOrder
from engine.core.domain import Instrument, OrderType, RejectReason, Side
from engine.core.events import OrderAccepted
from engine.gateways.binary import protocol as p
from engine.gateways.binary.client import BinaryClient
from engine.gateways.fix.codec import FixMessage, FixParser, encode_message, utc_timestamp
from engine.service import NotLeader

ORDER = {"symbol": "BTC-USD", "side": "buy", "qty": 1, "price": 5, "client_order_id": "h1"}


@pytest.fixture(scope="module")
def pair(nats_cluster, tmp_path_factory):
    """a leads, b follows; both with REST, FIX and binary listeners."""
    workdir = tmp_path_factory.mktemp("hints")
    stream, _ = unique_stream()
    nodes = [NodeProcess(n, nats_cluster.urls, workdir, stream, listeners=True) for n in ("a", "b")]
    try:
        nodes[0].start()
        wait_for("a to lead", lambda: nodes[0].status().get("role") == "leader")
        nodes[1].start()
        wait_for("b to follow a", lambda: in_sync(nodes) and nodes[1].status().get("leader") == "a")
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def endpoint(node: NodeProcess, protocol: str) -> str:
    return f"127.0.0.1:{node.ports[protocol]}"


def test_rest_and_websocket_name_the_leaders_url(pair):
    a, b = pair

    async def scenario() -> None:
        async with aiohttp.ClientSession(headers={"X-API-Key": TRADER_KEY}) as http:
            async with http.post(b.base + "/v1/orders", json=ORDER) as resp:
                body = await resp.json()
                assert resp.status == 503 and body["error"]["code"] == "NOT_LEADER", body
                assert resp.headers["Retry-After"] == "1"
            err = body["error"]
            assert err["leader"] == {
                "node": "a",
                "epoch": err["leader"]["epoch"],
                "url": a.base,
                "fix": endpoint(a, "fix"),
                "binary": endpoint(a, "binary"),
            }
            assert err["leader"]["epoch"] > 0 and err["election"] is False and err["retry_after_s"] == 0
            assert f"leader is node a at {a.base}" in err["message"]
            async with http.ws_connect(b.base + "/v1/ws") as ws:
                await ws.send_json({"op": "auth", "req_id": 1, "api_key": TRADER_KEY})
                assert (await ws.receive_json(timeout=5))["type"] == "authenticated"
                await ws.send_json({"op": "order", "req_id": 2, **ORDER})
                answer = await ws.receive_json(timeout=5)
            assert answer["type"] == "error" and answer["code"] == "NOT_LEADER", answer
            assert answer["req_id"] == 2 and answer["leader"]["url"] == a.base
            assert answer["leader"]["binary"] == endpoint(a, "binary")

    asyncio.run(scenario())


def test_binary_names_the_leaders_binary_endpoint(pair):
    a, b = pair

    async def scenario() -> None:
        hint = p.NotLeader(0, 0, a.ports["binary"], "127.0.0.1", "a")
        client = await BinaryClient.connect("127.0.0.1", b.ports["binary"], TRADER_KEY)
        try:
            assert client.login_ack.version == 2
            first = await client.recv(timeout=5)  # at login: where to go
            assert (
                first._replace(epoch=0) == hint
                and first.epoch > 0
                and first.endpoint
                == (
                    "127.0.0.1",
                    a.ports["binary"],
                )
            )
            client.new_order(11, "BTC-USD", Side.BUY, price=5, qty=1)
            frames = [await client.recv(timeout=5), await client.recv(timeout=5)]
        finally:
            await client.aclose()
        assert frames[0]._replace(epoch=0) == hint
        assert frames[1] == p.Rejected(0, 0, 1, p.GatewayRejectReason.NOT_LEADER, 11, 0)

        # A version 1 client sees what it always saw: reason 602, no frame it cannot read.
        old = await BinaryClient.connect("127.0.0.1", b.ports["binary"], TRADER_KEY, version=1)
        try:
            assert old.login_ack.version == 1
            old.new_order(12, "BTC-USD", Side.BUY, price=5, qty=1)
            frame = await old.recv(timeout=5)
        finally:
            await old.aclose()
        assert frame == p.Rejected(0, 0, 1, p.GatewayRejectReason.SERVICE_UNAVAILABLE, 12, 0)

    asyncio.run(scenario())


async def _fix_exchange(port: int, order: list) -> FixMessage:
    """Log on to a FIX listener, send one NewOrderSingle, return the ExecutionReport."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    parser = FixParser()
    seqs = iter(range(1, 10))

    def send(msg_type: str, body) -> None:
        writer.write(encode_message(msg_type, "HINTS", "LOOM", next(seqs), utc_timestamp(time.time()), body))

    async def receive(msg_type: str) -> FixMessage:
        async with asyncio.timeout(5):
            while True:
                for event in parser.events():
                    if isinstance(event, FixMessage) and event.msg_type == msg_type:
                        return event
                data = await reader.read(65536)
                assert data, "connection closed"
                parser.receive_data(data)

    try:
        send("A", [(98, 0), (108, 30), (141, "Y"), (553, "alice"), (554, TRADER_KEY)])
        await receive("A")
        send("D", order)
        return await receive("8")
    finally:
        writer.close()


def test_fix_reject_names_the_leaders_fix_endpoint(pair):
    a, b = pair
    order = [(11, "f1"), (55, "BTC-USD"), (54, "1"), (60, utc_timestamp(time.time())), (38, 1), (40, "2")]
    order += [(44, 5), (59, "1")]
    report = asyncio.run(_fix_exchange(b.ports["fix"], order))
    assert report.get(150) == "8" and report.get(11) == "f1"  # ExecType Rejected
    text = report.get(58)
    assert text.startswith("not processed: NOT_LEADER: this node (b) is a standby"), text
    assert f"the leader is node a at {endpoint(a, 'fix')}" in text
    assert a.base not in text


# -- in-process members: a fenced ex-leader, an election -------------------------------------

SYMBOL = "BTC-USD"


def _order(clid: str) -> NewOrder:
    return NewOrder("alice", clid, SYMBOL, int(Side.BUY), int(OrderType.LIMIT), 100, 1)


def _config(tmp_path, node_id: str, urls: list[str], stream: str) -> Config:
    return Config(
        data_dir=tmp_path / node_id,
        http_port=0,
        fix_port=0,
        binary_port=0,
        admin_key="admin-key-0000000000",
        api_keys={"alice-key-0000000000": "alice"},
        instruments=[Instrument(SYMBOL, tick_size=1, lot_size=1)],
        cluster=urls,
        node_id=node_id,
        cluster_stream=stream,
        lease_ttl=0.6,
    )


async def _refusal(running) -> NotLeader:
    try:
        await running.service.submit_one(_order(f"probe-{time.monotonic_ns()}"))
    except NotLeader as exc:
        return exc
    raise AssertionError("the node accepted an order")


def test_a_fenced_ex_leader_never_names_itself_and_an_election_says_so(nats_cluster, tmp_path):
    stream, _ = unique_stream()

    async def scenario() -> None:
        a = await start_exchange(_config(tmp_path, "a", nats_cluster.urls, stream))
        b = None
        try:
            await wait_until_async("a leads", lambda: a.cluster.role == Role.LEADER)
            b = await start_exchange(_config(tmp_path, "b", nats_cluster.urls, stream))
            await wait_until_async("b sees a lead", lambda: b.cluster.lease.view.holder == "a")
            assert (await _refusal(b)).leader["binary"] == f"127.0.0.1:{a.ports['binary']}"

            # a pauses (its lease loop stops); b takes over; a's next batch is fenced.
            a.cluster._background[0].cancel()
            await wait_until_async("b leads", lambda: b.cluster.role == Role.LEADER)
            events = await a.service.submit_one(_order("a2"))
            assert events[0].reason == RejectReason.JOURNAL_WRITE_FAILED
            await wait_until_async("a is demoted", lambda: a.cluster.role == Role.STANDBY)
            # a still holds its stale view of the lease (its loop is paused): it must not
            # send anyone to itself.
            assert a.cluster.lease.view.holder == "a"
            refusal = await _refusal(a)
            assert refusal.election and refusal.leader["node"] == "" and refusal.retry_after_s > 0
            assert "election in progress" in str(refusal) and f":{a.ports['http']}" not in str(refusal)
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{a.ports['http']}/v1/orders"
                body = {"symbol": SYMBOL, "side": "buy", "qty": 1, "price": 100}
                async with http.post(url, json=body, headers={"X-API-Key": "alice-key-0000000000"}) as resp:
                    answer = await resp.json()
                    assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1
            assert answer["error"]["election"] is True and answer["error"]["retry_after_s"] > 0
            assert answer["error"]["leader"]["node"] == ""
            # Its loop runs again: it sees b lead and names b.
            a.cluster._background[0] = a.cluster.link.submit(a.cluster.lease.run())
            await wait_until_async("a sees b", lambda: a.cluster.lease.view.holder == "b")
            assert (await _refusal(a)).leader["url"] == f"http://127.0.0.1:{b.ports['http']}"

            # An election: b stops renewing and a may not take over (as if still recovering):
            # once b's lease is a TTL old, a says an election is due and when to retry.
            a.cluster.lease.eligible = False
            b.cluster._background[0].cancel()
            await wait_until_async("b's lease to lapse", lambda: not a.cluster.lease.holder_live())
            refusal = await _refusal(a)
            assert refusal.election and 0 < refusal.retry_after_s <= 2 * a.cluster.lease.ttl
            assert "election in progress" in refusal.text("fix")
            client = await BinaryClient.connect("127.0.0.1", a.ports["binary"], "alice-key-0000000000")
            try:
                hint = await client.recv(timeout=5)
            finally:
                await client.aclose()
            assert type(hint) is p.NotLeader and hint.endpoint is None and hint.retry_after_ms > 0
            assert hint.node == ""
        finally:
            for running in (b, a):
                if running is not None:
                    await running.stop()

    asyncio.run(scenario())


def test_an_accepting_leader_answers_orders(nats_cluster, tmp_path):
    """The refusal is set from construction: a node that leads still accepts (the listeners
    are bound before the member starts, so the lease can advertise them)."""
    stream, _ = unique_stream()

    async def scenario() -> None:
        a = await start_exchange(_config(tmp_path, "a", nats_cluster.urls, stream))
        try:
            await wait_until_async("a leads", lambda: a.cluster.role == Role.LEADER)
            assert type((await a.service.submit_one(_order("ok")))[0]) is OrderAccepted
            assert a.cluster.lease.view.binary == f"127.0.0.1:{a.ports['binary']}"
            assert a.cluster.lease.view.fix == f"127.0.0.1:{a.ports['fix']}"
        finally:
            await a.stop()

    asyncio.run(scenario())
