"""Interoperability with a real FIX engine: the QuickFIX Python client (initiator only)
against a real exchange node, service, router, order store and the FIX server on a free
loopback port. QuickFIX validates everything it receives against its FIX 4.4 data
dictionary, so a malformed reply from us would show up as a Reject or a dropped session.

The exchange runs on an asyncio loop in a background thread; QuickFIX runs its own
threads. Its callbacks feed a queue that the test polls with timeouts (no fixed sleeps).
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import quickfix as fix
import quickfix44 as fix44
from waiting import wait_until

from engine.auth import Accounts
from engine.core.commands import NewOrder
from engine.core.domain import Instrument, OrderType, Side
from engine.core.order_store import OrderStore
from engine.exchange import ExchangeNode, NodeConfig
from engine.gateways.fix.codec import FixMessage, FixParser
from engine.gateways.fix.server import fix_gateway, start_fix_server, stop_fix_server
from engine.gateways.fix.session import FixSession
from engine.routing import ExecutionRouter
from engine.service import ExchangeService

SYMBOL = "BTC-USD"
INSTRUMENT = Instrument(SYMBOL, tick_size=5, lot_size=1, min_qty=1, max_qty=1_000_000)
KEY_ALICE = "alice-key-0123456789abcdef"
KEY_BOB = "bob-key-0123456789abcdef00"
CLIENT = "QFCLIENT"
TIMEOUT = 15.0


class Exchange:
    """Node + service + order store + router + FIX server on a loop in a thread."""

    def __init__(self, data_dir: Path, store_dir: Path, port: int = 0) -> None:
        self.data_dir, self.store_dir, self.port = data_dir, store_dir, port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="exchange", daemon=True)
        self.server = None
        self.node = None

    def call(self, coro, timeout: float = TIMEOUT):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> Exchange:
        self.thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        self.node = ExchangeNode(
            NodeConfig(
                self.data_dir, instruments=(INSTRUMENT,), snapshot_every_commands=0, snapshot_every_s=0
            )
        )
        self.service = ExchangeService(self.node)
        self.orders = OrderStore()
        self.router = ExecutionRouter()
        for listener in (self.orders.on_batch, self.router.on_batch):
            self.service.add_listener(listener)
        self.service.start()
        accounts = Accounts({KEY_ALICE: "alice", KEY_BOB: "bob"})
        self.server = await start_fix_server(
            self.service,
            self.router,
            self.orders,
            accounts,
            "127.0.0.1",
            self.port,
            self.store_dir,
            heartbeat_timeout=5.0,
            timer_interval=0.1,
        )
        self.port = self.server.sockets[0].getsockname()[1]

    def submit(self, *commands) -> list[list]:
        return self.call(self.service.submit(list(commands)))

    def session(self, comp_id: str = CLIENT) -> FixSession | None:
        async def get():
            return fix_gateway(self.server).sessions.get(comp_id)

        return self.call(get())

    def inspect(self, fn: Callable[[], object]):
        """Run `fn` on the exchange's loop (the session objects live there)."""

        async def run():
            return fn()

        return self.call(run())

    def stop(self) -> None:
        try:
            if self.thread.is_alive():
                self.call(self._stop(), timeout=30)
        finally:
            if self.thread.is_alive():
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(10)
            self.loop.close()

    async def _stop(self) -> None:
        try:
            if self.server is not None:
                await stop_fix_server(self.server, timeout=5.0)
        finally:
            if self.node is not None:
                await self.service.stop()
                self.node.close()


class Client(fix.Application):
    """A QuickFIX application that logs on as alice and reports everything to a queue."""

    def __init__(self) -> None:
        super().__init__()
        self.events: queue.Queue[tuple[str, FixMessage | None]] = queue.Queue()
        self.seen: list[tuple[str, FixMessage | None]] = []
        self.session_id = None

    @staticmethod
    def _parse(message) -> FixMessage:
        parser = FixParser()
        parser.receive_data(message.toString().encode("latin-1"))
        parsed = parser.next_event()
        assert isinstance(parsed, FixMessage), parsed
        return parsed

    def onCreate(self, session_id) -> None:
        self.session_id = session_id

    def onLogon(self, session_id) -> None:
        self.events.put(("logon", None))

    def onLogout(self, session_id) -> None:
        self.events.put(("logout", None))

    def toAdmin(self, message, session_id) -> None:
        if message.getHeader().getField(35) == "A":
            message.setField(553, "alice")
            message.setField(554, KEY_ALICE)

    def fromAdmin(self, message, session_id) -> None:
        self.events.put(("admin", self._parse(message)))

    def toApp(self, message, session_id) -> None:
        pass

    def fromApp(self, message, session_id) -> None:
        self.events.put(("app", self._parse(message)))

    # -- test helpers -----------------------------------------------------------------

    def wait_for(
        self, what: str, predicate: Callable[[FixMessage | None], bool] = lambda m: True
    ) -> FixMessage:
        deadline = time.monotonic() + TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; seen {self.seen[-10:]}")
            try:
                kind, msg = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append((kind, msg))
            if kind == what and predicate(msg):
                return msg  # type: ignore[return-value]

    def report(self, clid: str, exec_type: str) -> FixMessage:
        return self.wait_for(
            "app", lambda m: m.msg_type == "8" and m.get(11) == clid and m[150] == exec_type and 43 not in m
        )

    def send(self, message) -> None:
        assert fix.Session.sendToTarget(message, self.session_id)

    @property
    def session(self):
        return fix.Session.lookupSession(self.session_id)


def new_order(clid: str, side: str, qty: int, price: int):
    msg = fix44.NewOrderSingle()
    msg.setField(fix.ClOrdID(clid))
    msg.setField(fix.Symbol(SYMBOL))
    msg.setField(fix.Side(side))
    msg.setField(fix.TransactTime())
    msg.setField(fix.OrderQty(qty))
    msg.setField(fix.OrdType(fix.OrdType_LIMIT))
    msg.setField(fix.Price(price))
    msg.setField(fix.TimeInForce(fix.TimeInForce_GOOD_TILL_CANCEL))
    return msg


def cancel_replace(clid: str, orig: str, qty: int, price: int):
    msg = fix44.OrderCancelReplaceRequest()
    msg.setField(fix.OrigClOrdID(orig))
    msg.setField(fix.ClOrdID(clid))
    msg.setField(fix.Symbol(SYMBOL))
    msg.setField(fix.Side(fix.Side_BUY))
    msg.setField(fix.TransactTime())
    msg.setField(fix.OrdType(fix.OrdType_LIMIT))
    msg.setField(fix.OrderQty(qty))
    msg.setField(fix.Price(price))
    return msg


def cancel(clid: str, orig: str):
    msg = fix44.OrderCancelRequest()
    msg.setField(fix.OrigClOrdID(orig))
    msg.setField(fix.ClOrdID(clid))
    msg.setField(fix.Symbol(SYMBOL))
    msg.setField(fix.Side(fix.Side_BUY))
    msg.setField(fix.TransactTime())
    return msg


def make_test_request(test_id: str):
    msg = fix44.TestRequest()
    msg.setField(fix.TestReqID(test_id))
    return msg


def data_dictionary() -> Path | None:
    """FIX44.xml as installed by the quickfix wheel (under the environment's prefix)."""
    for base in (Path(sys.prefix), Path(sys.base_prefix)):
        path = base / "share" / "quickfix" / "FIX44.xml"
        if path.exists():
            return path
    return None


def make_initiator(app: Client, tmp_path: Path, port: int) -> fix.SocketInitiator:
    dictionary = data_dictionary()
    validation = (
        f"UseDataDictionary=Y\nDataDictionary={dictionary}\n" if dictionary else "UseDataDictionary=N\n"
    )
    config = tmp_path / "initiator.cfg"
    config.write_text(
        "[DEFAULT]\n"
        "ConnectionType=initiator\n"
        "ReconnectInterval=1\n"
        f"FileStorePath={tmp_path / 'qf-store'}\n"
        f"FileLogPath={tmp_path / 'qf-log'}\n"
        "StartTime=00:00:00\n"
        "EndTime=00:00:00\n"
        "HeartBtInt=30\n"
        "LogoutTimeout=5\n"
        f"{validation}"
        "SocketConnectHost=127.0.0.1\n"
        f"SocketConnectPort={port}\n"
        "\n[SESSION]\n"
        "BeginString=FIX.4.4\n"
        f"SenderCompID={CLIENT}\n"
        "TargetCompID=LOOM\n"
    )
    settings = fix.SessionSettings(str(config))
    return fix.SocketInitiator(app, fix.FileStoreFactory(settings), settings, fix.FileLogFactory(settings))


def wait_synced(exchange: Exchange, server_session: FixSession, session) -> None:
    """Both sides agree on both sequence numbers: nothing is in flight or half-processed
    (QuickFIX counts a message only after its callbacks return)."""

    def numbers():
        return server_session.expected, server_session.store.next_sender_seq

    wait_until(
        "client and server to agree on the sequence numbers",
        lambda: exchange.inspect(numbers) == (session.getExpectedSenderNum(), session.getExpectedTargetNum()),
        timeout=TIMEOUT,
        interval=0.01,
    )


def test_quickfix_client_trades_through_the_gateway(tmp_path):
    exchange = Exchange(tmp_path / "node", tmp_path / "fix-store")
    initiator = None
    try:
        exchange.start()
        exchange.submit(NewOrder("bob", "b1", SYMBOL, int(Side.SELL), int(OrderType.LIMIT), 100, 4))
        app = Client()
        initiator = make_initiator(app, tmp_path, exchange.port)
        initiator.start()

        # Logon.
        app.wait_for("logon")
        server_session = exchange.session()
        assert server_session is not None and exchange.inspect(lambda: server_session.account) == "alice"

        # NewOrderSingle: acknowledged, then filled in part against bob's resting sell.
        app.send(new_order("o1", fix.Side_BUY, 10, 100))
        ack = app.report("o1", "0")
        assert ack[39] == "0" and ack[151] == "10" and ack[14] == "0" and ack[1] == "alice"
        fill = app.report("o1", "F")
        assert (fill[31], fill[32], fill[14], fill[151], fill[39]) == ("100", "4", "4", "6", "1")
        assert fill[37] == ack[37]

        # Another account hits the rest of the resting order: reported through the router.
        exchange.submit(NewOrder("bob", "b2", SYMBOL, int(Side.SELL), int(OrderType.LIMIT), 100, 2))
        fill = app.report("o1", "F")
        assert (fill[32], fill[14], fill[151], fill[6]) == ("2", "6", "4", "100")

        # Cancel/replace: 10 -> 8 at 95, renamed o1 -> o1-r1.
        app.send(cancel_replace("o1-r1", "o1", 8, 95))
        replaced = app.report("o1-r1", "5")
        assert (replaced[41], replaced[38], replaced[44], replaced[151], replaced[14]) == (
            "o1",
            "8",
            "95",
            "2",
            "6",
        )

        # Cancel.
        app.send(cancel("c1", "o1-r1"))
        cancelled = app.report("c1", "4")
        assert cancelled[41] == "o1-r1" and cancelled[39] == "4" and cancelled[151] == "0"
        assert cancelled[37] == ack[37]

        # Forced gap, server to client: the client forgets our last three messages, sees the
        # next one too high, asks for a resend and gets the reports again as PossDup.
        session = app.session
        wait_synced(exchange, server_session, session)
        expected = session.getExpectedTargetNum()
        session.setNextTargetMsgSeqNum(expected - 3)
        app.send(make_test_request("gap-1"))
        copies = [
            app.wait_for(
                "app", lambda m, seq=seq: m.msg_type == "8" and m.get(43) == "Y" and m.seq_num == seq
            )
            for seq in range(expected - 3, expected)
        ]
        assert [c[150] for c in copies] == ["F", "5", "4"]
        assert all(c[122] <= c[52] for c in copies)  # OrigSendingTime kept, SendingTime new
        assert copies[-1][17] == cancelled[17]  # the very same execution, ExecID and all
        wait_synced(exchange, server_session, session)

        # Forced gap, client to server: the client skips five numbers; the server asks for a
        # resend, QuickFIX gap-fills, and the order in the gap's wake is processed once.
        sender = session.getExpectedSenderNum()
        session.setNextSenderMsgSeqNum(sender + 5)
        app.send(new_order("o2", fix.Side_BUY, 3, 90))
        assert app.report("o2", "0")[151] == "3"
        wait_synced(exchange, server_session, session)
        stats = exchange.inspect(lambda: dict(server_session.stats))
        assert stats["resend_requests_sent"] >= 1 and stats["resend_requests_received"] >= 1
        assert stats.get("received.3", 0) == 0  # QuickFIX never rejected anything we sent
        o2 = exchange.inspect(
            lambda: [o for o in exchange.orders.open_orders("alice") if o.client_order_id == "o2"]
        )
        assert len(o2) == 1  # the PossDup resend of o2 was not a second order

        # Logout handshake.
        initiator.stop()
        initiator = None
        app.wait_for("admin", lambda m: m.msg_type == "5")
        app.wait_for("logout")
        wait_until(
            "the server session to close",
            lambda: exchange.inspect(lambda: server_session.closed),
            timeout=TIMEOUT,
            interval=0.01,
        )
        assert exchange.inspect(lambda: server_session.close_reason).startswith(
            "logout requested by the counterparty"
        )
    finally:
        if initiator is not None:
            initiator.stop()
        exchange.stop()


def test_quickfix_client_resumes_its_session_after_an_exchange_restart(tmp_path):
    exchange = Exchange(tmp_path / "node", tmp_path / "fix-store").start()
    port = exchange.port
    initiator = None
    try:
        app = Client()
        initiator = make_initiator(app, tmp_path, port)
        initiator.start()
        app.wait_for("logon")
        app.send(new_order("r1", fix.Side_BUY, 5, 100))
        ack = app.report("r1", "0")

        # The exchange shuts down: the gateway logs the client out; QuickFIX keeps retrying.
        exchange.stop()
        app.wait_for("logout")
        exchange = Exchange(tmp_path / "node", tmp_path / "fix-store", port).start()

        app.wait_for("logon")  # no sequence reset: the numbers carried on
        session = app.session
        server_session = exchange.session()
        wait_synced(exchange, server_session, session)
        assert session.getExpectedSenderNum() > 3 and session.getExpectedTargetNum() > 3

        # Ask for everything again: the report from before the restart comes back from the
        # gateway's store, as a PossDup copy of the same execution.
        session.setNextTargetMsgSeqNum(1)
        app.send(make_test_request("after-restart"))
        copy = app.wait_for("app", lambda m: m.msg_type == "8" and m.get(43) == "Y" and m.get(11) == "r1")
        assert copy[17] == ack[17] and copy[37] == ack[37] and copy.seq_num == ack.seq_num

        # And the order placed before the restart is still there to cancel.
        app.send(cancel("rc1", "r1"))
        cancelled = app.report("rc1", "4")
        assert cancelled[37] == ack[37] and cancelled[41] == "r1" and cancelled[151] == "0"
    finally:
        if initiator is not None:
            initiator.stop()
        exchange.stop()
