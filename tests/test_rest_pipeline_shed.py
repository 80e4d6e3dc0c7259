"""The cheap refusal of pipelined REST orders (engine.gateways.http_shed.PipelineShed): a client
pipelining far past the bound on one connection gets every request answered once, in order,
at most MAX_PIPELINE of its orders in flight behind the one answered next
(engine.gateways.http_pipeline), the excess 503 OVERLOADED from pre-encoded bytes that still
carry Retry-After and the request's own X-Trace-Id; a request without a key and a closing
request go the ordinary way (the middleware's rule, or its 401).

Against a real `loom run` subprocess over a raw socket (an HTTP client library would not
pipeline); no fixed sleeps: the reader waits for every answer."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections import Counter

import pytest

from engine.gateways.http_shed import MAX_PIPELINE
from engine.load.spawn import LOAD_ACCOUNTS, LOAD_ADMIN_KEY, spawned_exchange

KEY = next(iter(LOAD_ACCOUNTS))
N = 600  # far past MAX_PIPELINE: one send holds hundreds of requests
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


def read_answers(sock: socket.socket, n: int) -> tuple[list[tuple[int, dict[str, str], dict]], bytes]:
    """n answers (status, lower-cased headers, JSON body), then whatever follows until EOF."""
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
    while chunk := sock.recv(1 << 16):
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
            assert (
                f"more than {MAX_PIPELINE} requests pipelined on this connection" in body["error"]["message"]
            )
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
    # The rule: the order being handled and at most MAX_PIPELINE behind it in flight, so no
    # commit batch holds more of them (a batch's orders were all in flight together).
    batches: Counter[int] = Counter()
    for status, _, body in answers:
        if status == 201:
            batches[first_seq(node, body["order"]["order_id"])] += 1
    assert batches and max(batches.values()) <= MAX_PIPELINE + 1, batches


def test_refusals_held_for_one_send_go_out_before_the_next_ordinary_answer(node):
    """A pipeline whose refused orders are followed by a GET: the refusals (held to be written
    together) are on the wire before the GET's answer, which is the last."""
    get = f"GET /v1/orders HTTP/1.1\r\nHost: loom\r\nX-API-Key: {KEY}\r\nConnection: close\r\n\r\n".encode()
    n = 3 * MAX_PIPELINE
    with socket.create_connection((node["host"], node["http"]), timeout=30) as sock:
        sock.sendall(b"".join(order(10_000 + k) for k in range(n)) + get)
        answers, _ = read_answers(sock, n + 1)
    assert [h.get("x-trace-id") for _, h, _ in answers[:n]] == [trace_id(10_000 + k) for k in range(n)]
    assert answers[-1][0] == 200 and "orders" in answers[-1][2], answers[-1]
