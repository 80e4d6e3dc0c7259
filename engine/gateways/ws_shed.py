"""The cheap refusal of a WebSocket order while the commit queue refuses new orders.

Refused the ordinary way, a WebSocket order cost about what an admitted one does: the whole
message decoded to a dict, converted to an OrderRequest, a command built, `Overloaded` raised
and its text formatted, an error dict built and JSON-encoded. Offered more than it can take,
the node spent itself refusing (BENCHMARKS.md, "Session 7: WebSocket shedding"). Here only
the message's `op` and `req_id` are decoded (msgspec skips the other fields in C), and the
answer is a pre-encoded frame with the client's `req_id` spliced in: the same error message
(`type`, `req_id`, `code` OVERLOADED, `message`, `retry_after_s`) in the same key order.
"""

from __future__ import annotations

import msgspec

from engine.gateways.ws_frames import text_frame
from engine.overload import OVERLOADED, RETRY_AFTER_S

# The ops whose commands the commit queue refuses at its order bound (engine.service._admit:
# new orders and amends; cancels have their own, higher bound and go the ordinary way).
SHED_OPS = frozenset(("order", "amend"))


class _Head(msgspec.Struct):
    """What a refusal needs of a message: its op, and its req_id as the client wrote it."""

    op: str | None = None
    req_id: msgspec.Raw = msgspec.Raw(b"null")


_decode_head = msgspec.json.Decoder(_Head).decode
_PREFIX = b'{"type":"error","req_id":'
_CODE = b',"code":"' + OVERLOADED.encode() + b'","message":'
_SUFFIX = b',"retry_after_s":' + str(RETRY_AFTER_S).encode() + b"}"


def shed_req_id(raw: str | bytes) -> bytes | None:
    """The raw JSON req_id of a message that is an order or amend (null when it has none), or
    None when it is anything else, or not a JSON object: that goes the ordinary way, which
    answers it (including its errors) as before."""
    try:
        head = _decode_head(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return None
    return bytes(head.req_id) if head.op in SHED_OPS else None


class OverloadedFrames:
    """OVERLOADED error frames for one session. The message text (the queue's count, bound
    and oldest wait) is encoded again only when the queue's count changes: refusals of one
    read share it."""

    __slots__ = ("_queued", "_tail")

    def __init__(self) -> None:
        self._queued = -1
        self._tail = b""

    def frame(self, req_id: bytes, service) -> bytes:
        queued = service.queued
        if queued != self._queued:
            self._queued = queued
            self._tail = _CODE + msgspec.json.encode(service.overload_text()) + _SUFFIX
        return text_frame(_PREFIX + req_id + self._tail)
