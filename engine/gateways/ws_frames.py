"""WebSocket server frames built by hand: market data encodes each message into one frame
that every subscriber's socket is written from (encode once, share the bytes)."""

from __future__ import annotations

import msgspec

_json = msgspec.json.Encoder()
# [market_data] send_buffer_bytes: a session's socket bytes before its writer waits.
DEFAULT_SEND_BUFFER = 4 * 1024 * 1024


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final WebSocket text frame (RFC 6455 5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


def json_frame(message: dict) -> bytes:
    """`message` as JSON in one text frame."""
    return text_frame(_json.encode(message))
