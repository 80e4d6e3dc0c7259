"""Limits a hostile client meets (issue 13), on a real `loom run`: a per-IP rate limit for
requests without a valid key (they were never limited), WebSocket control traffic limited
per session, unmasked WebSocket client frames closed with 1002 (they were accepted), and FIX
SenderCompIDs bound to the account in the config (any other made a store directory)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp

from engine.fuzz.node import ALICE_KEY, FuzzNode
from engine.fuzz.ws import close_code
from engine.gateways.fix.codec import FixParser, encode_message, utc_timestamp
from engine.gateways.fix.comp_ids import CompIdBinding
from engine.gateways.preauth_limit import PerIpLimit

CAROL_KEY = "carol-key-0123456789abcdef"
CAROL = f'[[accounts]]\nname = "carol"\napi_key = "{CAROL_KEY}"\nfix_comp_ids = ["CAROL1"]\n'


def status_of(url: str, key: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"X-API-Key": key} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_requests_without_a_valid_key_are_limited_per_ip_and_keyed_ones_are_not():
    with FuzzNode.start({"preauth_rate_limit": 0.001, "preauth_rate_burst": 5}) as node:
        book = node.base + "/v1/book/BTC-USD"
        assert [status_of(book) for _ in range(5)] == [200] * 5
        assert status_of(book) == 429  # the sixth keyless request from this address
        assert status_of(node.base + "/v1/orders", key="wrong-key-0123456789") == 429  # guessing keys too
        assert status_of(node.base + "/healthz") == 200  # probes and scrapes are never limited
        assert status_of(node.base + "/metrics") == 200
        assert status_of(book, key=ALICE_KEY) == 200  # a valid key: its own (account) limit
        assert node.order_works()
        assert (
            'loom_rate_limited_total{protocol="unauthenticated"}'
            in urllib.request.urlopen(node.base + "/metrics", timeout=10).read().decode()
        )


def test_websocket_control_traffic_is_rate_limited_per_session():
    async def session(url: str) -> list[str]:
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            answers = []
            for i in range(6):
                await ws.send_json({"op": "ping", "req_id": i})
                reply = await ws.receive_json(timeout=10)
                answers.append(reply.get("code", reply["type"]))
            return answers

    with FuzzNode.start({"rate_limit": 0.001, "rate_burst": 3}) as node:
        answers = asyncio.run(session(node.base + "/v1/ws"))
    assert answers == ["pong"] * 3 + ["RATE_LIMITED"] * 3


def ws_frame(port: int, frame: bytes) -> bytes:
    """A raw WebSocket handshake, one frame, and what the server sends back until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(
            (
                "GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(4096)
        assert b" 101 " in data.split(b"\r\n", 1)[0]
        data = data.split(b"\r\n\r\n", 1)[1]
        s.sendall(frame)
        while b"pong" not in data and close_code(data) is None:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


def test_unmasked_websocket_client_frames_are_closed_with_1002():
    payload = b'{"op": "ping", "req_id": 1}'
    mask = os.urandom(4)
    masked = bytes((0x81, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    with FuzzNode.start() as node:
        assert b'"pong"' in ws_frame(node.ports["http"], masked)
        answer = ws_frame(node.ports["http"], bytes((0x81, len(payload))) + payload)
        assert b"pong" not in answer and close_code(answer) == 1002
        assert "Traceback" not in node.log_text()


def fix_logon(port: int, comp_id: str, account: str, key: str) -> str:
    """Logon; the answer's MsgType (A accepted, 5 Logout) and its Text."""
    body = [(98, 0), (108, 30), (141, "Y"), (553, account), (554, key)]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(encode_message("A", comp_id, "LOOM", 1, utc_timestamp(0), body))
        parser = FixParser()
        while True:
            data = s.recv(4096)
            assert data, "closed without an answer"
            parser.receive_data(data)
            for event in parser.events():
                return f"{event.msg_type} {event.get(58) or ''}".strip()


def test_fix_sender_comp_ids_are_bound_to_the_account_in_the_config():
    with FuzzNode.start(tables=CAROL) as node:
        stores = Path(node.workdir.name) / "data" / "fix"
        port = node.ports["fix"]
        refused = fix_logon(port, "ROGUE", "carol", CAROL_KEY)
        assert refused.startswith("5 ") and "not bound to this account" in refused
        assert not (stores / "ROGUE").exists()  # refused before its store was made
        assert fix_logon(port, "CAROL1", "alice", ALICE_KEY).startswith("5 ")  # carol's, not alice's
        assert fix_logon(port, "CAROL1", "carol", CAROL_KEY) == "A"
        assert (stores / "CAROL1").is_dir()


def test_an_account_without_bound_comp_ids_may_use_only_a_few(tmp_path):
    with FuzzNode.start({"fix_max_comp_ids": 2}) as node:
        port = node.ports["fix"]
        assert fix_logon(port, "A1", "alice", ALICE_KEY) == "A"
        assert fix_logon(port, "A2", "alice", ALICE_KEY) == "A"
        third = fix_logon(port, "A3", "alice", ALICE_KEY)
        assert third.startswith("5 ") and "already has 2 SenderCompIDs" in third
        assert fix_logon(port, "A1", "alice", ALICE_KEY) == "A"  # a known one still logs on
        assert not (Path(node.workdir.name) / "data" / "fix" / "A3").exists()
    # Stores on disk count after a restart too.
    (tmp_path / "B1").mkdir()
    (tmp_path / "B1" / "account").write_text("bob\n")
    binding = CompIdBinding(None, 1, tmp_path)
    assert binding.problem("B2", "bob", "B2") and binding.problem("B1", "bob", "B1") is None


def test_the_per_ip_table_is_bounded():
    limit = PerIpLimit(1.0, 1.0, max_ips=3)
    for i in range(10):
        assert limit.allow(f"10.0.0.{i}", now=0.0)
    assert len(limit._buckets) == 3
    assert not limit.allow("10.0.0.9", now=0.0) and limit.refused == 1


def test_the_mask_check_follows_frames_split_anywhere():
    """Frames of every length form, masked or not, cut at random points: the check fails the
    stream exactly when one frame is unmasked (its fast and byte-wise paths agree)."""
    import random

    from engine.gateways.ws_masking import MaskedFramesOnly

    class Sink:
        def feed_data(self, data):
            return False, b""

    class Queue:
        exc = None

        def set_exception(self, exc):
            self.exc = exc

    rng = random.Random(13)
    for _ in range(1000):
        frames, all_masked = [], True
        for _ in range(rng.randint(1, 6)):
            n, masked = rng.choice((0, 5, 125, 126, 300, 70_000)), rng.random() < 0.9
            all_masked &= masked
            size = n if n < 126 else 126 if n < 65536 else 127
            head = bytes((0x81, (0x80 if masked else 0) | size))
            head += n.to_bytes(2, "big") if size == 126 else n.to_bytes(8, "big") if size == 127 else b""
            frames.append(head + (os.urandom(4) if masked else b"") + bytes(n))
        stream = b"".join(frames)
        cuts = sorted(rng.sample(range(1, len(stream)), min(5, len(stream) - 1)))
        queue = Queue()
        check = MaskedFramesOnly(Sink(), queue)
        for lo, hi in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            check.feed_data(stream[lo:hi])
        assert (queue.exc is None) == all_masked
