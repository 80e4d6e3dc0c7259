"""Raw RFC 6455 client framing for tests that write many WebSocket messages in one TCP write
(aiohttp's client sends one frame per call): masked client frames out, server frames in."""

from __future__ import annotations

import asyncio
import random


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One final, masked client frame (RFC 6455 5.2; clients must mask). The mask is XORed as
    one big integer: a loop per byte cost more than the order it carries."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = random.getrandbits(32).to_bytes(4, "big")
    mask = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")
    return head + key + masked


def server_frames(buf: bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """The complete (unmasked, unfragmented) server frames at the start of `buf` as (opcode,
    payload), and how many bytes they span."""
    frames = []
    pos, n = 0, len(buf)
    while n - pos >= 2:
        length, head = buf[pos + 1] & 0x7F, 2
        if length == 126:
            if n - pos < 4:
                break
            length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
        elif length == 127:
            if n - pos < 10:
                break
            length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
        if n - pos < head + length:
            break
        frames.append((buf[pos] & 0x0F, bytes(buf[pos + head : pos + head + length])))
        pos += head + length
    return frames, pos


async def upgrade(port: int, key: str, wait: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection to the node's /v1/ws, upgraded with API key `key` (asserts the 101)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"X-API-Key: {key}\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer
