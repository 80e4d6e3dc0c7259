"""WebSocket client frames must be masked (RFC 6455 5.1): an unmasked one closes the
connection with 1002 (protocol error). aiohttp's reader accepts them silently.

A filter in front of aiohttp's frame reader walks the frame headers (the payload is
skipped, never copied) and fails the session at the first unmasked frame. It leans on two
aiohttp internals, pinned by tests/test_ws_hygiene.py: the protocol's `_payload_parser`
(the reader it feeds) and the response's `_reader` queue (where a reader reports errors).
"""

from __future__ import annotations

from aiohttp import WSCloseCode, web
from aiohttp.http_websocket import WebSocketError

UNMASKED = "client frames must be masked (RFC 6455 section 5.1)"


class MaskedFramesOnly:
    """Feeds aiohttp's WebSocket reader, checking each frame header's mask bit first."""

    def __init__(self, reader, queue) -> None:
        self._reader = reader
        self._queue = queue
        self._head = bytearray()  # a frame header split across reads
        self._skip = 0  # payload bytes of the current frame still to pass over
        self._failed = False

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._failed:
            return False, b""
        if not self._all_masked(data):
            self._failed = True
            self._queue.set_exception(WebSocketError(WSCloseCode.PROTOCOL_ERROR, UNMASKED))
            return False, b""
        return self._reader.feed_data(data)

    def feed_eof(self) -> None:
        self._reader.feed_eof()

    def _all_masked(self, data: bytes) -> bool:
        n = len(data)
        i = min(self._skip, n)  # the rest of a payload begun in an earlier read
        self._skip -= i
        head = self._head
        if head:  # a header split across reads: byte by byte until it is whole
            i = self._finish_head(data, i)
            if i < 0:
                return False
        # The usual case, one iteration per frame with locals only (a loop iteration per
        # header and payload, with the offsets on self, was a fifth of the node's main
        # thread at 4C: py-spy, BENCHMARKS.md "Session 8: WebSocket and FIX under overload").
        while i + 14 <= n:  # a whole header here, however long its length field
            second = data[i + 1]
            if not second & 0x80:
                return False
            length = second & 0x7F
            if length < 126:
                i += 6 + length
            elif length == 126:
                i += 8 + int.from_bytes(data[i + 2 : i + 4], "big")
            else:
                i += 14 + int.from_bytes(data[i + 2 : i + 10], "big")
        if i >= n:
            self._skip += i - n  # (what the byte-wise path left to skip stays counted)
            return True
        return self._finish_head(data, i) >= 0

    def _finish_head(self, data: bytes, i: int) -> int:
        """Read header bytes from data[i:] into `_head` until one header is whole and its
        payload passed over (or the data ends); then go on with whole frames. The offset
        reached, or -1 at an unmasked frame."""
        n = len(data)
        head = self._head
        while i < n:
            if self._skip:
                step = min(self._skip, n - i)
                self._skip -= step
                i += step
                continue
            if not head and n - i >= 14:
                return i  # back to the fast loop
            head.append(data[i])
            i += 1
            if len(head) < 2:
                continue
            if not head[1] & 0x80:
                return -1
            length = head[1] & 0x7F
            extra = 2 if length == 126 else 8 if length == 127 else 0
            if len(head) < 2 + extra + 4:  # the extended length and the masking key
                continue
            if extra:
                length = int.from_bytes(head[2 : 2 + extra], "big")
            self._skip = length
            head.clear()
        return i


def require_masked_frames(request: web.Request, ws: web.WebSocketResponse) -> None:
    """Once `ws` is prepared: put the mask check in front of its frame reader."""
    protocol = request.protocol
    reader = getattr(protocol, "_payload_parser", None)
    queue = getattr(ws, "_reader", None)
    if reader is not None and queue is not None:
        protocol._payload_parser = MaskedFramesOnly(reader, queue)
