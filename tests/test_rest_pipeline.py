"""A REST connection's pipelined new orders are submitted together (engine.gateways.http_pipeline):
they share a commit batch instead of each awaiting the one before it, every answer still comes
back in request order, anything that is not a new order still waits its turn, and a client
that leaves mid-pipeline leaves no error behind.

Against a real `loom run` subprocess over a raw socket (an HTTP client library would not
pipeline); no fixed sleeps: the reader waits for every answer. The batch an order went into
is read from its trace (`stages.batch_first_seq`)."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request

import pytest
from test_rest_pipeline_shed import order, read_answers

from engine.gateways.http_shed import MAX_ORDERS_IN_FLIGHT
from engine.load.spawn import LOAD_ACCOUNTS, spawned_exchange

KEY = next(iter(LOAD_ACCOUNTS))
N = MAX_ORDERS_IN_FLIGHT  # all admitted: none refused


@pytest.fixture(scope="module")
def node():
    with spawned_exchange() as info:
        yield info


def request(node, method: str, path: str) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"http://{node['host']}:{node['http']}{path}", method=method, headers={"X-API-Key": KEY}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, json.loads(r.read())


def ask(k: int, method: str, path: str, close: bool = False) -> bytes:
    head = [
        f"{method} {path} HTTP/1.1",
        "Host: loom",
        f"X-API-Key: {KEY}",
        f"traceparent: 00-{k + 1:032x}-00000000000000aa-01",
    ]
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode()


def pipeline(node, requests: list[bytes]) -> list[tuple[int, dict[str, str], dict]]:
    with socket.create_connection((node["host"], node["http"]), timeout=30) as sock:
        sock.sendall(b"".join(requests))
        answers, _ = read_answers(sock, len(requests))
    return answers


def test_pipelined_orders_share_a_commit_batch_and_are_answered_in_order(node):
    first = 20_000
    answers = pipeline(node, [order(first + k) for k in range(N - 1)] + [order(first + N - 1, close=True)])
    ids = []
    for k, (status, headers, body) in enumerate(answers):
        assert status == 201, (k, status, body)
        assert body["order"]["client_order_id"] == f"p{first + k}", (k, body)  # answer k is request k's
        assert headers["x-trace-id"] == f"{first + k + 1:032x}"
        ids.append(body["order"]["order_id"])
    assert ids == sorted(ids), "sequenced in the order sent"
    batches = set()
    for oid in ids:
        status, trace = request(node, "GET", f"/v1/orders/{oid}/trace")
        assert status == 200 and trace["stages"] is not None, trace
        batches.add(trace["stages"]["batch_first_seq"])
    # One read brought all N; handled one at a time they went into N batches (one commit
    # cycle each). Two at most: the first may be taken alone if the loop was mid-batch.
    assert len(batches) <= 2, f"{N} pipelined orders went into {len(batches)} commit batches"


def test_a_request_that_is_not_a_new_order_waits_for_the_orders_before_it(node):
    """Orders, then a cancel-all, then orders, then a read, pipelined: the cancel sees every
    order before it (and none after it); the read sees exactly the orders after the cancel."""
    first = 30_000
    before = [order(first + k) for k in range(5)]
    after = [order(first + 10 + k) for k in range(3)]
    cancel = ask(first + 5, "DELETE", "/v1/orders?symbol=LOAD-USD")
    read = ask(first + 6, "GET", "/v1/orders", close=True)
    answers = pipeline(node, [*before, cancel, *after, read])
    assert [status for status, _, _ in answers] == [201] * 5 + [200] + [201] * 3 + [200], answers
    placed = [body["order"]["order_id"] for _, _, body in answers[:5]]
    cancelled = {e["order_id"] for e in answers[5][2]["events"] if e["type"] == "cancelled"}
    assert set(placed) <= cancelled, (placed, answers[5][2])
    later = [body["order"]["order_id"] for _, _, body in answers[6:9]]
    assert not cancelled & set(later), "an order sent after the cancel was cancelled by it"
    open_ids = {o["order_id"] for o in answers[9][2]["orders"]}
    assert set(later) <= open_ids and not open_ids & set(placed), answers[9][2]


def test_a_cancel_pipelined_behind_its_order_sees_it_and_not_a_refused_one(node):
    """Orders past the bound, then a cancel (by client order id) of an admitted one and of a
    refused one, pipelined: the cancel of the admitted order finds it (it was submitted
    before the cancel was handled), the refused one was never placed."""
    first, n = 60_000, 3 * MAX_ORDERS_IN_FLIGHT
    orders = [order(first + k) for k in range(n)]
    admitted, refused = f"p{first + 3}", f"p{first + n - 1}"
    cancels = [
        ask(first + n, "DELETE", f"/v1/orders/by-client-id/{admitted}"),
        ask(first + n + 1, "DELETE", f"/v1/orders/by-client-id/{refused}", close=True),
    ]
    answers = pipeline(node, [*orders, *cancels])
    assert answers[3][0] == 201 and answers[n - 1][0] == 503, (answers[3], answers[n - 1])
    status, _, body = answers[n]
    assert status == 200, body
    assert [e["type"] for e in body["events"]] == ["cancelled"], body
    assert body["events"][0]["order_id"] == answers[3][2]["order"]["order_id"], body
    status, _, body = answers[n + 1]
    assert (status, body["error"]["code"]) == (404, "UNKNOWN_ORDER"), body


def test_orders_written_one_at_a_time_while_others_are_answered_are_each_handled_once(node):
    """A client writing an order a millisecond on one connection, reading its answers as they
    come: reads land while the node is between answers (its loop has taken the next started
    order off the queue and not yet handled it). Every order is handled once and answered in
    order: one started a second time read its body again, found it empty and was answered
    400 INVALID_REQUEST ("missing required field `symbol`")."""
    first, n = 70_000, 1000

    async def run() -> list[tuple[int, dict]]:
        reader, writer = await asyncio.open_connection(node["host"], node["http"])

        async def send() -> None:
            for k in range(n):
                writer.write(order(first + k))
                await asyncio.sleep(0.001)  # pacing, as a client placing orders one by one

        sender = asyncio.create_task(send())
        answers = []
        for _ in range(n):
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            size = int(head.lower().split("content-length:")[1].split("\r\n")[0])
            answers.append((int(head[9:12]), json.loads(await reader.readexactly(size))))
        await sender
        writer.close()
        return answers

    answers = asyncio.run(run())
    odd = [(k, status, body) for k, (status, body) in enumerate(answers) if status not in (201, 503)]
    assert not odd, odd[:3]
    for k, (status, body) in enumerate(answers):
        if status == 201:
            assert body["order"]["client_order_id"] == f"p{first + k}", (k, body)


def test_a_client_that_leaves_mid_pipeline_leaves_no_error_and_the_node_serves_on(node):
    seen = len(node["log"])
    for round_ in range(5):
        with socket.create_connection((node["host"], node["http"]), timeout=30) as sock:
            sock.sendall(b"".join(order(40_000 + 100 * round_ + k) for k in range(MAX_ORDERS_IN_FLIGHT)))
            sock.recv(1)  # the first answer is on its way: the rest are started or queued
    status, body = request(node, "GET", "/v1/orders?symbol=LOAD-USD")
    assert status == 200 and "orders" in body
    answers = pipeline(node, [order(49_999, close=True)])
    assert answers[0][0] == 201, answers
    lines = node["log"][seen:]
    assert not [line for line in lines if "Traceback" in line or "never retrieved" in line], "".join(lines)
