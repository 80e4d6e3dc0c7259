"""REST and WebSocket load drivers.

REST uses a minimal pipelining HTTP/1.1 client on raw asyncio protocols: an aiohttp client
costs more CPU per request than the server it is measuring, and the load generator shares
the machine with the server."""

from __future__ import annotations

import asyncio
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


class WsDriver:
    def __init__(
        self,
        host: str,
        port: int,
        api_key: str,
        connections: int = 4,
        hold: bool = False,
        max_in_flight: int = 0,
    ) -> None:
        self.url = f"http://{host}:{port}/v1/ws"
        self.api_key, self.n = api_key, connections
        self.hold = hold
        self.max_in_flight = max_in_flight  # per connection, with hold (engine.load.backpressure)
        self.in_flight: list[int] = []  # per connection: orders sent and not yet answered
        self.session = None
        self.sockets: list = []
        self.readers: list[asyncio.Task] = []
        self.queues: list[asyncio.Queue] = []
        self.writers: list[asyncio.Task] = []
        self._next = 0

    async def connect(self, on_ack) -> None:
        import aiohttp

        # No pool limit: aiohttp's default (100) made the 101st WebSocket wait forever.
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        for _ in range(self.n):
            ws = await self.session.ws_connect(self.url, headers={"X-API-Key": self.api_key}, max_msg_size=0)
            self.sockets.append(ws)
            if self.hold:
                limit_send_buffer(ws._writer.transport)  # aiohttp exposes no public handle
            queue: asyncio.Queue = asyncio.Queue()
            self.queues.append(queue)
            self.in_flight.append(0)
            self.readers.append(asyncio.create_task(self._read(ws, on_ack, len(self.sockets) - 1)))
            self.writers.append(asyncio.create_task(self._write(ws, queue)))

    async def _read(self, ws, on_ack, c: int) -> None:
        decode = msgspec.json.decode
        async for msg in ws:
            data = decode(msg.data)
            req_id = data.get("req_id")
            if req_id is not None:
                self.in_flight[c] -= 1
                kind = data.get("type")
                code = data.get("code")
                shed = kind == "error" and code == "OVERLOADED"
                events = data.get("events") or [{}]
                order_id = int(events[0].get("order_id", 0)) if kind == "ack" else 0
                on_ack(req_id, kind == "ack", time.perf_counter_ns(), shed, code or kind, order_id)

    async def _write(self, ws, queue: asyncio.Queue) -> None:
        while True:
            frames = await queue.get()
            for frame in frames:
                await ws.send_str(frame)

    def _room(self, c: int, due: int) -> int:
        # Nothing while the writer task has not caught up with the last batch.
        if self.hold and not self.queues[c].empty():
            return 0
        return room(self.hold, self.sockets[c]._writer.transport, self.in_flight[c], self.max_in_flight, due)

    def send(self, orders: list[LoadOrder]) -> int:
        per: dict[int, list[str]] = {}
        held = 0
        free = [self._room(c, len(orders)) for c in range(self.n)]
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
            self.in_flight[c] += 1
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
            per.setdefault(c, []).append(_json.encode(msg).decode())
        for c, frames in per.items():
            self.queues[c].put_nowait(frames)
        return held

    async def close(self) -> None:
        for t in self.writers + self.readers:
            t.cancel()
        for ws in self.sockets:
            await ws.close()
        if self.session is not None:
            await self.session.close()
