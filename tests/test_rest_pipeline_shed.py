"""The cheap refusal of pipelined REST orders (engine.gateways.http_shed.PipelineShed): a client
pipelining far past the bound on one connection gets every request answered once, in order,
at most MAX_ORDERS_IN_FLIGHT of its orders in flight (engine.gateways.http_pipeline), the excess
refused as it is read, while the admitted ones are in flight, with 503 OVERLOADED from
pre-encoded bytes that still carry Retry-After and the request's own X-Trace-Id; a request
without a key and a closing request go the ordinary way (the middleware's rule, or its 401).

Against a real `loom run` subprocess over a raw socket (an HTTP client library would not
pipeline); no fixed sleeps: the reader waits for every answer."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections import Counter

import pytest

from engine.gateways.http_shed import IN_FLIGHT_TEXT, MAX_ORDERS_IN_FLIGHT
from engine.load.spawn import LOAD_ACCOUNTS, LOAD_ADMIN_KEY, spawned_exchange

KEY = next(iter(LOAD_ACCOUNTS))
N = 600  # far past MAX_ORDERS_IN_FLIGHT: one send holds hundreds of requests
KEYLESS = 300  # the index of the request sent without a key


@pytest.fixture(scope="module")
def node():
    with spawned_exchange() as info:
        yield info


def trace_id(k: int) -> str:
    return f"{k + 1:032x}"


def order(k: int, key: str | None = KEY, close: bool = False) -> bytes:
    body = json.dumps(
        {
            "symbol": "LOAD-USD",
            "side": "buy",
            "price": 100,
            "qty": 1,
            "tif": "gtc",
            "client_order_id": f"p{k}",
        }
    ).encode()
    head = [
        "POST /v1/orders HTTP/1.1",
        "Host: loom",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        f"traceparent: 00-{trace_id(k)}-00000000000000aa-01",
        *([f"X-API-Key: {key}"] if key else []),
        *(["Connection: close"] if close else []),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def read_answers(
    sock: socket.socket, n: int, until_eof: bool = True
) -> tuple[list[tuple[int, dict[str, str], dict]], bytes]:
    """n answers (status, lower-cased headers, JSON body), then (until_eof) whatever follows
    until the node closes the connection."""
    buf, answers = b"", []
    while len(answers) < n:
        chunk = sock.recv(1 << 16)
        assert chunk, f"connection closed after {len(answers)} of {n} answers"
        buf += chunk
        while (end := buf.find(b"\r\n\r\n")) >= 0:
            lines = buf[:end].decode().split("\r\n")
            headers = dict((k.lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:]))
            size = int(headers["content-length"])
            if len(buf) < end + 4 + size:
                break
            answers.append((int(lines[0].split()[1]), headers, json.loads(buf[end + 4 : end + 4 + size])))
            buf = buf[end + 4 + size :]
    while until_eof and (chunk := sock.recv(1 << 16)):
        buf += chunk
    return answers, buf


def refusals(node) -> float:
    request = urllib.request.Request(
        f"http://{node['host']}:{node['http']}/metrics", headers={"X-API-Key": LOAD_ADMIN_KEY}
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith('loom_overload_refusals_total{protocol="rest"}'):
            return float(line.split()[-1])
    return 0.0


def first_seq(node, order_id: int) -> int:
    """The first seq of the commit batch the order went into (its trace's stages)."""
    request = urllib.request.Request(
        f"http://{node['host']}:{node['http']}/v1/orders/{order_id}/trace", headers={"X-API-Key": KEY}
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())["stages"]["batch_first_seq"]


def test_a_deep_pipeline_is_answered_in_order_with_cheap_overloaded_refusals(node):
    before = refusals(node)
    requests = [order(k, key=None if k == KEYLESS else KEY) for k in range(N - 1)]
    requests.append(order(N - 1, close=True))  # the last asks to close: answered, then closed
    with socket.create_connection((node["host"], node["http"]), timeout=30) as sock:
        sock.sendall(b"".join(requests))
        answers, rest = read_answers(sock, N)
    assert rest == b"", "nothing after the last answer: the connection closed as asked"
    refused = 0
    for k, (status, headers, body) in enumerate(answers):
        if k == KEYLESS:  # no key: never admitted (refused the ordinary way, or 401)
            assert status in (401, 503) and "client_order_id" not in body, (status, body)
            refused += status == 503
            continue
        assert headers.get("x-trace-id") == trace_id(k), (k, headers)  # answer k is request k's
        if status == 503:
            refused += 1
            assert body["error"]["code"] == "OVERLOADED" and headers["retry-after"] == "1", body
            assert IN_FLIGHT_TEXT in body["error"]["message"], body
            assert headers["content-type"] == "application/json"
        else:
            assert status == 201 and body.get("order", body).get("client_order_id") == f"p{k}", (
                k,
                status,
                body,
            )
    status, _, _ = answers[-1]
    assert status == 201, "the last request (it asks to close) is not refused from bytes"
    assert refused > 0, "the pipeline was not shed"
    assert refusals(node) - before == refused  # every refusal counted in loom_overload_refusals
    # The rule: at most MAX_ORDERS_IN_FLIGHT orders in flight, so no commit batch holds more of them
    # (a batch's orders were all in flight together; +1: the closing request is outside it).
    batches: Counter[int] = Counter()
    for status, _, body in answers:
        if status == 201:
            batches[first_seq(node, body["order"]["order_id"])] += 1
    assert batches and max(batches.values()) <= MAX_ORDERS_IN_FLIGHT + 1, batches


def test_orders_past_the_bound_are_refused_as_read_while_the_admitted_are_in_flight(node):
    """One send of far more orders than aiohttp queues (32): the first MAX_ORDERS_IN_FLIGHT are
    admitted and share a commit batch; every later one is refused, each answered in order
    right behind them. A refusal that waited for a queue slot (session 8) or for its turn
    (main's depth rule) would be decided after the admitted orders' commit completed, and
    later orders would be admitted instead."""
    n, first = 120, 50_000  # ~34 KB: one read
    before = refusals(node)
    requests = [order(first + k) for k in range(n)]
    with socket.create_connection((node["host"], node["http"]), timeout=30) as sock:
        sock.sendall(b"".join(requests))
        answers, _ = read_answers(sock, n, until_eof=False)
    assert [h.get("x-trace-id") for _, h, _ in answers] == [trace_id(first + k) for k in range(n)]
    statuses = [status for status, _, _ in answers]
    admitted_at = [k for k, status in enumerate(statuses) if status == 201]
    assert statuses == [201] * MAX_ORDERS_IN_FLIGHT + [503] * (n - MAX_ORDERS_IN_FLIGHT), (
        f"admitted: {admitted_at}"
    )
    for _, headers, body in answers[MAX_ORDERS_IN_FLIGHT:]:
        assert body["error"]["code"] == "OVERLOADED" and headers["retry-after"] == "1", body
    assert refusals(node) - before == n - MAX_ORDERS_IN_FLIGHT
    batches = {first_seq(node, body["order"]["order_id"]) for _, _, body in answers[:MAX_ORDERS_IN_FLIGHT]}
    # Submitted together: one batch, two if the commit loop was mid-batch when the first came.
    assert len(batches) <= 2, f"the admitted orders went into {len(batches)} commit batches"
