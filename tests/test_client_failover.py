"""Clients that follow the leader, across a SIGKILL of it, on real `loom run --cluster` nodes
and a real NATS cluster: the binary client, the REST client and `loom load --nodes`. Each
keeps placing orders, resends what it got no answer for with the same client order id, and
ends with every order accepted exactly once (checked against a replay of the replicated
journal: no client order id accepted twice, and the new leader's state is that replay) or
refused definitively."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter

import pytest
from natsproc import unique_stream

from engine.client.binary import LeaderFollowingBinaryClient
from engine.client.ledger import Answer
from engine.client.rest import RestClient
from engine.cluster.drill import TRADER_KEY, NodeProcess, http, in_sync, wait_for
from engine.cluster.journal import NatsJournal
from engine.core.domain import Side
from engine.core.events import OrderAccepted
from engine.core.matcher import MatchingEngine
from engine.core.state import state_hash
from engine.load.spawn import LOAD_ACCOUNTS

LOAD_KEY = next(iter(LOAD_ACCOUNTS))
EXTRA = f"""
[[instruments]]
symbol = "LOAD-USD"
tick_size = 1
lot_size = 1
min_qty = 1
max_qty = 1000000

[[accounts]]
name = "{LOAD_ACCOUNTS[LOAD_KEY]}"
api_key = "{LOAD_KEY}"
"""


@pytest.fixture
def pair(nats_cluster, tmp_path):
    """a leads, b follows; REST, FIX and binary listeners on both."""
    stream, _ = unique_stream()
    nodes = [NodeProcess(n, nats_cluster.urls, tmp_path, stream, EXTRA, listeners=True) for n in ("a", "b")]
    try:
        nodes[0].start()
        wait_for("a to lead", lambda: nodes[0].status().get("role") == "leader")
        nodes[1].start()
        wait_for("b to follow a", lambda: in_sync(nodes) and nodes[1].status().get("leader") == "a")
        yield nodes, stream
    finally:
        for node in nodes:
            node.stop()


def accepted_in_stream(link, stream: str, survivor: NodeProcess) -> Counter:
    """How many times each client order id was accepted, by a replay of the whole stream;
    the surviving leader's state must be exactly that replay."""
    wait_for("the survivor to lead", lambda: survivor.status().get("role") == "leader")
    verified = http("GET", survivor.base + "/v1/admin/cluster?verify=1")[1]
    engine = MatchingEngine([])
    accepted: Counter = Counter()
    for cmd in NatsJournal(link, stream, f"loom.{stream.lower()}").read():
        for ev in engine.apply(cmd):
            if type(ev) is OrderAccepted:
                accepted[ev.client_order_id] += 1
    assert engine.last_seq == verified["applied_seq"]
    assert state_hash(engine) == verified["state_hash"]
    return accepted


def _binary(node: NodeProcess) -> tuple[str, int]:
    return ("127.0.0.1", node.ports["binary"])


def test_binary_client_keeps_placing_orders_across_a_sigkill_of_the_leader(pair, nats_link):
    (a, b), stream = pair

    async def scenario() -> LeaderFollowingBinaryClient:
        client = LeaderFollowingBinaryClient([_binary(b), _binary(a)], TRADER_KEY)  # the standby first
        await client.start()
        assert client.endpoint == _binary(a)  # it followed b's NotLeader hint
        ref = 0

        async def place_until(enough) -> None:
            nonlocal ref
            while not enough():
                for _ in range(20):  # 20 orders every 5 ms: many in flight at the kill
                    ref += 1
                    client.new_order(ref, "BTC-USD", Side.BUY, price=1000 + ref % 100, qty=1)
                await asyncio.sleep(0.005)

        await place_until(lambda: client.ledger.accepted >= 300)
        a.kill()
        acked_at_kill = client.ledger.accepted + client.ledger.duplicates
        await place_until(lambda: client.ledger.accepted + client.ledger.duplicates >= acked_at_kill + 300)
        assert await client.settled(30), client.ledger.figures()
        await client.close()
        return client

    client = asyncio.run(scenario())
    figures = client.ledger.figures()
    print(f"\nbinary client across a SIGKILL of the leader: {figures}, connections {client.connects}")
    assert client.endpoint == _binary(b) and client.connects >= 2
    assert figures["unresolved"] == 0 and figures["refused_definitively"] == 0
    assert figures["acked"] == figures["orders"] == len(client.ledger.entries)
    accepted = accepted_in_stream(nats_link, stream, b)
    ours = {cid: accepted[cid] for cid in client.ledger.entries}
    assert all(n == 1 for n in ours.values()), {c: n for c, n in ours.items() if n != 1}
    duplicates = [e for e in client.ledger.entries.values() if e.answer is Answer.DUPLICATE]
    assert all(e.sends > 1 for e in duplicates)  # only a resend can find its order placed


def test_rest_client_keeps_placing_orders_across_a_sigkill_of_the_leader(pair, nats_link):
    (a, b), stream = pair

    async def scenario() -> tuple[RestClient, list]:
        outcomes: list = []
        killed = asyncio.Event()
        after_kill = [0]

        async def worker(client: RestClient, w: int) -> None:
            i = 0
            while not (killed.is_set() and after_kill[0] >= 100):
                i += 1
                order = {"symbol": "BTC-USD", "side": "buy", "qty": 1, "price": 1000 + i % 100}
                outcome = await client.place({**order, "client_order_id": f"w{w}-{i}"})
                outcomes.append(outcome)
                if killed.is_set():
                    after_kill[0] += 1

        async with RestClient([b.base, a.base], TRADER_KEY) as client:
            workers = [asyncio.create_task(worker(client, w)) for w in range(8)]
            while len(outcomes) < 100:
                await asyncio.sleep(0.01)
            a.kill()
            killed.set()
            await asyncio.gather(*workers)
        return client, outcomes

    client, outcomes = asyncio.run(scenario())
    figures = client.ledger.figures()
    print(f"\nREST client across a SIGKILL of the leader: {figures}")
    assert client.leader == b.base
    assert figures["unresolved"] == 0 and figures["refused_definitively"] == 0
    assert {o.answer for o in outcomes} <= {Answer.ACCEPTED, Answer.DUPLICATE}
    accepted = accepted_in_stream(nats_link, stream, b)
    assert all(accepted[o.client_order_id] == 1 for o in outcomes), [
        (o, accepted[o.client_order_id]) for o in outcomes if accepted[o.client_order_id] != 1
    ]
    assert all(o.order_id > 0 for o in outcomes if o.answer is Answer.ACCEPTED)


def test_loom_load_across_a_sigkill_reports_resent_duplicates_and_the_ack_gap(pair, nats_link):
    (a, b), stream = pair
    nodes = ",".join(f"127.0.0.1:{n.ports['binary']}" for n in (a, b))
    argv = [sys.executable, "-m", "engine.cli", "load", "--protocol", "binary", "--nodes", nodes]
    argv += ["--rate", "400", "--duration", "6", "--api-key", LOAD_KEY, "--json", "--drain", "30"]
    load = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for("the load to run a while", lambda: a.status().get("applied_seq", 0) >= 600)
        a.kill()
        out, err = load.communicate(timeout=120)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    assert load.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    f = report["failover"]
    print(f"\nloom load --nodes across a SIGKILL of the leader: {f}")
    assert f["unresolved"] == 0 and report["errors"] == 0
    assert f["orders"] == report["sent"] == 2400
    assert f["acked"] + f["refused_definitively"] == f["orders"]
    assert f["connects"] >= 2 and f["max_ack_gap_ms"] > 300  # the failover shows as a gap
    assert {"resent", "duplicates_resolved"} <= set(f)
    accepted = accepted_in_stream(nats_link, stream, b)
    load_cids = [cid for cid in accepted if cid.isdecimal()]
    assert all(accepted[cid] == 1 for cid in load_cids)
    assert len(load_cids) == f["acked"]


def test_a_resent_order_that_had_landed_settles_as_placed_once(pair, nats_link):
    """The duplicate path, made deterministic: an order placed by an earlier run whose answer
    was lost (here: placed by a plain client first) is resumed by the leader-following
    clients; the DUPLICATE_CLIENT_ORDER_ID answer settles it as placed, and nothing is placed
    twice."""
    from engine.gateways.binary import protocol as p
    from engine.gateways.binary.client import BinaryClient

    (a, b), stream = pair
    frame = p.encode_new_order(4242, "BTC-USD", Side.BUY, 2, 1, False, 1, 1000, 1)

    async def binary() -> LeaderFollowingBinaryClient:
        plain = await BinaryClient.connect(*_binary(a), TRADER_KEY)
        plain.send(frame)
        assert type(await plain.recv(timeout=5)) is p.Accepted
        await plain.aclose()
        client = LeaderFollowingBinaryClient([_binary(b), _binary(a)], TRADER_KEY)
        await client.start()
        client.resume([("4242", frame)])
        assert await client.settled(10)
        await client.close()
        return client

    client = asyncio.run(binary())
    entry = client.ledger.entries["4242"]
    assert entry.answer is Answer.DUPLICATE and entry.code == "DUPLICATE_CLIENT_ORDER_ID"
    assert client.ledger.figures()["duplicates_resolved"] == 1 and client.ledger.resent == 1

    order = {"symbol": "BTC-USD", "side": "buy", "qty": 1, "price": 1000, "client_order_id": "r1"}
    status, placed = http("POST", a.base + "/v1/orders", order, key=TRADER_KEY)
    assert status == 201

    async def rest():
        async with RestClient([b.base, a.base], TRADER_KEY) as client:
            return await client.place(order, sent_before=True)

    outcome = asyncio.run(rest())
    assert outcome.answer is Answer.DUPLICATE and outcome.code == "DUPLICATE_CLIENT_ORDER_ID"
    # The order id comes from GET /v1/orders/by-client-id/{id} where the node has it.
    lookup_status, _ = http("GET", a.base + "/v1/orders/by-client-id/r1", key=TRADER_KEY)
    assert outcome.order_id == (placed["order"]["order_id"] if lookup_status == 200 else 0)
    accepted = accepted_in_stream(nats_link, stream, a)
    assert accepted["4242"] == 1 and accepted["r1"] == 1
