"""loom_decode_errors_total: unreadable input on every protocol of a real `loom run` is
refused, the session goes on, and the refusal is counted by protocol and code."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import struct
import urllib.error
import urllib.request

import aiohttp
import pytest
from loomproc import loom_run_ports

from engine.config import DEMO_KEYS

KEY = next(iter(DEMO_KEYS))


@pytest.fixture(scope="module")
def ports(tmp_path_factory):
    data = tmp_path_factory.mktemp("decode") / "data"
    args = ["--demo", "--rate", "50", "--data-dir", str(data)]
    args += ["--http-port", "0", "--fix-port", "0", "--binary-port", "0"]
    with loom_run_ports(args, dict(os.environ)) as found:
        yield found


def metrics(ports) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/metrics", timeout=10) as resp:
        return resp.read().decode()


def count(text: str, protocol: str, code: str) -> float:
    # The text format writes labels sorted by name: code, then protocol.
    m = re.search(rf'^loom_decode_errors_total\{{code="{code}",protocol="{protocol}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def post(ports, path: str, body: bytes, content_type: str = "application/json") -> int:
    req = urllib.request.Request(
        f"http://127.0.0.1:{ports['http']}{path}",
        data=body,
        headers={"Content-Type": content_type, "X-API-Key": KEY},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_rest_unreadable_bodies_are_counted_by_code(ports):
    before = metrics(ports)
    assert post(ports, "/v1/orders", b"{not json") == 400
    assert post(ports, "/v1/orders", b"{not json") == 400
    assert post(ports, "/v1/orders", b'{"symbol": 5}') == 400
    assert post(ports, "/v1/orders", b"a=b", "application/x-www-form-urlencoded") == 415
    # A well-formed order the engine refuses is a reject, not a decode error.
    order = b'{"client_order_id":"d1","symbol":"NOPE","side":"buy","type":"limit","price":1,"qty":1}'
    assert post(ports, "/v1/orders", order) == 422
    after = metrics(ports)
    assert count(after, "rest", "MALFORMED_JSON") - count(before, "rest", "MALFORMED_JSON") == 2
    assert count(after, "rest", "INVALID_REQUEST") - count(before, "rest", "INVALID_REQUEST") == 1
    assert (
        count(after, "rest", "UNSUPPORTED_MEDIA_TYPE") - count(before, "rest", "UNSUPPORTED_MEDIA_TYPE") == 1
    )


def test_websocket_unreadable_messages_are_counted_and_the_session_goes_on(ports):
    async def run() -> list[dict]:
        url = f"http://127.0.0.1:{ports['http']}/v1/ws"
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            await ws.send_str("{oops")
            await ws.send_str('{"op": "fly"}')
            await ws.send_str('{"op": "auth", "api_key": "' + KEY + '", "req_id": 7}')
            return [await ws.receive_json(timeout=10) for _ in range(3)]

    before = metrics(ports)
    replies = asyncio.run(run())
    assert [r.get("code") for r in replies[:2]] == ["MALFORMED_JSON", "UNKNOWN_OP"]
    assert replies[2]["type"] == "authenticated"  # the session survived both
    after = metrics(ports)
    assert count(after, "websocket", "MALFORMED_JSON") - count(before, "websocket", "MALFORMED_JSON") == 1
    assert count(after, "websocket", "UNKNOWN_OP") - count(before, "websocket", "UNKNOWN_OP") == 1


def _recv_some(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    return sock.recv(4096)


def test_binary_unknown_frame_type_is_counted(ports):
    before = metrics(ports)
    with socket.create_connection(("127.0.0.1", ports["binary"]), timeout=10) as sock:
        sock.sendall(struct.pack("<HB", 1, 0xEE))  # a frame of an unknown type, no body
        reply = _recv_some(sock)
    assert reply, "the server answers an unknown frame with an Error frame"
    after = metrics(ports)
    assert count(after, "binary", "unknown_type") - count(before, "binary", "unknown_type") == 1


def test_fix_garbage_is_counted(ports):
    before = metrics(ports)
    with socket.create_connection(("127.0.0.1", ports["fix"]), timeout=10) as sock:
        sock.sendall(b"this is not FIX\x01")
        sock.settimeout(10)
        while sock.recv(4096):  # garbage before Logon closes the connection
            pass
    after = metrics(ports)
    assert count(after, "fix", "garbage") - count(before, "fix", "garbage") >= 1
