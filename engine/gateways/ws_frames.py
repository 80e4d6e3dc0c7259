"""WebSocket server frames built by hand: market data encodes each message into one frame
that every subscriber's socket is written from (encode once, share the bytes). And their
reader (`server_frames`), for raw clients: the fan-out bench's subscribers and the tests."""

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


def server_frames(buf: bytes | bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """The complete (unmasked, unfragmented) server frames at the start of `buf` as (opcode,
    payload), and how many bytes they span: the rest is a frame still arriving."""
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
