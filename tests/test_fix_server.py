"""The asyncio FIX acceptor over real loopback sockets: bad and silent connections,
heartbeat timers, order flow in arbitrary TCP chunks, and a clean shutdown."""

from __future__ import annotations

import asyncio
from pathlib import Path

from engine.auth import Accounts
from engine.core.domain import Instrument
from engine.core.order_store import OrderStore
from engine.exchange import ExchangeNode, NodeConfig
from engine.gateways.fix.codec import FixMessage, FixParser, encode_message, utc_timestamp
from engine.gateways.fix.server import fix_gateway, start_fix_server, stop_fix_server
from engine.gateways.fix.session import SessionConfig
from engine.routing import ExecutionRouter
from engine.service import ExchangeService

SYMBOL = "BTC-USD"
KEY = "alice-key-0123456789abcdef"
WAIT = 5.0


class Peer:
    """A minimal FIX client on a raw socket, built from the codec."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, comp_id: str) -> None:
        self.reader, self.writer, self.comp_id = reader, writer, comp_id
        self.parser = FixParser()
        self.seq = 1
        self.pending: list[FixMessage] = []

    @classmethod
    async def connect(cls, port: int, comp_id: str = "RAW1") -> Peer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, comp_id)

    def encode(self, msg_type: str, body=()) -> bytes:
        seq, self.seq = self.seq, self.seq + 1
        return encode_message(msg_type, self.comp_id, "LOOM", seq, utc_timestamp(0), body)

    async def send(self, msg_type: str, body=()) -> None:
        self.writer.write(self.encode(msg_type, body))
        await self.writer.drain()

    async def receive(self, msg_type: str | None = None) -> FixMessage:
        """The next message (of a type), waiting at most WAIT seconds."""
        async with asyncio.timeout(WAIT):
            while True:
                for i, msg in enumerate(self.pending):
                    if msg_type is None or msg.msg_type == msg_type:
                        return self.pending.pop(i)
                data = await self.reader.read(65536)
                assert data, "connection closed"
                self.parser.receive_data(data)
                self.pending += [e for e in self.parser.events() if isinstance(e, FixMessage)]

    async def closed_by_server(self) -> bool:
        async with asyncio.timeout(WAIT):
            while await self.reader.read(65536):
                pass
        return True

    async def logon(self, hb: int = 30) -> FixMessage:
        await self.send("A", [(98, 0), (108, hb), (553, "alice"), (554, KEY)])
        return await self.receive("A")

    def close(self) -> None:
        self.writer.close()


async def start(tmp_path: Path, **config):
    node = ExchangeNode(
        NodeConfig(
            tmp_path / "node",
            instruments=(Instrument(SYMBOL, tick_size=5),),
            snapshot_every_commands=0,
            snapshot_every_s=0,
        )
    )
    service = ExchangeService(node)
    orders, router = OrderStore(), ExecutionRouter()
    service.add_listener(orders.on_batch)
    service.add_listener(router.on_batch)
    service.start()
    server = await start_fix_server(
        service,
        router,
        orders,
        Accounts({KEY: "alice"}),
        "127.0.0.1",
        0,
        tmp_path / "fix",
        heartbeat_timeout=config.pop("heartbeat_timeout", 10.0),
        config=SessionConfig(**config),
        timer_interval=0.05,
    )
    return node, service, server, server.sockets[0].getsockname()[1]


async def stop(node, service, server) -> None:
    try:
        await stop_fix_server(server, timeout=2.0)
    finally:
        await service.stop()
        node.close()


def test_bad_and_silent_connections_are_dropped_and_the_server_carries_on(tmp_path):
    async def main():
        node, service, server, port = await start(tmp_path, logon_timeout=0.3)
        try:
            junk = await Peer.connect(port)
            junk.writer.write(b"\x16\x03\x01 this is not FIX\r\n")  # e.g. a TLS hello
            assert await junk.closed_by_server()
            silent = await Peer.connect(port)
            assert await silent.closed_by_server()  # no Logon within logon_timeout
            good = await Peer.connect(port)
            reply = await good.logon()
            assert reply[108] == "30" and reply[56] == "RAW1"
            assert list(fix_gateway(server).sessions) == ["RAW1"]
            good.close()
        finally:
            await stop(node, service, server)

    asyncio.run(main())


def test_heartbeats_and_a_test_request_then_a_silent_client_is_dropped(tmp_path):
    async def main():
        node, service, server, port = await start(tmp_path, heartbeat_timeout=0.5)
        try:
            peer = await Peer.connect(port)
            await peer.logon(hb=1)
            assert (await peer.receive()).msg_type == "0"  # heartbeat after 1 s of quiet
            test_request = await peer.receive("1")
            assert test_request[112].startswith("TEST-")
            logout = await peer.receive("5")
            assert "no answer to TestRequest" in logout[58]
            assert await peer.closed_by_server()
        finally:
            await stop(node, service, server)

    asyncio.run(main())


def test_orders_in_arbitrary_chunks_and_a_clean_shutdown(tmp_path):
    async def main():
        node, service, server, port = await start(tmp_path)
        stopped = False
        try:
            peer = await Peer.connect(port)
            await peer.logon()
            data = peer.encode("D", [(11, "o1"), (55, SYMBOL), (54, "1"), (38, 3), (40, "2"), (44, "100.0")])
            data += peer.encode("1", [(112, "ping")])
            for i in range(0, len(data), 7):  # seven bytes at a time
                peer.writer.write(data[i : i + 7])
                await peer.writer.drain()
            report = await peer.receive("8")
            assert report[150] == "0" and report[11] == "o1" and report[44] == "100"
            assert (await peer.receive("0"))[112] == "ping"

            # Shutdown: the server logs the client out and waits for its answer.
            stopping = asyncio.ensure_future(stop(node, service, server))
            logout = await peer.receive("5")
            assert logout[58] == "the exchange is shutting down"
            await peer.send("5")
            await asyncio.wait_for(stopping, WAIT)
            stopped = True
            assert await peer.closed_by_server()
            numbers = (tmp_path / "fix" / "RAW1" / "seqnums").read_text().split()
            assert [int(n) for n in numbers] == [5, 5]  # sent A, 8, 0, 5; received A, D, 1, 5
        finally:
            if not stopped:
                await stop(node, service, server)

    asyncio.run(main())
