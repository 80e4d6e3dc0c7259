"""The FIX session state machine, driven with bytes and no sockets, against a real
exchange node (journal on disk), order store and execution router. Commands the session
produces are submitted synchronously, the way the service's commit loop does it: the
batch is journaled, then the listeners (order store, router) see its events, then the
submitter is told the batch is settled."""

from __future__ import annotations

import errno
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.auth import Accounts
from engine.core.commands import NewOrder, Transfer
from engine.core.domain import Asset, Instrument, OrderType, Side, TransferKind
from engine.core.order_store import OrderStore
from engine.exchange import ExchangeNode, NodeConfig
from engine.gateways.fix.codec import FixMessage, FixParser, encode_message, utc_timestamp
from engine.gateways.fix.session import HANDLERS, TRANSITIONS, FixSession, SessionConfig, SessionEnv, State
from engine.gateways.fix.store import DEFAULT_MAX_MESSAGES, FileStore, MemoryStore, store_dir_name
from engine.routing import ExecutionRouter

SYMBOL = "BTC-USD"
INSTRUMENT = Instrument(SYMBOL, tick_size=5, lot_size=1, min_qty=1, max_qty=1_000_000)
KEY_ALICE = "alice-key-0123456789abcdef"
KEY_BOB = "bob-key-0123456789abcdef00"
KEY_CAROL = "carol-key-0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


# The same symbol with money: credit checks on, a 10 bps maker rebate and a 20 bps taker fee.
MONEY_INSTRUMENT = msgspec.structs.replace(
    INSTRUMENT, base="BTC", quote="USD", maker_fee_bps=-10, taker_fee_bps=20
)
MONEY = {
    "assets": (Asset("USD", 0), Asset("BTC", 0)),
    "instruments": (MONEY_INSTRUMENT,),
    "credit_checks": True,
    "fee_account": "fees",
}


class Exchange:
    def __init__(self, data_dir: Path, money: bool = False) -> None:
        setup = MONEY if money else {"instruments": (INSTRUMENT,)}
        self.node = ExchangeNode(NodeConfig(data_dir, snapshot_every_commands=0, snapshot_every_s=0, **setup))
        self.orders = OrderStore()
        self.router = ExecutionRouter()

    def submit(self, commands: list) -> list[list]:
        results = self.node.submit(commands)
        self.orders.on_batch(commands, results)
        self.router.on_batch(commands, results)
        return results

    def rest(self, account: str, side: Side, price: int, qty: int, clid: str) -> int:
        (events,) = self.submit(
            [NewOrder(account, clid, SYMBOL, int(side), int(OrderType.LIMIT), price, qty)]
        )
        return events[0].order_id

    @property
    def last_seq(self) -> int:
        return self.node.engine.last_seq

    def close(self) -> None:
        self.node.close()


class Gateway:
    def __init__(
        self, exchange: Exchange, store_dir: Path, clock: Clock, config: SessionConfig | None = None
    ):
        self.exchange = exchange
        self.store_dir = store_dir
        self.store_max = DEFAULT_MAX_MESSAGES  # messages kept for resend per session
        self.clock = clock
        self.config = config or SessionConfig()
        self.accounts = Accounts({KEY_ALICE: "alice", KEY_BOB: "bob", KEY_CAROL: "carol"})
        self.live: dict[str, FixSession] = {}

    def _claim(self, comp_id: str, session: FixSession) -> bool:
        if comp_id in self.live:
            return False
        self.live[comp_id] = session
        return True

    def _release(self, comp_id: str, session: FixSession) -> None:
        if self.live.get(comp_id) is session:
            del self.live[comp_id]

    def connect(self, comp_id: str = "CLIENT1", seq: int = 1) -> Client:
        env = SessionEnv(
            authenticate=self.accounts.authenticate,
            open_store=lambda c: FileStore(self.store_dir, c, max_messages=self.store_max),
            order_lookup=self.exchange.orders.get,
            claim=self._claim,
            release=self._release,
            wall_clock=self.clock,
            monotonic=self.clock,
        )
        return Client(self, FixSession(env, self.config), comp_id, seq)


class Client:
    """One FIX connection as a client sees it: sends encoded messages, reads the replies."""

    def __init__(self, gw: Gateway, session: FixSession, comp_id: str, seq: int) -> None:
        self.gw = gw
        self.session = session
        self.comp_id = comp_id
        self.seq = seq
        self.parser = FixParser()
        self.unsubscribe = None
        self.received: list[FixMessage] = []

    def encode(self, msg_type: str, body=(), *, seq: int | None = None, **kw) -> bytes:
        if seq is None:
            seq, self.seq = self.seq, self.seq + 1
        sender = kw.pop("sender", self.comp_id)
        target = kw.pop("target", "LOOM")
        return encode_message(msg_type, sender, target, seq, utc_timestamp(self.gw.clock()), body, **kw)

    def send(self, msg_type: str, body=(), **kw) -> list[FixMessage]:
        return self.send_raw(self.encode(msg_type, body, **kw))

    def send_raw(self, data: bytes) -> list[FixMessage]:
        self.session.receive_data(data)
        self.pump()
        return self.read()

    def pump(self) -> None:
        session = self.session
        if self.unsubscribe is None and session.account:
            self.unsubscribe = self.gw.exchange.router.subscribe(session.account, session.on_event)
        commands = session.take_commands()
        if commands:
            self.gw.exchange.submit(commands)
            session.submit_done(commands)

    def read(self) -> list[FixMessage]:
        self.parser.receive_data(self.session.data_to_send())
        out = []
        for event in self.parser.events():
            assert isinstance(event, FixMessage), event  # the server only sends valid FIX
            out.append(event)
        self.received += out
        return out

    def close(self) -> None:
        self.session.close()
        if self.unsubscribe is not None:
            self.unsubscribe()

    # -- conveniences -----------------------------------------------------------------

    def logon(self, account: str = "alice", key: str = KEY_ALICE, hb: int = 30, **kw) -> list[FixMessage]:
        body = [(98, 0), (108, hb), (553, account), (554, key), *kw.pop("extra", [])]
        return self.send("A", body, **kw)

    def order(
        self, clid: str, side: str = "1", qty: object = 10, price: object = 100, **kw
    ) -> list[FixMessage]:
        body = [
            (11, clid),
            (55, SYMBOL),
            (54, side),
            (60, utc_timestamp(self.gw.clock())),
            (38, qty),
            (40, "2"),
        ]
        if price is not None:
            body.append((44, price))
        body += kw.pop("extra", [])
        return self.send("D", body, **kw)

    def cancel(self, clid: str, orig: str | None = None, order_id: str | None = None) -> list[FixMessage]:
        body = [(11, clid), (55, SYMBOL), (54, "1"), (60, utc_timestamp(self.gw.clock()))]
        if orig is not None:
            body.append((41, orig))
        if order_id is not None:
            body.append((37, order_id))
        return self.send("F", body)

    def replace(
        self, clid: str, orig: str, qty: int | None = None, price: int | None = None
    ) -> list[FixMessage]:
        body = [
            (11, clid),
            (41, orig),
            (55, SYMBOL),
            (54, "1"),
            (40, "2"),
            (60, utc_timestamp(self.gw.clock())),
        ]
        if qty is not None:
            body.append((38, qty))
        if price is not None:
            body.append((44, price))
        return self.send("G", body)


def only(msgs: list[FixMessage], msg_type: str) -> FixMessage:
    found = [m for m in msgs if m.msg_type == msg_type]
    assert len(found) == 1, msgs
    return found[0]


def types(msgs: list[FixMessage]) -> list[str]:
    return [m.msg_type for m in msgs]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def exchange(tmp_path):
    ex = Exchange(tmp_path / "node")
    yield ex
    ex.close()


@pytest.fixture
def gw(exchange, tmp_path, clock) -> Gateway:
    return Gateway(exchange, tmp_path / "fix", clock)


@pytest.fixture
def alice(gw) -> Client:
    client = gw.connect()
    (reply,) = client.logon()
    assert reply.msg_type == "A"
    return client


# -- the tables -------------------------------------------------------------------------


def test_every_state_has_a_default_and_handlers_exist():
    for state, table in HANDLERS.items():
        assert "*" in table, state
        for handler in table.values():
            assert callable(getattr(FixSession, "_on_" + handler)), handler
    assert {s for s, _ in TRANSITIONS} == set(State)
    assert TRANSITIONS[(State.AWAIT_LOGON, "logon_accepted")] is State.ACTIVE
    assert HANDLERS[State.AWAIT_LOGON] == {"A": "logon", "*": "not_logged_on"}


# -- logon, heartbeats, logout ----------------------------------------------------------


def test_logon_is_answered_and_the_account_comes_from_it(gw):
    client = gw.connect()
    (reply,) = client.logon(hb=15)
    assert reply.msg_type == "A" and reply[98] == "0" and reply[108] == "15"
    assert reply[49] == "LOOM" and reply[56] == "CLIENT1" and reply.seq_num == 1
    assert client.session.state is State.ACTIVE and client.session.account == "alice"
    assert (gw.store_dir / "CLIENT1" / "account").read_text().strip() == "alice"


@pytest.mark.parametrize(
    "account, key",
    [("alice", "wrong-key-0123456789abcdef"), ("alice", KEY_BOB), ("alice", None), ("", KEY_ALICE)],
)
def test_wrong_credentials_get_a_logout_with_text_and_close(gw, account, key):
    client = gw.connect()
    body = [(98, 0), (108, 30)]
    if account:
        body.append((553, account))
    if key:
        body.append((554, key))
    (reply,) = client.send("A", body)
    assert reply.msg_type == "5" and reply[58] == "invalid Username (553) or Password (554)"
    assert client.session.closed and client.session.account == ""
    assert not (gw.store_dir / "CLIENT1").exists()  # nothing of the session was touched


def test_logon_with_a_bad_heartbeat_interval_or_target_is_refused(gw):
    client = gw.connect()
    (reply,) = client.logon(hb="abc")
    assert reply.msg_type == "5" and "HeartBtInt (108)" in reply[58] and client.session.closed
    client = gw.connect()
    (reply,) = client.logon(target="OTHER")
    assert reply.msg_type == "5" and "TargetCompID (56) must be LOOM" in reply[58]


def test_first_message_not_a_logon_closes_without_a_word(gw, exchange):
    client = gw.connect()
    assert client.order("o1") == []
    assert client.session.closed and "not a Logon" in client.session.close_reason
    assert exchange.last_seq == 1  # only the instrument listing


def test_garbage_before_logon_closes(gw):
    client = gw.connect()
    assert client.send_raw(b"GET / HTTP/1.1\r\n\r\n") == []
    assert client.session.closed and "unreadable input before Logon" in client.session.close_reason


def test_logon_timeout(gw, clock):
    client = gw.connect()
    clock.advance(9)
    client.session.on_timer()
    assert not client.session.closed
    clock.advance(1)
    client.session.on_timer()
    assert client.session.closed and "no Logon" in client.session.close_reason


def test_one_live_session_per_sender_comp_id(gw, alice):
    second = gw.connect()
    (reply,) = second.logon()
    assert reply.msg_type == "5" and reply[58] == "session CLIENT1 is already logged on"
    alice.close()
    third = gw.connect(seq=alice.seq)
    assert types(third.logon()) == ["A"]


def test_a_comp_id_belongs_to_the_account_that_first_used_it(gw, alice):
    alice.send("5")
    alice.close()
    intruder = gw.connect(seq=alice.seq)
    (reply,) = intruder.logon(account="bob", key=KEY_BOB)
    assert reply.msg_type == "5" and "belongs to another account" in reply[58]


def test_test_request_is_answered_with_its_id(alice):
    (reply,) = alice.send("1", [(112, "ping-42")])
    assert reply.msg_type == "0" and reply[112] == "ping-42"


def test_test_request_without_id_is_rejected(alice):
    (reply,) = alice.send("1")
    assert reply.msg_type == "3" and reply[373] == "1" and reply[371] == "112" and reply[45] == "2"


def test_heartbeats_test_request_and_timeout(gw, clock):
    client = gw.connect()
    client.logon(hb=10)
    session = client.session
    clock.advance(10)
    session.on_timer()
    assert types(client.read()) == ["0"]  # our heartbeat after HeartBtInt of quiet
    clock.advance(2)  # 12 s without hearing from the client: ask
    session.on_timer()
    (test_request,) = client.read()
    assert test_request.msg_type == "1" and test_request[112].startswith("TEST-")
    clock.advance(5)
    session.on_timer()
    assert not session.closed
    clock.advance(5)  # heartbeat_timeout (10 s) without an answer
    session.on_timer()
    (logout,) = client.read()
    assert logout.msg_type == "5" and "no answer to TestRequest" in logout[58] and session.closed


def test_an_answered_test_request_keeps_the_session(gw, clock):
    client = gw.connect()
    client.logon(hb=10)
    clock.advance(12)
    client.session.on_timer()
    test_request = only(client.read(), "1")
    client.send("0", [(112, test_request[112])])
    clock.advance(9)
    client.session.on_timer()
    assert client.session.state is State.ACTIVE


def test_logout_initiated_by_the_client(alice):
    (reply,) = alice.send("5", [(58, "bye")])
    assert reply.msg_type == "5" and alice.session.closed
    assert alice.session.close_reason == "logout requested by the counterparty: bye"


def test_logout_initiated_by_the_server(alice, clock):
    alice.session.logout("maintenance")
    (logout,) = alice.read()
    assert logout.msg_type == "5" and logout[58] == "maintenance"
    assert alice.session.state is State.LOGOUT_SENT
    assert alice.order("late") == []  # application messages are ignored while logging out
    assert alice.send("5") == [] and alice.session.closed
    assert alice.session.close_reason == "logout confirmed"


def test_unanswered_server_logout_times_out(alice, clock):
    alice.session.logout()
    clock.advance(5)
    alice.session.on_timer()
    assert alice.session.closed and "no answer to Logout" in alice.session.close_reason


def test_an_order_and_a_logout_in_one_read_are_answered_in_order(alice):
    data = alice.encode("D", [(11, "o1"), (55, SYMBOL), (54, "1"), (38, 5), (40, "2"), (44, 100)])
    data += alice.encode("5")
    replies = alice.send_raw(data)
    assert types(replies) == ["8", "5"] and replies[0][39] == "0"
    assert alice.session.closed


# -- orders and execution reports -------------------------------------------------------


def test_new_order_single_is_acknowledged(alice, exchange):
    (report,) = alice.order("o1", qty=10, price="100.00")
    assert report.msg_type == "8"
    assert report[150] == "0" and report[39] == "0" and report[11] == "o1"
    assert report[1] == "alice" and report[55] == SYMBOL and report[54] == "1" and report[40] == "2"
    assert report[38] == "10" and report[44] == "100" and report[59] == "1"
    assert report[151] == "10" and report[14] == "0" and report[6] == "0"
    view = exchange.orders.get(int(report[37]))
    assert view.account == "alice" and view.client_order_id == "o1" and view.price == 100


def test_the_account_in_the_message_never_overrides_the_logon(alice, exchange):
    (reject,) = alice.order("o1", extra=[(1, "bob")])
    assert reject.msg_type == "j" and reject[380] == "6" and reject[379] == "o1"
    assert "not this session's account" in reject[58]
    (report,) = alice.order("o2", extra=[(1, "alice")])
    assert report[150] == "0" and exchange.orders.get(int(report[37])).account == "alice"


def test_a_fill_against_another_accounts_resting_order(alice, exchange):
    exchange.rest("bob", Side.SELL, 100, 4, "b1")
    new, trade = alice.order("o1", qty=10, price=100)
    assert new[150] == "0"
    assert trade[150] == "F" and trade[39] == "1" and trade[11] == "o1"
    assert (trade[31], trade[32], trade[14], trade[151], trade[6]) == ("100", "4", "4", "6", "100")
    assert (trade[12], trade[13]) == ("0", "3")  # no credit checks: no fee


def test_a_resting_order_filled_by_others_gets_reports_from_the_router(alice, exchange):
    (new,) = alice.order("o1", side="2", qty=10, price=105)
    exchange.submit([NewOrder("bob", "b1", SYMBOL, int(Side.BUY), int(OrderType.LIMIT), 110, 3)])
    exchange.submit([NewOrder("bob", "b2", SYMBOL, int(Side.BUY), int(OrderType.LIMIT), 110, 7)])
    first, second = alice.read()
    assert (first[150], first[39], first[32], first[14], first[151]) == ("F", "1", "3", "3", "7")
    assert (second[150], second[39], second[32], second[14], second[151]) == ("F", "2", "7", "10", "0")
    assert second[37] == new[37] and first[17] != second[17]  # ExecIDs are unique


def test_fills_carry_their_fee_as_commission_tags_12_and_13(tmp_path, clock):
    exchange = Exchange(tmp_path / "node", money=True)
    try:
        deposits = [
            Transfer(f"{a}-{s}", a, s, int(TransferKind.DEPOSIT), 1_000_000)
            for a in ("alice", "bob")
            for s in ("USD", "BTC")
        ]
        exchange.submit(deposits)
        alice = Gateway(exchange, tmp_path / "fix", clock).connect()
        alice.logon()
        exchange.rest("bob", Side.SELL, 1_000, 4, "b1")
        _new, taker = alice.order("o1", qty=10, price=1_000)  # 4,000 USD: 20 bps = 8
        assert (taker[150], taker[12], taker[13]) == ("F", "8", "3")
        exchange.submit([NewOrder("bob", "b2", SYMBOL, int(Side.SELL), int(OrderType.LIMIT), 1_000, 6)])
        (maker,) = alice.read()  # alice's rest was the maker: 6,000 USD at -10 bps = a rebate of 6
        assert (maker[150], maker[12], maker[13]) == ("F", "-6", "3")
        fees = exchange.node.engine.ledger.balance("fees", "USD")
        assert fees is not None and fees.total == (8 - 4) + (
            12 - 6
        )  # each trade: taker fee less maker rebate
    finally:
        exchange.close()


def test_average_price_over_fills_at_different_prices(alice, exchange):
    exchange.rest("bob", Side.SELL, 100, 1, "b1")
    exchange.rest("bob", Side.SELL, 105, 2, "b2")
    _new, t1, t2 = alice.order("o1", qty=3, price=105)
    assert (t1[31], t1[6]) == ("100", "100")
    assert (t2[31], t2[14], t2[39], t2[6]) == ("105", "3", "2", "103.33333333")


def test_engine_rejections_become_rejected_execution_reports(alice):
    (report,) = alice.order("o1", price=101)  # off the 5-unit tick
    assert report[150] == "8" and report[39] == "8" and report[37] == "NONE" and report[11] == "o1"
    assert report[103] == "99" and report[58].startswith("PRICE_OFF_TICK")
    (dup,) = alice.order("o2")
    (again,) = alice.order("o2")
    assert dup[150] == "0" and again[150] == "8" and again[103] == "6"
    (unknown,) = alice.send("D", [(11, "o3"), (55, "NOPE"), (54, "1"), (38, 1), (40, "2"), (44, 5)])
    assert unknown[103] == "1" and unknown[55] == "NOPE"


def test_cancel_by_orig_cl_ord_id_and_by_order_id(alice):
    (first,) = alice.order("o1")
    (second,) = alice.order("o2")
    (cancelled,) = alice.cancel("c1", orig="o1")
    assert cancelled[150] == "4" and cancelled[39] == "4" and cancelled[11] == "c1" and cancelled[41] == "o1"
    assert cancelled[37] == first[37] and cancelled[151] == "0"
    (cancelled,) = alice.cancel("c2", order_id=second[37])
    assert cancelled[150] == "4" and cancelled[37] == second[37] and cancelled[11] == "c2"


def test_cancel_of_an_unknown_order_is_rejected(alice):
    (reject,) = alice.cancel("c1", orig="nope")
    assert reject.msg_type == "9" and reject[434] == "1" and reject[102] == "1"
    assert reject[11] == "c1" and reject[41] == "nope" and reject[39] == "8"
    assert reject[58].startswith("UNKNOWN_ORDER")


def test_cancel_without_orig_cl_ord_id_or_order_id_is_a_session_reject(alice):
    (reject,) = alice.cancel("c1")
    assert reject.msg_type == "3" and reject[373] == "1" and reject[371] == "41"


def test_cancel_and_replace_need_the_side(alice):
    alice.order("o1")
    (reject,) = alice.send("F", [(11, "c1"), (41, "o1"), (55, SYMBOL)])
    assert reject.msg_type == "3" and reject[373] == "1" and reject[371] == "54" and reject[372] == "F"
    (reject,) = alice.send("G", [(11, "o1-r"), (41, "o1"), (55, SYMBOL), (38, 5)])
    assert reject.msg_type == "3" and reject[371] == "54" and reject[372] == "G"


def test_cancel_replace_renames_and_changes_the_order(alice, exchange):
    (new,) = alice.order("o1", qty=10, price=100)
    (replaced,) = alice.replace("o1-r1", "o1", qty=8, price=95)
    assert replaced[150] == "5" and replaced[39] == "0"
    assert replaced[11] == "o1-r1" and replaced[41] == "o1" and replaced[37] == new[37]
    assert (replaced[38], replaced[44], replaced[151]) == ("8", "95", "8")
    view = exchange.orders.get(int(new[37]))
    assert (view.client_order_id, view.qty, view.price) == ("o1-r1", 8, 95)
    (too_late,) = alice.cancel("c1", orig="o1")  # the old ClOrdID no longer names it
    assert too_late.msg_type == "9" and too_late[102] in ("0", "1")
    (cancelled,) = alice.cancel("c2", orig="o1-r1")
    assert cancelled[150] == "4" and cancelled[41] == "o1-r1"


def test_cancel_replace_rejection(alice):
    alice.order("o1", qty=10, price=100)
    (reject,) = alice.replace("o1-r1", "o1", qty=10, price=100 + 1)
    assert reject.msg_type == "9" and reject[434] == "2" and reject[41] == "o1" and reject[39] == "0"
    assert reject[58].startswith("PRICE_OFF_TICK")


def test_a_replace_that_crosses_trades(alice, exchange):
    exchange.rest("bob", Side.SELL, 110, 4, "b1")
    alice.order("o1", qty=10, price=100)
    replaced, trade = alice.replace("o1-r1", "o1", price=110)
    assert replaced[150] == "5" and trade[150] == "F" and trade[11] == "o1-r1"
    assert (trade[32], trade[14], trade[151]) == ("4", "4", "6")


def test_orders_from_before_the_session_connected_are_reported_with_their_history(gw, exchange):
    first = gw.connect()
    first.logon()
    (new,) = first.order("o1", qty=10, price=100)
    exchange.submit([NewOrder("bob", "b1", SYMBOL, int(Side.SELL), int(OrderType.LIMIT), 100, 2)])
    assert first.read()[0][14] == "2"
    first.send("5")
    first.close()
    exchange.submit([NewOrder("bob", "b2", SYMBOL, int(Side.SELL), int(OrderType.LIMIT), 100, 3)])
    second = gw.connect(seq=first.seq)
    second.logon()
    exchange.submit([NewOrder("bob", "b3", SYMBOL, int(Side.SELL), int(OrderType.LIMIT), 100, 1)])
    (trade,) = second.read()
    assert trade[37] == new[37] and trade[11] == "o1"
    assert (trade[32], trade[14], trade[151], trade[39]) == ("1", "6", "4", "1")
    (cancelled,) = second.cancel("c1", orig="o1")
    assert cancelled[150] == "4" and cancelled[41] == "o1" and cancelled[14] == "6"


def test_orders_of_the_account_from_elsewhere_are_reported_too(alice, exchange):
    exchange.rest("alice", Side.BUY, 100, 5, "rest-1")  # e.g. placed over REST
    (report,) = alice.read()
    assert report[150] == "0" and report[11] == "rest-1"
    exchange.rest("bob", Side.BUY, 100, 5, "b1")
    assert alice.read() == []  # other accounts' orders are not ours to see


def test_an_unknown_outcome_is_a_rejection_naming_it(alice, exchange):
    exchange.node.journal.fail_writes(errno.EIO, at="fsync")
    exchange.node.journal.fail_cuts(errno.EIO)
    try:
        (report,) = alice.order("o1")
    finally:
        exchange.node.journal.fail_writes(None)
        exchange.node.journal.fail_cuts(None)
    assert report[150] == "8" and report[39] == "8" and report[11] == "o1"
    assert report[58].startswith("OUTCOME_UNKNOWN: ") and "nothing was done" not in report[58]
    (report,) = alice.order("o1")  # settled (cut off) before it: the resend is accepted
    assert report[150] == "0"


def test_a_batch_the_journal_refuses_is_a_rejection_with_a_clear_text(alice, exchange):
    exchange.node.journal.fail_writes()
    try:
        (report,) = alice.order("o1")
    finally:
        exchange.node.journal.fail_writes(None)
    assert report[150] == "8" and report[39] == "8" and report[11] == "o1"
    assert report[58].startswith("JOURNAL_WRITE_FAILED") and report[103] == "99"
    (report,) = alice.order("o1")  # safe to retry: it was not accepted
    assert report[150] == "0"


def test_a_failed_submission_is_answered(alice):
    data = alice.encode("D", [(11, "o1"), (55, SYMBOL), (54, "1"), (38, 5), (40, "2"), (44, 100)])
    data += alice.encode("F", [(11, "c1"), (41, "o0"), (54, "1")])
    alice.session.receive_data(data)
    commands = alice.session.take_commands()
    alice.session.submit_done(commands, RuntimeError("the exchange is shutting down"))
    reject, cancel_reject = alice.read()
    assert reject[150] == "8" and "not processed: the exchange is shutting down" in reject[58]
    assert cancel_reject.msg_type == "9" and cancel_reject[11] == "c1"


# -- malformed application messages ------------------------------------------------------


@pytest.mark.parametrize(
    "change, reason, tag, text",
    [
        ({44: "100.5"}, "5", "44", "must be a whole number"),
        ({44: "abc"}, "6", "44", "is not a number"),
        ({38: "1e3"}, "6", "38", "is not a number"),
        ({38: "10.25"}, "5", "38", "must be a whole number"),
        ({38: "99999999999999999999"}, "5", "38", "out of range"),
        ({54: "7"}, "5", "54", "is not supported"),
        ({40: "3"}, "5", "40", "is not supported"),
        ({59: "0"}, "5", "59", "is not supported"),
        ({55: None}, "1", "55", "Required tag missing: Symbol(55)"),
        ({11: None}, "1", "11", "Required tag missing: ClOrdID(11)"),
        ({44: None}, "1", "44", "Required tag missing: Price(44)"),
    ],
)
def test_malformed_orders_get_a_session_reject_and_never_reach_the_journal(
    alice, exchange, change, reason, tag, text
):
    fields = {11: "o1", 55: SYMBOL, 54: "1", 38: "10", 40: "2", 44: "100"}
    fields.update(change)
    before = exchange.last_seq
    (reject,) = alice.send("D", [(t, v) for t, v in fields.items() if v is not None])
    assert reject.msg_type == "3" and reject[373] == reason and reject[371] == tag and reject[372] == "D"
    assert text in reject[58] and reject[45] == str(alice.seq - 1)
    assert exchange.last_seq == before
    (ok,) = alice.order("o2")  # the session carries on
    assert ok[150] == "0"


def test_whole_numbers_with_a_zero_fraction_are_accepted(alice):
    (report,) = alice.order("o1", qty="7.000", price="100.")
    assert report[150] == "0" and report[38] == "7" and report[44] == "100"


def test_repeated_tag_is_rejected(alice):
    (reject,) = alice.order("o1", extra=[(55, "ETH-USD")])
    assert reject.msg_type == "3" and reject[373] == "13" and reject[371] == "55"


def test_unsupported_message_types_get_a_business_reject(alice):
    (reject,) = alice.send("V", [(262, "md1")])
    assert (
        reject.msg_type == "j" and reject[380] == "3" and reject[372] == "V" and "not supported" in reject[58]
    )


def test_bad_fields_in_a_framed_message_get_a_reject_and_use_up_the_number(alice):
    head = f"35=D\x0149=CLIENT1\x0156=LOOM\x0134={alice.seq}\x0152=20240101-00:00:00.000\x01"
    body = (head + "11=o1\x0155=\x01").encode()
    raw = b"8=FIX.4.4\x019=%d\x01" % len(body) + body
    raw += b"10=%03d\x01" % (sum(raw) % 256)
    alice.seq += 1
    (reject,) = alice.send_raw(raw)
    assert reject.msg_type == "3" and reject[373] == "4" and reject[371] == "55"
    assert types(alice.order("o2")) == ["8"]  # numbering carries on without a gap


def test_garbled_messages_are_ignored_and_show_up_as_a_gap(alice):
    raw = alice.encode("D", [(11, "o1"), (55, SYMBOL), (54, "1"), (38, 5), (40, "2"), (44, 100)])
    assert alice.send_raw(raw[:-4] + b"999\x01") == []  # bad checksum: dropped silently
    assert alice.session.stats["parse_error.bad_checksum"] == 1
    replies = alice.order("o2")
    assert types(replies) == ["2"] and replies[0][7] == str(alice.seq - 2) and replies[0][16] == "0"


def test_rate_limit_answers_with_a_business_reject(exchange, tmp_path, clock):
    gw = Gateway(exchange, tmp_path / "fix", clock, SessionConfig(rate=1, burst=2))
    client = gw.connect()
    client.logon()
    assert types(client.order("o1")) == ["8"]
    assert types(client.order("o2")) == ["8"]
    (reject,) = client.order("o3")
    assert reject.msg_type == "j" and reject[380] == "0" and reject[379] == "o3"
    assert "rate limit exceeded: at most 1 messages per second" in reject[58]
    clock.advance(1)
    assert only(client.order("o4"), "8")[150] == "0"


# -- sequence numbers ------------------------------------------------------------------


def test_msg_seq_num_too_low_logs_out(alice):
    (logout,) = alice.send("0", seq=1)
    assert logout.msg_type == "5" and logout[58] == "MsgSeqNum too low, expecting 2 but received 1"
    assert alice.session.closed


def test_poss_dup_below_the_expected_number_is_ignored(alice):
    assert alice.send("D", [(11, "x")], seq=1, poss_dup=True, orig_sending_time="20240101-00:00:00.000") == []
    assert alice.session.state is State.ACTIVE and alice.session.stats["duplicates_ignored"] == 1


def test_a_gap_asks_for_a_resend_and_queues_until_filled(alice):
    expected = alice.seq
    alice.seq += 3  # messages expected .. expected+2 are "lost"
    (resend,) = alice.order("o9")
    assert resend.msg_type == "2" and resend[7] == str(expected) and resend[16] == "0"
    # The client answers: a gap fill for what it will not resend, then the order again.
    assert alice.send("4", [(123, "Y"), (36, expected + 2)], seq=expected, poss_dup=True,
                      orig_sending_time=utc_timestamp(0)) == []  # fmt: skip
    report, queued = alice.order("o1", seq=expected + 2, poss_dup=True, orig_sending_time=utc_timestamp(0))
    assert report[11] == "o1" and report[150] == "0"
    assert queued[11] == "o9" and queued[150] == "0"  # held until the gap closed, then processed
    assert alice.session.expected == alice.seq
    assert types(alice.order("o10")) == ["8"]


def test_sequence_reset_mode_moves_the_expected_number_up_only(alice):
    assert alice.send("4", [(36, 50)], seq=999) == []
    assert alice.session.expected == 50
    (reject,) = alice.send("4", [(36, 10)], seq=50)
    assert reject.msg_type == "3" and reject[373] == "5" and reject[371] == "36"


def test_resend_request_resends_application_messages_and_gap_fills_admin(alice):
    alice.send("1", [(112, "t1")])  # server seq 2: heartbeat (admin)
    (new,) = alice.order("o1")  # server seq 3: execution report
    (cancelled,) = alice.cancel("c1", orig="o1")  # server seq 4: execution report
    replies = alice.send("2", [(7, 1), (16, 0)])
    assert types(replies) == ["4", "8", "8"]
    fill, again_new, again_cancelled = replies
    assert (fill.seq_num, fill[123], fill[36], fill[43]) == (1, "Y", "3", "Y")
    for original, copy in ((new, again_new), (cancelled, again_cancelled)):
        assert copy.seq_num == original.seq_num and copy[43] == "Y" and copy[122] == original[52]
        assert copy.body() == original.body()


def test_resend_of_a_closed_range(alice):
    alice.order("o1")
    alice.order("o2")
    (copy,) = alice.send("2", [(7, 3), (16, 3)])
    assert copy.seq_num == 3 and copy[11] == "o2" and copy[43] == "Y"


def test_only_the_newest_messages_are_kept_for_resend_older_ones_are_gap_filled(gw):
    gw.store_max = 2
    client = gw.connect()
    (reply,) = client.logon()
    assert reply.msg_type == "A"
    reports = [client.order(f"o{i}")[0] for i in range(5)]  # server seqs 2..6
    assert [r.seq_num for r in reports] == [2, 3, 4, 5, 6]
    # Five stored: beyond twice the limit, so the store was rewritten with the newest two.
    replies = client.send("2", [(7, 1), (16, 0)])
    assert types(replies) == ["4", "8", "8"]
    gap, *resent = replies
    assert (gap.seq_num, gap[123], gap[36]) == (1, "Y", "5")  # 1..4 skipped by a gap fill
    assert [(r.seq_num, r[11], r[43]) for r in resent] == [(5, "o3", "Y"), (6, "o4", "Y")]
    lines = (gw.store_dir / "CLIENT1" / "messages").read_bytes().count(b"\n")
    assert lines == 4  # two records of a header line and a message line each


def test_the_file_store_keeps_the_newest_messages_across_a_reopen(tmp_path):
    store = FileStore(tmp_path, "C", max_messages=3)
    for seq in range(1, 8):  # the 7th save passes 2 x 3: rewritten with 5, 6, 7
        store.save_message(seq, b"m%d" % seq)
    assert store.messages(1, 10) == [(5, b"m5"), (6, b"m6"), (7, b"m7")]
    store.save_message(8, b"m8")
    store.close()
    again = FileStore(tmp_path, "C", max_messages=3)
    assert again.messages(1, 10) == [(5, b"m5"), (6, b"m6"), (7, b"m7"), (8, b"m8")]
    assert not (tmp_path / "C" / "messages.tmp").exists()
    memory = MemoryStore(max_messages=3)
    for seq in range(1, 8):
        memory.save_message(seq, b"x")
    assert [s for s, _ in memory.messages(1, 10)] == [5, 6, 7]


def test_reset_seq_num_flag_starts_over(gw, alice):
    alice.order("o1")
    alice.send("5")
    alice.close()
    client = gw.connect(seq=1)
    (reply,) = client.logon(extra=[(141, "Y")])
    assert reply.msg_type == "A" and reply.seq_num == 1 and reply[141] == "Y"
    assert client.send("2", [(7, 1), (16, 0)])[0][36] == "2"  # nothing stored before the reset


def test_numbers_and_stored_messages_survive_an_exchange_restart(tmp_path, clock):
    exchange = Exchange(tmp_path / "node")
    gw = Gateway(exchange, tmp_path / "fix", clock)
    client = gw.connect()
    client.logon()
    (new,) = client.order("o1")
    client.send("5")
    client.close()
    exchange.close()

    exchange = Exchange(tmp_path / "node")  # recovery from the journal
    try:
        gw = Gateway(exchange, tmp_path / "fix", clock)
        low = gw.connect(seq=2)
        (refused,) = low.logon()
        assert (
            refused.msg_type == "5"
            and refused[58] == "Logon refused: MsgSeqNum too low, expecting 4 but received 2"
        )
        low.close()
        client = gw.connect(seq=4)
        (reply,) = client.logon()
        assert reply.msg_type == "A" and reply.seq_num == 5  # 1 logon, 2 report, 3 logout, 4 refusal
        replies = client.send("2", [(7, 1), (16, 0)])
        copy = only(replies, "8")
        assert copy.seq_num == new.seq_num and copy[43] == "Y" and copy.body() == new.body()
        assert [(m.seq_num, m[36]) for m in replies if m.msg_type == "4"] == [(1, "2"), (3, "6")]
        (cancelled,) = client.cancel("c1", order_id=new[37])
        assert cancelled[150] == "4"
    finally:
        exchange.close()


def test_a_logon_ahead_of_the_expected_number_asks_for_a_resend(gw, alice):
    alice.send("5")
    alice.close()
    client = gw.connect(seq=alice.seq + 2)
    logon, resend = client.logon()
    assert logon.msg_type == "A" and resend.msg_type == "2" and resend[7] == str(alice.seq)
    client.send("4", [(123, "Y"), (36, alice.seq + 3)], seq=alice.seq, poss_dup=True,
                orig_sending_time=utc_timestamp(0))  # fmt: skip
    assert client.session.expected == alice.seq + 3
    client.seq = alice.seq + 3
    assert types(client.order("o1")) == ["8"]


def test_comp_id_problem_rejects_and_logs_out(alice):
    replies = alice.send("0", sender="SOMEONE")
    assert types(replies) == ["3", "5"] and replies[0][373] == "9" and alice.session.closed


def test_reports_after_the_session_closed_are_kept_for_resend(gw, alice, exchange, clock):
    exchange.rest("bob", Side.BUY, 100, 10, "b1")
    session = alice.session
    session.receive_data(
        alice.encode("D", [(11, "o1"), (55, SYMBOL), (54, "2"), (38, 10), (40, "2"), (44, 100)])
    )
    commands = session.take_commands()
    # While the batch is being made durable, the client goes quiet and is dropped.
    clock.advance(36)
    session.on_timer()
    clock.advance(10)
    session.on_timer()
    assert session.closed
    exchange.submit(commands)
    session.submit_done(commands)
    assert types(alice.read()) == ["1", "5"]  # TestRequest, Logout: the reports were not sent...
    alice.close()
    client = gw.connect(seq=alice.seq)
    (logon,) = client.logon()
    assert logon.seq_num == 6  # ...but numbered 4 and 5 and stored
    new, fill = client.send("2", [(7, 4), (16, 5)])
    assert new[150] == "0" and new[43] == "Y" and new[11] == "o1"
    assert fill[150] == "F" and fill[39] == "2" and fill[14] == "10" and fill[43] == "Y"


def test_store_dir_names_are_safe_and_distinct(tmp_path):
    assert store_dir_name("CLIENT1") == "CLIENT1"
    odd = {store_dir_name(c) for c in ("..", "a/b", ".hidden", "=61", "a b", "x" * 100)}
    assert len(odd) == 6 and all("/" not in n and n not in (".", "..") for n in odd)


def test_a_torn_store_record_is_cut_off(tmp_path):
    store = FileStore(tmp_path, "C")
    store.save_message(1, b"first")
    store.save_message(2, b"second")
    store.set_seqnums(3, 7)
    store.close()
    path = tmp_path / "C" / "messages"
    path.write_bytes(path.read_bytes()[:-3])
    store = FileStore(tmp_path, "C")
    assert store.messages(1, 10) == [(1, b"first")]
    assert (store.next_sender_seq, store.next_target_seq) == (3, 7)
    store.save_message(3, b"third")
    store.close()
    assert FileStore(tmp_path, "C").messages(1, 10) == [(1, b"first"), (3, b"third")]


# -- fuzzing the session ---------------------------------------------------------------

ORDER_FIELDS = [(11, "f1"), (55, SYMBOL), (54, "1"), (38, "10"), (40, "2"), (44, "100"), (59, "1")]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_malformed_input_never_breaks_the_session_or_reaches_the_journal(gw, exchange, data):
    client = gw.connect(comp_id="FUZZ")
    client.logon(extra=[(141, "Y")])
    before = exchange.last_seq
    sequenced: set[str] = set()
    for _ in range(data.draw(st.integers(1, 4))):
        fields = [
            (tag, data.draw(st.one_of(st.just(value), st.text(min_size=1, max_size=6).filter(_wire_safe))))
            for tag, value in ORDER_FIELDS
        ]
        fields = data.draw(st.permutations(fields))[: data.draw(st.integers(3, len(fields)))]
        raw = client.encode("D", fields)
        if data.draw(st.booleans()):  # and sometimes damage the bytes as well
            pos = data.draw(st.integers(0, len(raw) - 1))
            raw = raw[:pos] + data.draw(st.binary(max_size=4)) + raw[pos + 1 :]
        for reply in client.send_raw(raw):
            assert reply.msg_type in ("8", "3", "j", "2", "5", "0")
            if reply.msg_type == "8":
                sequenced.add(reply[17].split("-")[0])  # ExecIDs start with the command's seq
    client.close()
    assert client.session.stats["internal_errors"] == 0
    # Only the orders that got an execution report were sequenced and journaled.
    assert exchange.last_seq - before == len(sequenced)


def _wire_safe(text: str) -> bool:
    try:
        return "\x01" not in text and bool(text.encode("latin-1"))
    except UnicodeEncodeError:
        return False
