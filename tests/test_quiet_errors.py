"""Quiet, uniform errors under bad input (issue 13), against a real `loom run`:
malformed HTTP gets the JSON error format with a 4xx (not aiohttp's text/plain 400 with
an ERROR line and a traceback each); a client leaving mid-body is not an error; a flood of
bad requests makes a bounded number of log lines; JSON nested too deep gets an error frame
and the WebSocket session goes on."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time

import aiohttp
import pytest

from engine.bad_input_log import BadInputLog
from engine.fuzz.node import ALICE_KEY, FuzzNode
from engine.gateways.json_depth import MAX_DEPTH, too_deep


@pytest.fixture(scope="module")
def node():
    with FuzzNode.start() as running:
        yield running


def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes and read one whole answer (a timeout fails the test: a hang)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return read_answer(s)


def read_answer(s: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            return buf
        buf += chunk
    head = buf.split(b"\r\n\r\n", 1)[0]
    length = int(header(head, b"content-length") or 0)
    while len(buf) < len(head) + 4 + length:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf


def parse(answer: bytes) -> tuple[int, dict, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body), header(head, b"content-type")


def header(head: bytes, name: bytes) -> str:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip().decode()
    return ""


KEY = f"X-API-Key: {ALICE_KEY}\r\n".encode()
MALFORMED = {
    "bad request line": (b"GARBAGE\r\n\r\n", 400),
    "bad header": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
    "bad chunk size": (
        b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
        400,
    ),
    "header line too long": (b"GET /healthz HTTP/1.1\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n", 431),
    "request line too long": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_http_gets_the_json_error_format(node, case):
    data, status = MALFORMED[case]
    got, body, ctype = parse(exchange(node.ports["http"], data))
    assert got == status, body
    assert ctype.startswith("application/json")
    assert set(body["error"]) == {"code", "message"} and body["error"]["message"]
    assert b"aaaa" not in json.dumps(body).encode()  # the client's bytes are not echoed


def test_a_bad_chunk_after_the_headers_is_a_400_not_a_hang(node):
    """The body arrives after the handler started reading it: aiohttp queued the parse error
    as a second message and the handler waited for a body that never came."""
    head = b"POST /v1/orders HTTP/1.1\r\nHost: x\r\n" + KEY + b"Transfer-Encoding: chunked\r\n\r\n"
    with socket.create_connection(("127.0.0.1", node.ports["http"]), timeout=5) as s:
        s.sendall(head)
        time.sleep(0.2)  # let the handler start reading the body (the case is the order of arrival)
        s.sendall(b"zz\r\n")
        answer = read_answer(s)
    status, body, _ = parse(answer)
    assert status == 400 and body["error"]["code"] == "MALFORMED_REQUEST"


def test_disconnect_mid_body_and_a_flood_of_bad_requests_stay_quiet(node):
    before = len(node.log_text().splitlines())
    for _ in range(5):  # a client that declares 100 bytes, sends 3 and leaves
        data = b"POST /v1/orders HTTP/1.1\r\nHost: x\r\n" + KEY + b"Content-Length: 100\r\n\r\nabc"
        with socket.create_connection(("127.0.0.1", node.ports["http"]), timeout=5) as s:
            s.sendall(data)
            time.sleep(0.05)  # the handler is reading the body when the client leaves
    for i in range(300):
        data, _ = MALFORMED[sorted(MALFORMED)[i % len(MALFORMED)]]
        exchange(node.ports["http"], data)
    assert node.order_works()
    added = node.log_text().splitlines()[before:]
    text = "\n".join(added)
    assert "Traceback" not in text and " ERROR " not in text, text[-3000:]
    assert len(added) <= 5, text  # one line for the first, the rest summarised later
    assert "bad http input from 127.0.0.1" in node.log_text()  # said once, not 300 times


def test_deep_json_over_websocket_is_an_error_frame_and_the_session_goes_on(node):
    async def session() -> list[dict]:
        url, headers = node.base + "/v1/ws", {"X-API-Key": ALICE_KEY}
        async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as ws:
            answers = []
            for message in ("[" * 5000 + "]" * 5000, '{"op": "ping", "x": ' + "[" * 100 + "]" * 100 + "}"):
                await ws.send_str(message)
                answers.append(await ws.receive_json(timeout=10))
            await ws.send_json({"op": "ping", "req_id": 7})
            answers.append(await ws.receive_json(timeout=10))
            return answers

    deep, nested_field, pong = asyncio.run(session())
    assert deep["type"] == "error" and deep["code"] == "TOO_DEEP"
    assert nested_field["code"] == "TOO_DEEP"
    assert pong == {"type": "pong", "req_id": 7}
    assert "RecursionError" not in node.log_text()


def test_deep_json_in_a_rest_body_is_a_400(node):
    data = b"[" * 3000 + b"]" * 3000
    head = b"POST /v1/orders HTTP/1.1\r\nHost: x\r\n" + KEY + b"Content-Type: application/json\r\n"
    answer = exchange(node.ports["http"], head + b"Content-Length: %d\r\n\r\n" % len(data) + data)
    status, body, _ = parse(answer)
    assert status == 400 and body["error"]["code"] == "TOO_DEEP"


def test_too_deep_counts_brackets_outside_strings_only():
    assert too_deep("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    assert not too_deep("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    assert not too_deep('{"a": "' + "[" * 1000 + '"}')  # inside a string: not nesting
    assert not too_deep('{"a": "\\"' + "[" * 1000 + '"}')  # an escaped quote does not end it
    assert too_deep(b'{"a":' * 40)  # unterminated is still measured
    assert too_deep("[" * 40 + '"' + '\\"' * 30000)  # an unterminated string: linear, not quadratic


def test_bad_input_log_writes_one_line_then_a_summary_per_window(caplog):
    now = [0.0]
    log = BadInputLog(logging.getLogger("test.bad_input"), every_s=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.bad_input"):
        for i in range(1000):
            now[0] = i * 0.001
            log.note("http", "10.0.0.1", "malformed HTTP request: Invalid method encountered")
        assert len(caplog.records) == 1
        now[0] = 11.0
        log.note("http", "10.0.0.2", "malformed HTTP request: Invalid header token")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages
    assert "999 more bad inputs" in messages[1] and "10.0.0.1 x999" in messages[1]
    assert "1000 in all" in messages[1] and "10.0.0.2" in messages[2]
    assert log.total == 1001
