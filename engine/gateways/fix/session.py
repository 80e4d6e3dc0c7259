"""The FIX 4.4 session layer (acceptor side) as a sans-I/O state machine.

The driver (the asyncio server, or a test) feeds it bytes and events and collects bytes
and commands; the session itself opens no socket and awaits nothing:

    session.receive_data(data)          # parse and handle everything complete
    transport.write(session.data_to_send())
    commands = session.take_commands()  # engine commands for the logged-on account
    ... submit them; the router calls session.on_event(ev) for the account's events ...
    session.submit_done(commands, error=None)
    session.on_timer()                  # every so often: heartbeats, TestRequest, timeouts
    session.close()                     # when the connection is gone

What each state does with each message type is the `HANDLERS` table; how the state moves
is the `TRANSITIONS` table. Sequence numbers and the application messages sent are kept
in a store per counterparty SenderCompID (see `store.py`); the inbound number is written
once the commands it carried are settled, so an exchange crash between the two makes the
client resend rather than lose an order.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from engine.auth import TokenBucket
from engine.bad_input_log import BAD_INPUT
from engine.gateways.fix.codec import (
    NEED_DATA,
    FixMessage,
    FixParser,
    ParseError,
    ParseErrorCode,
    encode_message,
    is_positive_int,
    utc_timestamp,
)
from engine.gateways.fix.orders import BusinessProblem, FieldProblem, OrderFlow, Reply
from engine.gateways.fix.tags import (
    ADMIN_MSG_TYPES,
    BusinessRejectReason,
    MsgType,
    SessionRejectReason,
    Tag,
    tag_name,
)
from engine.gateways.session_states import StateTable
from engine.logfmt import fields

log = logging.getLogger("loom.fix")


class State(StrEnum):
    AWAIT_LOGON = "await_logon"  # connected; the first message must be a Logon
    ACTIVE = "active"  # logged on
    LOGOUT_SENT = "logout_sent"  # we asked to log out and wait for the counterparty's Logout
    CLOSED = "closed"  # done: nothing more is read or written


_ADMIN_HANDLERS = {
    "0": "heartbeat",
    "1": "test_request",
    "2": "resend_request",
    "3": "reject",
    "4": "sequence_reset",
    "5": "logout",
}

# state -> inbound MsgType -> handler ("*" is any other type).
HANDLERS: dict[State, dict[str, str]] = {
    State.AWAIT_LOGON: {"A": "logon", "*": "not_logged_on"},
    State.ACTIVE: {
        **_ADMIN_HANDLERS,
        "A": "logon_again",
        "D": "new_order",
        "F": "cancel",
        "G": "replace",
        "*": "unsupported",
    },
    State.LOGOUT_SENT: {**_ADMIN_HANDLERS, "*": "ignore"},
    State.CLOSED: {"*": "ignore"},
}

# (state, what happened) -> next state. Anything else is a bug in this module.
TRANSITIONS: dict[tuple[State, str], State] = {
    (State.AWAIT_LOGON, "logon_accepted"): State.ACTIVE,
    (State.AWAIT_LOGON, "close"): State.CLOSED,
    (State.ACTIVE, "logout_sent"): State.LOGOUT_SENT,
    (State.ACTIVE, "close"): State.CLOSED,
    (State.LOGOUT_SENT, "close"): State.CLOSED,
    (State.CLOSED, "close"): State.CLOSED,
}
TABLE = StateTable("FIX", State, ("logon_accepted", "logout_sent", "close"), TRANSITIONS)

# Messages with these types are handled even when their MsgSeqNum is ahead of the expected
# one (before the gap is filled): a Logout, and a ResendRequest (the counterparty may be
# waiting for our resend before it can fill our gap).
_OUT_OF_ORDER_OK = frozenset({"2", "5"})


class SessionStore(Protocol):
    next_sender_seq: int
    next_target_seq: int
    account: str

    def set_seqnums(self, next_sender: int, next_target: int) -> None: ...
    def set_account(self, account: str) -> None: ...
    def save_message(self, seq: int, raw: bytes) -> None: ...
    def flush(self) -> None: ...  # write what the calls above hold
    def messages(self, begin: int, end: int) -> list[tuple[int, bytes]]: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...


@dataclass
class SessionConfig:
    comp_id: str = "LOOM"  # our SenderCompID; clients put it in TargetCompID
    rate: float = 200.0  # application messages per second per session (0 = unlimited)
    burst: float = 400.0
    logon_timeout: float = 10.0  # a connection must log on within this many seconds
    heartbeat_timeout: float = 10.0  # a TestRequest must be answered within this many seconds
    logout_timeout: float = 5.0  # wait for the answer to our Logout
    max_heartbeat_interval: int = 3600
    max_gap_queue: int = 10_000  # messages held while waiting for a gap to be filled


@dataclass
class SessionEnv:
    """What a session needs from its surroundings (all synchronous)."""

    authenticate: Callable[[str | None], str | None]  # API key -> account
    open_store: Callable[[str], SessionStore]  # counterparty SenderCompID -> its store
    order_lookup: Callable[[int], Any] | None = None  # order id -> OrderView (order store)
    # Why an account may not log on with a SenderCompID (None: it may): checked before its store opens.
    comp_id_problem: Callable[[str, str], str | None] = lambda comp_id, account: None
    claim: Callable[[str, Any], bool] = lambda comp_id, session: True  # one live session per comp id
    release: Callable[[str, Any], None] = lambda comp_id, session: None
    wall_clock: Callable[[], float] = time.time  # SendingTime
    monotonic: Callable[[], float] = time.monotonic  # timers, rate limit
    # Why n new orders (or replaces) would be refused now for overload (None: admitted):
    # the node's one rule (engine.overload), asked per order so the excess is answered at once.
    shed: Callable[[int], str | None] = lambda n: None


class FixSession:
    def __init__(
        self, env: SessionEnv, config: SessionConfig | None = None, created: float | None = None
    ) -> None:
        """`created`: when the connection opened (env.monotonic time; default now): the Logon
        deadline counts from it."""
        self.env = env
        self.config = config or SessionConfig()
        self.state = State.AWAIT_LOGON
        self.parser = FixParser()
        self.counterparty = ""  # the client's SenderCompID, once logged on
        self.account = ""
        self.store: SessionStore | None = None
        self.flow: OrderFlow | None = None
        self.heartbeat_interval = 0
        self.expected = 1  # next inbound MsgSeqNum
        self.close_reason = ""
        self.stats: Counter[str] = Counter()
        # Unreadable or invalid input by code, drained by the server into loom_decode_errors.
        self.decode_errors: Counter[str] = Counter()
        self._out: list[bytes] = []
        now = env.monotonic()
        self._created = self.last_received = self.last_sent = now
        if created is not None:
            self._created = created
        self._test_request: tuple[str, float] | None = None
        self._logout_sent_at = 0.0
        self._logout_due = False  # the counterparty logged out while our commands were in flight
        self._gap_queue: dict[int, tuple[FixMessage, bool]] = {}  # seq -> (message, already handled)
        self._resend_asked_until = 0  # highest MsgSeqNum seen when we last sent a ResendRequest
        self._claimed = False
        self._bucket = TokenBucket(self.config.rate, self.config.burst)

    # -- the driver's interface ------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def receive_data(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_received = self.env.monotonic()
        self._test_request = None  # any traffic proves the counterparty is alive
        self.parser.receive_data(data)
        while not self.closed and not self._logout_due:
            event = self.parser.next_event()
            if event is NEED_DATA:
                break
            try:
                if isinstance(event, ParseError):
                    self._on_parse_error(event)
                else:
                    self._on_message(event)  # type: ignore[arg-type]
            except Exception:  # a bug here must not take the connection or server down
                self.stats["internal_errors"] += 1
                log.exception("FIX session %s: failed to handle %r", self.counterparty, event)
        if self.flow is None or not self.flow.busy:
            self._persist_expected()

    def data_to_send(self) -> bytes:
        """What to write now; the store records the numbers and messages in it first."""
        if self.store is not None:
            self.store.flush()
        out, self._out = self._out, []
        return b"".join(out)

    def take_commands(self) -> list:
        return self.flow.take_commands() if self.flow is not None else []

    def submit_done(self, commands: list, error: BaseException | None = None, text: str = "") -> None:
        if self.flow is None:
            return
        for reply in self.flow.submit_done(commands, error, text):
            self._send_reply(reply)
        if not self.flow.busy:
            self._persist_expected()
            if self._logout_due:
                self._logout_due = False
                self._send(MsgType.LOGOUT, [])
                self._close("logout requested by the counterparty")

    def on_event(self, event) -> None:
        """A durable event that concerns the account (from the execution router)."""
        if self.flow is None:
            return
        try:
            for reply in self.flow.on_event(event):
                self._send_reply(reply)
        except Exception:  # never let one event break the router or the session
            self.stats["internal_errors"] += 1
            log.exception("FIX session %s: cannot report %r", self.counterparty, event)

    def on_timer(self) -> None:
        now = self.env.monotonic()
        cfg = self.config
        if self.state is State.AWAIT_LOGON:
            if now - self._created >= cfg.logon_timeout:
                self._close(f"no Logon within {cfg.logon_timeout:g} s")
        elif self.state is State.ACTIVE and self.heartbeat_interval > 0:
            interval = self.heartbeat_interval
            if self._test_request is not None:
                if now - self._test_request[1] >= cfg.heartbeat_timeout:
                    self._logout_and_close(f"no answer to TestRequest within {cfg.heartbeat_timeout:g} s")
                    return
            elif now - self.last_received >= interval * 1.2:
                test_id = f"TEST-{int(self.env.wall_clock() * 1000)}"
                self._send(MsgType.TEST_REQUEST, [(Tag.TestReqID, test_id)])
                self._test_request = (test_id, now)
            if now - self.last_sent >= interval:
                self._send(MsgType.HEARTBEAT, [])
        elif self.state is State.LOGOUT_SENT and now - self._logout_sent_at >= cfg.logout_timeout:
            self._close(f"no answer to Logout within {cfg.logout_timeout:g} s")

    def logout(self, text: str = "") -> None:
        """Start the Logout handshake (server shutdown, operator action)."""
        if self.state is State.ACTIVE:
            self._send(MsgType.LOGOUT, [(Tag.Text, text)] if text else [])
            self._transition("logout_sent")
            self._logout_sent_at = self.env.monotonic()
        elif self.state is State.AWAIT_LOGON:
            self._close(text or "logout before logon")

    def close(self, reason: str = "connection closed") -> None:
        """The connection is gone: persist the numbers, free the store and the comp id."""
        self._close(reason)
        if self.store is not None:
            self._persist_expected()
            self.store.close()
            self.store = None
        if self._claimed:
            self._claimed = False
            self.env.release(self.counterparty, self)

    # -- state and output ------------------------------------------------------------

    def _transition(self, what: str) -> None:
        self.state = TABLE.next(self.state, what)

    def _close(self, reason: str) -> None:
        if not self.closed:
            self.close_reason = reason
            if not self.account:  # never logged on (a refused Logon, garbage): summarised
                BAD_INPUT.note("fix", self.counterparty or "(not logged on)", f"closed: {reason}")
            else:
                log.info("FIX session %s closed: %s", self.counterparty, reason)
        self._transition("close")

    def _persist_expected(self) -> None:
        store = self.store
        if store is not None and store.next_target_seq != self.expected:
            store.set_seqnums(store.next_sender_seq, self.expected)

    def _send(self, msg_type: str, body: list[tuple[int, object]]) -> None:
        """Number, store (application messages) and queue one message. After the
        connection is gone, application messages are still numbered and stored, so the
        client gets them by ResendRequest when it comes back."""
        store = self.store
        if store is None:
            return
        seq = store.next_sender_seq
        raw = encode_message(
            msg_type,
            self.config.comp_id,
            self.counterparty,
            seq,
            utc_timestamp(self.env.wall_clock()),
            body,
        )
        if msg_type not in ADMIN_MSG_TYPES:
            store.save_message(seq, raw)
        elif self.closed:
            return
        store.set_seqnums(seq + 1, store.next_target_seq)
        if not self.closed:
            self._out.append(raw)
            self.last_sent = self.env.monotonic()
        self.stats[f"sent.{msg_type}"] += 1

    def _send_reply(self, reply: Reply) -> None:
        msg_type, body = reply
        self._send(msg_type, body)

    def _send_unnumbered_logout(self, target: str, text: str) -> None:
        """Refuse a Logon before any session state is touched (bad credentials)."""
        self._out.append(
            encode_message(
                MsgType.LOGOUT,
                self.config.comp_id,
                target or "UNKNOWN",
                1,
                utc_timestamp(self.env.wall_clock()),
                [(Tag.Text, text)],
            )
        )

    def _logout_and_close(self, text: str) -> None:
        self._send(MsgType.LOGOUT, [(Tag.Text, text)])
        self._close(text)

    def _reject(
        self,
        ref_seq: int,
        reason: SessionRejectReason,
        text: str,
        ref_tag: int = 0,
        ref_msg_type: str = "",
    ) -> None:
        body: list[tuple[int, object]] = [(Tag.RefSeqNum, ref_seq)]
        if ref_tag:
            body.append((Tag.RefTagID, ref_tag))
        if ref_msg_type:
            body.append((Tag.RefMsgType, ref_msg_type))
        body += [(Tag.SessionRejectReason, reason), (Tag.Text, text)]
        self.stats["rejects"] += 1
        self.decode_errors[getattr(reason, "name", str(reason)).lower()] += 1
        self._send(MsgType.REJECT, body)

    def _business_reject(
        self, msg: FixMessage, reason: BusinessRejectReason, text: str, ref_id: str = ""
    ) -> None:
        body: list[tuple[int, object]] = [(Tag.RefSeqNum, msg.seq_num), (Tag.RefMsgType, msg.msg_type)]
        if ref_id:
            body.append((Tag.BusinessRejectRefID, ref_id))
        body += [(Tag.BusinessRejectReason, reason), (Tag.Text, text)]
        self.stats["business_rejects"] += 1
        self._send(MsgType.BUSINESS_MESSAGE_REJECT, body)

    # -- inbound: framing and sequencing ---------------------------------------------

    def _on_parse_error(self, error: ParseError) -> None:
        self.stats[f"parse_error.{error.code}"] += 1
        self.decode_errors[str(error.code)] += 1
        BAD_INPUT.note("fix", self.counterparty or "(not logged on)", error.text)
        if self.state is State.AWAIT_LOGON:
            self._close(f"unreadable input before Logon: {error.text}")
            return
        # A framed message with a bad field or header is rejected by number, if it is the
        # one we expect; a garbled frame is ignored (the next message shows the gap).
        seq = error.seq_num
        if error.code in (ParseErrorCode.BAD_FIELD, ParseErrorCode.BAD_HEADER) and seq == self.expected:
            if error.code is ParseErrorCode.BAD_FIELD:
                reason = (
                    SessionRejectReason.TAG_WITHOUT_VALUE
                    if error.ref_tag
                    else SessionRejectReason.INVALID_TAG_NUMBER
                )
            elif error.ref_tag == 35 and error.msg_type:
                reason = SessionRejectReason.TAG_OUT_OF_ORDER
            else:
                reason = SessionRejectReason.REQUIRED_TAG_MISSING
            self.expected = seq + 1
            self._reject(seq, reason, error.text, error.ref_tag, error.msg_type)
            self._drain_gap_queue()

    def _on_message(self, msg: FixMessage) -> None:
        self.stats[f"received.{msg.msg_type}"] += 1
        table = HANDLERS[self.state]
        handler = table.get(msg.msg_type) or table["*"]
        if self.state is State.AWAIT_LOGON or self.state is State.CLOSED:
            getattr(self, "_on_" + handler)(msg)
            return
        if msg.get(Tag.SenderCompID) != self.counterparty or msg.get(Tag.TargetCompID) != self.config.comp_id:
            self._reject(
                msg.seq_num,
                SessionRejectReason.COMPID_PROBLEM,
                f"CompID problem: expected SenderCompID {self.counterparty} and TargetCompID "
                f"{self.config.comp_id}",
                Tag.SenderCompID,
                msg.msg_type,
            )
            self._logout_and_close("CompID problem")
            return
        if msg.msg_type == MsgType.SEQUENCE_RESET and msg.get(Tag.GapFillFlag) != "Y":
            self._on_sequence_reset(msg)  # Reset mode ignores MsgSeqNum
            return
        seq = msg.seq_num
        if seq < self.expected:
            if msg.get(Tag.PossDupFlag) == "Y":
                if Tag.OrigSendingTime not in msg:
                    self._reject(
                        seq,
                        SessionRejectReason.REQUIRED_TAG_MISSING,
                        "Required tag missing: OrigSendingTime(122) on a PossDup message",
                        Tag.OrigSendingTime,
                        msg.msg_type,
                    )
                self.stats["duplicates_ignored"] += 1
                return
            self._logout_and_close(f"MsgSeqNum too low, expecting {self.expected} but received {seq}")
            return
        if seq > self.expected:
            handled = msg.msg_type in _OUT_OF_ORDER_OK
            if handled:
                getattr(self, "_on_" + handler)(msg)
            if not self.closed:
                self._hold_for_gap(msg, handled)
            return
        self.expected = seq + 1
        getattr(self, "_on_" + handler)(msg)
        self._drain_gap_queue()

    def _hold_for_gap(self, msg: FixMessage, handled: bool) -> None:
        seq = msg.seq_num
        if len(self._gap_queue) >= self.config.max_gap_queue:
            self._logout_and_close(f"sequence gap from {self.expected} not filled")
            return
        self._gap_queue[seq] = (msg, handled)
        if self._resend_asked_until < self.expected:
            self._send(MsgType.RESEND_REQUEST, [(Tag.BeginSeqNo, self.expected), (Tag.EndSeqNo, 0)])
            self.stats["resend_requests_sent"] += 1
        self._resend_asked_until = max(self._resend_asked_until, seq)

    def _drain_gap_queue(self) -> None:
        queue = self._gap_queue
        while queue and not self.closed and not self._logout_due:
            for stale in [s for s in queue if s < self.expected]:
                del queue[stale]  # already resent to us (PossDup) or gap-filled over
            item = queue.pop(self.expected, None)
            if item is None:
                break
            msg, handled = item
            self.expected += 1
            if not handled:
                table = HANDLERS[self.state]
                getattr(self, "_on_" + (table.get(msg.msg_type) or table["*"]))(msg)
        if not queue:
            self._resend_asked_until = 0

    # -- inbound: session messages ---------------------------------------------------

    def _refuse_logon(self, msg: FixMessage, text: str) -> None:
        self.stats["logons_refused"] += 1
        if self.store is None:
            self._send_unnumbered_logout(msg.get(Tag.SenderCompID) or "", text)
            self._close(f"Logon refused: {text}")
        else:
            self._logout_and_close(f"Logon refused: {text}")

    def _on_logon(self, msg: FixMessage) -> None:
        cfg = self.config
        comp_id = msg[Tag.SenderCompID]
        heartbeat = msg.get(Tag.HeartBtInt, "")
        if msg.get(Tag.TargetCompID) != cfg.comp_id:
            return self._refuse_logon(msg, f"TargetCompID (56) must be {cfg.comp_id}")
        if msg.get(Tag.EncryptMethod, "0") != "0":
            return self._refuse_logon(msg, "EncryptMethod (98) must be 0 (none)")
        if not (heartbeat.isascii() and heartbeat.isdigit() and int(heartbeat) <= cfg.max_heartbeat_interval):
            return self._refuse_logon(
                msg, f"HeartBtInt (108) must be a whole number of seconds up to {cfg.max_heartbeat_interval}"
            )
        account = self.env.authenticate(msg.get(Tag.Password))
        if account is None or account != msg.get(Tag.Username):
            return self._refuse_logon(msg, "invalid Username (553) or Password (554)")
        problem = self.env.comp_id_problem(comp_id, account)
        if problem:  # before open_store: no directory for a SenderCompID the account may not use
            return self._refuse_logon(msg, problem)
        if not self.env.claim(comp_id, self):
            return self._refuse_logon(msg, f"session {comp_id} is already logged on")
        self._claimed = True
        self.counterparty = comp_id
        try:
            self.store = self.env.open_store(comp_id)
        except OSError as exc:
            log.error("FIX session %s: cannot open its store: %s", comp_id, exc)
            return self._refuse_logon(msg, "session store unavailable, try again later")
        store = self.store
        if store.account and store.account != account:
            store.close()
            self.store = None
            return self._refuse_logon(msg, f"SenderCompID {comp_id} belongs to another account")
        seq = msg.seq_num
        reset = msg.get(Tag.ResetSeqNumFlag) == "Y"
        if reset:
            if seq != 1:
                return self._refuse_logon(msg, "a Logon with ResetSeqNumFlag=Y must have MsgSeqNum 1")
            store.reset()
        store.set_account(account)
        self.expected = store.next_target_seq
        if seq < self.expected:
            return self._refuse_logon(msg, f"MsgSeqNum too low, expecting {self.expected} but received {seq}")
        self.account = account
        self.heartbeat_interval = int(heartbeat)
        self.flow = OrderFlow(
            account,
            self.env.order_lookup,
            exec_id_salt=f"{int(self.env.wall_clock() * 1000)}",
            clock_ns=lambda: int(self.env.wall_clock() * 1_000_000_000),
        )
        self._transition("logon_accepted")
        body: list[tuple[int, object]] = [(Tag.EncryptMethod, 0), (Tag.HeartBtInt, self.heartbeat_interval)]
        if reset:
            body.append((Tag.ResetSeqNumFlag, "Y"))
        self._send(MsgType.LOGON, body)
        log.info("FIX session %s logged on for account %s", comp_id, account, extra=fields(account=account))
        if seq > self.expected:
            self._hold_for_gap(msg, handled=True)
        else:
            self.expected = seq + 1

    def _on_not_logged_on(self, msg: FixMessage) -> None:
        self._close(f"first message was MsgType {msg.msg_type!r}, not a Logon")

    def _on_ignore(self, msg: FixMessage) -> None:
        self.stats["ignored"] += 1

    def _on_logon_again(self, msg: FixMessage) -> None:
        self._logout_and_close("Logon received on a session that is already logged on")

    def _on_heartbeat(self, msg: FixMessage) -> None:
        pass  # receive_data already noted the traffic

    def _on_test_request(self, msg: FixMessage) -> None:
        test_id = msg.get(Tag.TestReqID)
        if test_id is None:
            self._reject(
                msg.seq_num,
                SessionRejectReason.REQUIRED_TAG_MISSING,
                "Required tag missing: TestReqID(112)",
                Tag.TestReqID,
                msg.msg_type,
            )
            return
        self._send(MsgType.HEARTBEAT, [(Tag.TestReqID, test_id)])

    def _on_reject(self, msg: FixMessage) -> None:
        log.warning(
            "FIX session %s: our message %s was rejected: %s",
            self.counterparty,
            msg.get(Tag.RefSeqNum),
            msg.get(Tag.Text, ""),
        )

    def _seq_field(self, msg: FixMessage, tag: int, allow_zero: bool = False) -> int | None:
        value = msg.get(tag)
        if value is None:
            self._reject(
                msg.seq_num,
                SessionRejectReason.REQUIRED_TAG_MISSING,
                f"Required tag missing: {tag_name(tag)}",
                tag,
                msg.msg_type,
            )
            return None
        if is_positive_int(value) or (allow_zero and value == "0"):
            return int(value)
        self._reject(
            msg.seq_num,
            SessionRejectReason.INCORRECT_DATA_FORMAT,
            f"{tag_name(tag)} must be a positive sequence number, got {value!r}",
            tag,
            msg.msg_type,
        )
        return None

    def _on_resend_request(self, msg: FixMessage) -> None:
        begin = self._seq_field(msg, Tag.BeginSeqNo)
        end = self._seq_field(msg, Tag.EndSeqNo, allow_zero=True) if begin is not None else None
        if begin is None or end is None or self.store is None:
            return
        last = self.store.next_sender_seq - 1
        if end == 0 or end > last:
            end = last
        self.stats["resend_requests_received"] += 1
        if begin > end:
            return
        now = utc_timestamp(self.env.wall_clock())
        cursor = begin
        for seq, raw in self.store.messages(begin, end):
            copy = self._poss_dup_copy(raw, now)
            if copy is None:
                continue  # unreadable record: the gap fill below covers it
            if seq > cursor:
                self._gap_fill(cursor, seq, now)
            self._out.append(copy)
            self.stats["resent"] += 1
            cursor = seq + 1
        if cursor <= end:
            self._gap_fill(cursor, end + 1, now)
        self.last_sent = self.env.monotonic()

    def _poss_dup_copy(self, raw: bytes, now: str) -> bytes | None:
        parser = FixParser()
        parser.receive_data(raw)
        msg = parser.next_event()
        if not isinstance(msg, FixMessage):
            log.error("FIX session %s: stored message unreadable: %r", self.counterparty, msg)
            return None
        return encode_message(
            msg.msg_type,
            msg[Tag.SenderCompID],
            msg[Tag.TargetCompID],
            msg.seq_num,
            now,
            msg.body(),
            poss_dup=True,
            orig_sending_time=msg[Tag.SendingTime],
        )

    def _gap_fill(self, begin: int, new_seq: int, now: str) -> None:
        self._out.append(
            encode_message(
                MsgType.SEQUENCE_RESET,
                self.config.comp_id,
                self.counterparty,
                begin,
                now,
                [(Tag.GapFillFlag, "Y"), (Tag.NewSeqNo, new_seq)],
                poss_dup=True,
                orig_sending_time=now,
            )
        )
        self.stats["gap_fills_sent"] += 1

    def _on_sequence_reset(self, msg: FixMessage) -> None:
        new_seq = self._seq_field(msg, Tag.NewSeqNo)
        if new_seq is None:
            return
        if msg.get(Tag.GapFillFlag) == "Y":
            # Sequenced like any message: `expected` is already past the gap fill's own number.
            if new_seq <= msg.seq_num:
                self._reject(
                    msg.seq_num,
                    SessionRejectReason.VALUE_INCORRECT,
                    f"NewSeqNo (36) {new_seq} must be above the gap fill's MsgSeqNum {msg.seq_num}",
                    Tag.NewSeqNo,
                    msg.msg_type,
                )
                return
            self.expected = max(self.expected, new_seq)
            self.stats["gap_fills_received"] += 1
            return
        # Reset mode: MsgSeqNum is ignored; the expected number may only go up.
        if new_seq < self.expected:
            self._reject(
                msg.seq_num,
                SessionRejectReason.VALUE_INCORRECT,
                f"NewSeqNo (36) {new_seq} would lower the expected MsgSeqNum {self.expected}",
                Tag.NewSeqNo,
                msg.msg_type,
            )
            return
        self.expected = new_seq
        self.stats["sequence_resets"] += 1
        self._drain_gap_queue()

    def _on_logout(self, msg: FixMessage) -> None:
        text = msg.get(Tag.Text)
        if self.state is State.LOGOUT_SENT:
            self._close("logout confirmed" + (f": {text}" if text else ""))
        elif self.flow is not None and self.flow.busy:
            self._logout_due = True  # answer once our in-flight commands are reported
        else:
            self._send(MsgType.LOGOUT, [])
            self._close("logout requested by the counterparty" + (f": {text}" if text else ""))

    # -- inbound: application messages -----------------------------------------------

    def _app(self, msg: FixMessage, action: Callable[[FixMessage], None], sheddable: bool = False) -> None:
        if not self._bucket.allow(self.env.monotonic()):
            cfg = self.config
            self.stats["rate_limited"] += 1
            self._business_reject(
                msg,
                BusinessRejectReason.OTHER,
                f"rate limit exceeded: at most {cfg.rate:g} messages per second (bursts of "
                f"{cfg.burst:g}); the message was not processed",
                msg.get(Tag.ClOrdID) or "",
            )
            return
        try:
            action(msg)
            if sheddable:
                flow = self.flow
                refusal = self.env.shed(flow.pending)  # type: ignore[union-attr]
                if refusal is not None:
                    self._send_reply(flow.refuse_last(refusal))  # type: ignore[union-attr]
        except FieldProblem as p:
            self._reject(msg.seq_num, p.reason, p.text, p.tag, msg.msg_type)
        except BusinessProblem as p:
            self._business_reject(msg, p.reason, p.text, p.ref_id)

    def _on_new_order(self, msg: FixMessage) -> None:
        self._app(msg, self.flow.new_order, sheddable=True)  # type: ignore[union-attr]

    def _on_cancel(self, msg: FixMessage) -> None:
        self._app(msg, self.flow.cancel)  # type: ignore[union-attr]

    def _on_replace(self, msg: FixMessage) -> None:
        self._app(msg, self.flow.replace, sheddable=True)  # type: ignore[union-attr]

    def _on_unsupported(self, msg: FixMessage) -> None:
        self._business_reject(
            msg,
            BusinessRejectReason.UNSUPPORTED_MESSAGE_TYPE,
            f"MsgType {msg.msg_type!r} is not supported by this gateway",
        )
