"""WebSocket cases: a session of messages (JSON ops with odd fields, deep or huge JSON,
text that is not JSON, binary frames), then a ping whose pong proves the session alive;
or, below aiohttp, raw frames after the handshake (unmasked, bad opcodes, bad lengths)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import struct

import aiohttp

from engine.fuzz.mutate import garbage, mutate, nested_json, odd_value
from engine.fuzz.node import ALICE_KEY, SYMBOL

OPS = ("auth", "order", "cancel", "amend", "cancel_all", "subscribe", "unsubscribe", "ping", "nope", 7, None)
GOOD = {
    "order": {"symbol": SYMBOL, "side": "sell", "qty": 1, "price": 1_000_000},
    "cancel": {"order_id": 1},
    "amend": {"order_id": 1, "qty": 2},
    "subscribe": {"channel": "book", "symbol": SYMBOL},
    "auth": {"api_key": ALICE_KEY},
}


def message(rng: random.Random) -> str | bytes:
    kind = rng.randrange(8)
    if kind == 0:
        return nested_json(rng, rng.randint(30, 5000))
    if kind == 1:
        return garbage(rng).decode("latin-1")
    if kind == 2:
        return garbage(rng)  # a binary frame
    if kind == 3:
        # Now and then beyond 64 KiB: the session closes with 1009 (and the rest is not sent).
        return "x" * (70_000 if rng.random() < 0.1 else 1000)
    op = rng.choice(OPS)
    msg = {"op": op, "req_id": rng.choice((1, "a", None, [1], 2**70))}
    msg.update(GOOD.get(op, {}) if isinstance(op, str) else {})
    for _ in range(rng.randint(0, 3)):
        msg[rng.choice(("symbol", "qty", "price", "order_id", "channel", "api_key", "side", "zz"))] = (
            odd_value(rng)
        )
    text = json.dumps(msg)
    return mutate(rng, text.encode()).decode("utf-8", "replace") if kind == 4 else text


async def session(port: int, rng: random.Random, messages: int, timeout: float) -> dict:
    """One session: `messages` fuzz messages then a ping. Returns what happened."""
    url = f"http://127.0.0.1:{port}/v1/ws"
    headers = {"X-API-Key": ALICE_KEY} if rng.random() < 0.5 else {}
    out = {"sent": 0, "hung": False, "close_code": None, "errors": 0}
    connect = {"headers": headers, "max_msg_size": 0}
    async with aiohttp.ClientSession() as http, http.ws_connect(url, **connect) as ws:
        for _ in range(messages):
            msg = message(rng)
            try:
                await (ws.send_bytes(msg) if isinstance(msg, bytes) else ws.send_str(msg))
            except (ConnectionError, RuntimeError):
                break
            out["sent"] += 1
        if not ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_json({"op": "ping", "req_id": "fuzz-alive"})
        try:
            async with asyncio.timeout(timeout):
                async for reply in ws:
                    if reply.type == aiohttp.WSMsgType.TEXT:
                        body = json.loads(reply.data)
                        out["errors"] += body.get("type") == "error"
                        if body.get("req_id") == "fuzz-alive":
                            break
        except TimeoutError:
            out["hung"] = True
        out["close_code"] = ws.close_code
    return out


def raw_frames(rng: random.Random) -> bytes:
    """Frames aiohttp's client would never send: unmasked, reserved bits, bad opcodes,
    lengths that lie, fragments out of order."""
    frames = []
    for _ in range(rng.randint(1, 4)):
        payload = garbage(rng, 0, 200)
        first = rng.choice((0x81, 0x82, 0x01, 0x80, 0x89, 0x8A, 0x88, 0x83, 0xF1, 0x0F, rng.randrange(256)))
        masked = rng.random() < 0.6
        n = len(payload)
        if n < 126:
            head = bytes((first, (0x80 if masked else 0) | n))
        else:
            head = bytes((first, (0x80 if masked else 0) | 126)) + struct.pack(">H", n)
        if masked:
            key = os.urandom(4)
            payload = key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        frame = head + payload
        frames.append(mutate(rng, frame) if rng.random() < 0.3 else frame)
    return b"".join(frames)


async def raw_session(port: int, rng: random.Random, timeout: float) -> dict:
    """Raw frames after a real handshake: the server must close (or answer) and never hang."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = {"hung": False, "close_code": None}
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            return out
        writer.write(raw_frames(rng))
        writer.write_eof()
        try:
            data = b""
            while chunk := await asyncio.wait_for(reader.read(65536), timeout):
                data += chunk
            out["close_code"] = close_code(data)
        except TimeoutError:
            out["hung"] = True
        except (ConnectionError, OSError):
            pass
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
    return out


def close_code(data: bytes) -> int | None:
    """The code of the close frame among the server's (unmasked) frames, if any."""
    at = 0
    while at + 2 <= len(data):
        opcode, n = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if n == 126:
            n, at = struct.unpack(">H", data[at : at + 2])[0], at + 2
        elif n == 127:
            n, at = struct.unpack(">Q", data[at : at + 8])[0], at + 8
        if opcode == 0x8:
            return struct.unpack(">H", data[at : at + 2])[0] if n >= 2 else 1005
        at += n
    return None
