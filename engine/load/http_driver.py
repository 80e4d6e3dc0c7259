"""REST and WebSocket load drivers.

REST uses a minimal pipelining HTTP/1.1 client, WebSocket a minimal RFC 6455 client, both on
raw asyncio protocols: an aiohttp client costs more CPU per request than the server it is
measuring, and the load generator shares the machine with the server."""

from __future__ import annotations

import asyncio
import base64
import random
import secrets
import time
from collections import deque

import msgspec

from engine.load.backpressure import limit_send_buffer, room
from engine.load.runner import SYMBOL, LoadOrder

_json = msgspec.json.Encoder()


def _order_body(o: LoadOrder) -> bytes:
    return _json.encode(
        {
            "symbol": SYMBOL,
            "side": o.side,
            "qty": o.qty,
            "price": o.price,
            "tif": o.tif,
            "client_order_id": o.client_order_id,
        }
    )


def _error_code(body: bytes, status: int) -> str:
    """The code of a REST error answer ({"error": {"code": ...}}), else the HTTP status."""
    try:
        return str(msgspec.json.decode(body)["error"]["code"])
    except (msgspec.DecodeError, KeyError, TypeError):
        return f"HTTP_{status}"


def _order_id(buf: bytearray, start: int, stop: int) -> int:
    """The first "order_id" of an answer's body, found without decoding all of it (the
    load generator shares the machine with the server it measures); 0 when absent."""
    i = buf.find(b'"order_id":', start, stop)
    if i < 0:
        return 0
    i += 11
    j = i
    while j < stop and 48 <= buf[j] <= 57:
        j += 1
    return int(buf[i:j]) if j > i else 0


class _HttpConnection(asyncio.Protocol):
    def __init__(self, on_ack, on_error) -> None:
        self.on_ack = on_ack
        self.on_error = on_error
        self.buf = bytearray()
        self.inflight: deque[int] = deque()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        now = time.perf_counter_ns()
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            status = int(head[9:12])
            i = head.lower().find(b"content-length:")
            length = 0
            if i >= 0:
                j = head.find(b"\r\n", i)
                length = int(head[i + 15 : j if j > 0 else len(head)])
            if len(buf) < end + 4 + length:
                return
            index = self.inflight.popleft()
            if status in (200, 201):
                order_id = _order_id(buf, end + 4, end + 4 + length)
                del buf[: end + 4 + length]
                self.on_ack(index, True, now, False, None, order_id)
                continue
            code = _error_code(bytes(buf[end + 4 : end + 4 + length]), status)
            del buf[: end + 4 + length]
            self.on_ack(index, False, now, code == "OVERLOADED", code)

    def connection_lost(self, exc) -> None:
        self.on_error(len(self.inflight))


class RestDriver:
    def __init__(
        self,
        host: str,
        port: int,
        api_key: str,
        connections: int = 32,
        hold: bool = False,
        max_in_flight: int = 0,
    ) -> None:
        self.host, self.port, self.api_key, self.n = host, port, api_key, connections
        self.hold = hold
        self.max_in_flight = max_in_flight  # per connection, with hold (engine.load.backpressure)
        self.conns: list[_HttpConnection] = []
        self.errors = 0
        self._next = 0

    async def connect(self, on_ack) -> None:
        loop = asyncio.get_running_loop()

        def lost(n: int) -> None:
            self.errors += n

        for _ in range(self.n):
            transport, proto = await loop.create_connection(
                lambda: _HttpConnection(on_ack, lost), self.host, self.port
            )
            if self.hold:
                limit_send_buffer(transport)
            self.conns.append(proto)
        self.head = (
            f"POST /v1/orders HTTP/1.1\r\nHost: {self.host}\r\nX-API-Key: {self.api_key}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()

    def send(self, orders: list[LoadOrder]) -> int:
        per_conn: dict[int, list[bytes]] = {}
        held = 0
        free = [
            room(self.hold, c.transport, len(c.inflight), self.max_in_flight, len(orders)) for c in self.conns
        ]
        if not any(free):  # every connection holds: nothing to build or route
            return len(orders)
        for k in range(len(orders)):
            c = self._next
            self._next = (c + 1) % self.n
            if free[c] <= 0:
                held += 1
                continue
            free[c] -= 1
            o = orders[k]  # built only now (engine.load.runner.OrderBatch)
            body = _order_body(o)
            per_conn.setdefault(c, []).append(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
            self.conns[c].inflight.append(o.index)
        for c, chunks in per_conn.items():
            self.conns[c].transport.write(b"".join(chunks))
        return held

    async def close(self) -> None:
        for c in self.conns:
            c.transport.close()


class _Event(msgspec.Struct):
    order_id: int = 0


class _Answer(msgspec.Struct):
    """What the generator needs of a WebSocket answer (msgspec skips the rest in C)."""

    type: str = ""
    req_id: int | None = None
    code: str | None = None
    events: list[_Event] = []


_decode_answer = msgspec.json.Decoder(_Answer).decode


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


class _WsConnection(asyncio.Protocol):
    """One WebSocket order session on a raw asyncio protocol: the upgrade, then masked text
    frames out and the answers in, each decoded only for its type, req_id, code and order id."""

    def __init__(self, on_ack, request: bytes) -> None:
        self.on_ack = on_ack
        self.request = request
        self.buf = bytearray()
        self.in_flight = 0  # orders sent and not yet answered
        self.transport: asyncio.Transport | None = None
        self.opened = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.opened.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[:end].split(b"\r\n", 1)[0])
            if b" 101 " not in status + b" ":
                self.opened.set_exception(ConnectionError(f"WebSocket upgrade refused: {status.decode()}"))
                return
            del buf[: end + 4]
            self.opened.set_result(None)
        frames, used = server_frames(buf)
        del buf[:used]
        now = time.perf_counter_ns()
        on_ack = self.on_ack
        for opcode, payload in frames:
            if opcode == 0x1:
                a = _decode_answer(payload)
                if a.req_id is not None:
                    self.in_flight -= 1
                    shed = a.type == "error" and a.code == "OVERLOADED"
                    order_id = a.events[0].order_id if a.type == "ack" and a.events else 0
                    on_ack(a.req_id, a.type == "ack", now, shed, a.code or a.type, order_id)
            elif opcode == 0x9:  # the server's heartbeat ping
                self.transport.write(client_frame(payload, 0xA))
            elif opcode == 0x8:
                self.transport.close()

    def connection_lost(self, exc) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"WebSocket connection lost: {exc}"))


class WsDriver:
    """WebSocket order sessions on raw asyncio protocols (`_WsConnection`), not aiohttp's
    client: its per-frame send and per-message receive coroutines, and decoding every answer
    whole, made the generator's CPU, not the venue, set the bench's WebSocket figures at 2C
    (py-spy, BENCHMARKS.md "Session 8: WebSocket and FIX under overload")."""

    def __init__(
        self,
        host: str,
        port: int,
        api_key: str,
        connections: int = 4,
        hold: bool = False,
        max_in_flight: int = 0,
    ) -> None:
        self.host, self.port, self.api_key, self.n = host, port, api_key, connections
        self.hold = hold
        self.max_in_flight = max_in_flight  # per connection, with hold (engine.load.backpressure)
        self.conns: list[_WsConnection] = []
        self._next = 0

    def _upgrade(self) -> bytes:
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        return (
            f"GET /v1/ws HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"X-API-Key: {self.api_key}\r\n\r\n"
        ).encode()

    async def connect(self, on_ack) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.n):
            transport, conn = await loop.create_connection(
                lambda: _WsConnection(on_ack, self._upgrade()), self.host, self.port
            )
            await asyncio.wait_for(conn.opened, 10)
            if self.hold:
                limit_send_buffer(transport)
            self.conns.append(conn)

    def send(self, orders: list[LoadOrder]) -> int:
        per: dict[int, list[bytes]] = {}
        held = 0
        conns = self.conns
        free = [room(self.hold, c.transport, c.in_flight, self.max_in_flight, len(orders)) for c in conns]
        if not any(free):  # every connection holds: nothing to build or route
            return len(orders)
        for k in range(len(orders)):
            c = self._next
            self._next = (c + 1) % self.n
            if free[c] <= 0:
                held += 1
                continue
            free[c] -= 1
            o = orders[k]  # built only now (engine.load.runner.OrderBatch)
            conns[c].in_flight += 1
            msg = {
                "op": "order",
                "req_id": o.index,
                "symbol": SYMBOL,
                "side": o.side,
                "qty": o.qty,
                "price": o.price,
                "tif": o.tif,
                "client_order_id": o.client_order_id,
            }
            per.setdefault(c, []).append(client_frame(_json.encode(msg)))
        for c, frames in per.items():
            conns[c].transport.write(b"".join(frames))
        return held

    async def close(self) -> None:
        for c in self.conns:
            if c.transport is not None and not c.transport.is_closing():
                c.transport.write(client_frame(b"\x03\xe8", 0x8))  # close 1000
                c.transport.close()
