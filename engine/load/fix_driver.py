"""FIX load driver: a minimal initiator on the project's own codec (Logon, then
NewOrderSingle per order; an ExecutionReport New or Rejected for ClOrdID i is the ack).

ExecutionReports, nearly all it reads, are not parsed whole: the few fields an answer needs
are found by byte search in each framed message (`report_fields`): 2.4-2.7 us of CPU per
report against 15.2-15.5 parsed with the codec (checksum, every field split and checked),
time the generator's loop spends between its sends (BENCHMARKS.md "Session 8: WebSocket and
FIX under overload"). Every other message (Logon, Logout, TestRequest) still goes through
the codec."""

from __future__ import annotations

import asyncio
import time

from engine.gateways.fix.codec import FixMessage, FixParser, encode_message, utc_timestamp
from engine.load.backpressure import limit_send_buffer, room

_SIDE = {"buy": "1", "sell": "2"}
_TIF = {"gtc": "1", "ioc": "3"}
_TRAILER = b"\x0110="  # CheckSum (10): "<SOH>10=ddd<SOH>" ends every message (no value holds SOH)
_TRAILER_BYTES = 8
_REPORT = b"\x0135=8\x01"  # MsgType ExecutionReport


def framed(buf: bytearray) -> tuple[list[bytes], int]:
    """The complete messages at the start of `buf` and how many bytes they span."""
    messages = []
    start = 0
    find = buf.find
    while (end := find(_TRAILER, start)) >= 0 and len(buf) >= end + _TRAILER_BYTES:
        end += _TRAILER_BYTES
        messages.append(bytes(buf[start:end]))
        start = end
    return messages, start


def field(msg: bytes, tag: bytes) -> bytes | None:
    """The value of the first field `tag` (as b"<SOH>11=") in one message, or None."""
    i = msg.find(tag)
    if i < 0:
        return None
    i += len(tag)
    return msg[i : msg.find(b"\x01", i)]


def report_fields(msg: bytes) -> tuple[bytes, str, bytes, bytes] | None:
    """(ExecType, ClOrdID, Text, OrderID) of an ExecutionReport; None for another message."""
    if _REPORT not in msg:
        return None
    clid = field(msg, b"\x0111=")
    return (
        field(msg, b"\x01150=") or b"",
        clid.decode("latin-1") if clid is not None else "",
        field(msg, b"\x0158=") or b"",
        field(msg, b"\x0137=") or b"",
    )


class _FixConnection(asyncio.Protocol):
    def __init__(self, driver: FixDriver, comp_id: str) -> None:
        self.driver = driver
        self.comp_id = comp_id
        self.parser = FixParser()  # the session messages (not ExecutionReports)
        self.buf = bytearray()
        self.seq = 0
        self.transport: asyncio.Transport | None = None
        # The ClOrdIDs this connection sent and not yet answered: a FIX session receives the
        # execution reports of its whole account (every session and protocol of it).
        self.pending: set[str] = set()
        self.logged_on = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def next_header(self) -> tuple[int, str]:
        self.seq += 1
        return self.seq, utc_timestamp(time.time())

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        messages, used = framed(buf)
        del buf[:used]
        now = time.perf_counter_ns()
        on_ack = self.driver.on_ack
        pending = self.pending
        for raw in messages:
            report = report_fields(raw)
            if report is None:
                self._session_message(raw)
                continue
            exec_type, clid, text, order_id = report
            if exec_type in (b"0", b"8") and clid in pending:
                pending.discard(clid)
                index = clid.rsplit("-", 1)[-1]
                if index.isdigit():
                    shed = exec_type == b"8" and text.startswith(b"OVERLOADED")
                    oid = int(order_id) if exec_type == b"0" and order_id.isdigit() else 0
                    reason = text.decode("latin-1") if text else None
                    on_ack(int(index), exec_type == b"0", now, shed, reason, oid)

    def _session_message(self, raw: bytes) -> None:
        self.parser.receive_data(raw)
        for msg in self.parser.events():
            if not isinstance(msg, FixMessage):
                continue
            kind = msg.msg_type
            if kind == "A" and not self.logged_on.done():
                self.logged_on.set_result(True)
            elif kind == "5" and not self.logged_on.done():
                self.logged_on.set_exception(ConnectionError(f"logon refused: {msg.get(58)}"))
            elif kind == "1":  # TestRequest: answer with a Heartbeat
                seq, ts = self.next_header()
                self.transport.write(
                    encode_message("0", self.comp_id, "LOOM", seq, ts, [(112, msg.get(112, ""))])
                )


class FixDriver:
    def __init__(
        self,
        host: str,
        port: int,
        api_key: str,
        connections: int = 1,
        hold: bool = False,
        comp_ids: list[str] | None = None,
        max_in_flight: int = 0,
        account: str | None = None,
    ) -> None:
        self.host, self.port, self.api_key, self.n = host, port, api_key, connections
        self.hold = hold
        self.max_in_flight = max_in_flight  # per connection, with hold (engine.load.backpressure)
        self.comp_ids = comp_ids  # SenderCompIDs bound to the account (more than 16 sessions)
        self.account = account  # the key's account (default: a load account's)
        self.conns: list[_FixConnection] = []
        self.on_ack = None
        self._next = 0

    async def connect(self, on_ack) -> None:
        from engine.load.spawn import LOAD_ACCOUNTS

        self.on_ack = on_ack
        account = self.account or LOAD_ACCOUNTS.get(self.api_key, "load-a")
        loop = asyncio.get_running_loop()
        for i in range(self.n):
            comp = self.comp_ids[i] if self.comp_ids else f"LOAD{i}-{int(time.time() * 1000) % 10**8}"
            _t, conn = await loop.create_connection(
                lambda c=comp: _FixConnection(self, c), self.host, self.port
            )
            seq, ts = conn.next_header()
            logon = [(98, 0), (108, 30), (141, "Y"), (553, account), (554, self.api_key)]
            conn.transport.write(encode_message("A", comp, "LOOM", seq, ts, logon))
            await asyncio.wait_for(conn.logged_on, 10)
            if self.hold:
                limit_send_buffer(conn.transport)
            self.conns.append(conn)

    def send(self, orders) -> int:
        per: dict[int, list[bytes]] = {}
        held = 0
        cap = self.max_in_flight
        free = [room(self.hold, c.transport, len(c.pending), cap, len(orders)) for c in self.conns]
        if not any(free):  # every connection holds: nothing to build or route
            return len(orders)
        for k in range(len(orders)):
            c = self._next
            self._next = (c + 1) % self.n
            if free[c] <= 0:  # not sent: no sequence number spent
                held += 1
                continue
            free[c] -= 1
            o = orders[k]  # built only now (engine.load.runner.OrderBatch)
            conn = self.conns[c]
            seq, ts = conn.next_header()
            body = [
                (11, o.client_order_id),
                (55, "LOAD-USD"),
                (54, _SIDE[o.side]),
                (60, ts),
                (38, o.qty),
                (40, "2"),
                (44, o.price),
                (59, _TIF[o.tif]),
            ]
            per.setdefault(c, []).append(encode_message("D", conn.comp_id, "LOOM", seq, ts, body))
            conn.pending.add(o.client_order_id)
        for c, frames in per.items():
            self.conns[c].transport.write(b"".join(frames))
        return held

    async def close(self) -> None:
        for conn in self.conns:
            conn.transport.close()
