"""Raw RFC 6455 client framing for tests that write many WebSocket messages in one TCP write
(aiohttp's client sends one frame per call): masked client frames out, server frames in."""

from __future__ import annotations

import asyncio
import random

from engine.gateways.ws_frames import server_frames  # noqa: F401  (the tests' reader: one copy)


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
