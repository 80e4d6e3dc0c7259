"""The binary order-entry server: one asyncio Protocol per connection (no streams).

Per read, `data_received` decodes every whole frame, builds the engine commands straight
from the fields (the account is the session's, from the login, never from a frame) and
hands them to the service in ONE `service.submit` call, so the group commit sees large
batches and the order of a session's requests is kept. Nothing is acknowledged here:
execution reports come from the `ExecutionRouter` stream, after the journal holds the batch,
and every report of a batch goes out in one `transport.write`.

Backpressure: a session with too many commands in flight (submitted, not yet durable), or
whose socket does not drain, stops being read until it catches up; a client that never
reads its reports is disconnected (slow consumer) rather than buffered without bound.

Overload is shed before decoding: when the commit queue would refuse the read's orders
(engine.overload), NewOrder and Amend frames are answered Rejected(603 OVERLOADED) straight
from their raw bytes, with no command built (cancels still go through).

Bad input never reaches the journal: a malformed frame gets an Error frame and the session
goes on; an impossible length gets an Error frame and the connection is closed (once the
requests before it are answered). The per-session token bucket refuses excess requests
with Rejected(reason RATE_LIMITED), also without touching the journal.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from engine.auth import Accounts, TokenBucket
from engine.bad_input_log import BAD_INPUT
from engine.core.commands import Amend, Cancel, CancelAll, NewOrder
from engine.core.domain import RequestKind
from engine.core.events import OrderAccepted, OrderAmended, OrderCancelled, OrderDone, OrderRejected, Trade
from engine.gateways.admission import LOGIN_TIMEOUT, Admission, IdleWatch
from engine.gateways.binary import protocol as p
from engine.gateways.binary.states import CLOSED, CLOSING, REFUSED, TABLE, State
from engine.gateways.listener import Listener, listen
from engine.logfmt import fields
from engine.observer import NULL_OBSERVER
from engine.overload import InFlight, limit_receive_buffers
from engine.routing import ExecutionRouter
from engine.service import ExchangeService, NotLeader, Overloaded, ServiceStopped

log = logging.getLogger("loom.gateway.binary")

DEFAULT_RATE = 20_000.0  # requests per second per session (0 = unlimited)
DEFAULT_BURST = 40_000.0
MAX_IN_FLIGHT = 16_384  # commands per session submitted and not yet durable: stop reading above
MAX_OUTPUT_BUFFER = 32 * 1024 * 1024  # unsent report bytes before a session is dropped
LOGIN_TIMEOUT_S = 10.0  # as FIX's logon timeout ([admission] login_timeout_s)
SESSION_IDLE_S = 60.0  # a logged-on session that sends nothing ([admission] session_idle_s)

_REQ_NEW = int(RequestKind.NEW)
_REQ_CANCEL = int(RequestKind.CANCEL)
_REQ_AMEND = int(RequestKind.AMEND)
_REQ_CANCEL_ALL = int(RequestKind.CANCEL_ALL)
_NEW_ORDER_BYTES = 2 + p.LENGTH[p.FrameType.NEW_ORDER]
_MAKER = int(p.Liquidity.MAKER)
_OVERLOAD_REFUSERS = p.overload_refusers(int(p.GatewayRejectReason.OVERLOADED))  # one set for all sessions
_TAKER = int(p.Liquidity.TAKER)


@dataclass
class _Config:
    service: ExchangeService
    router: ExecutionRouter
    accounts: Accounts
    rate: float
    burst: float
    max_in_flight: int
    max_output: int
    clock: Callable[[], float]
    login_s: float = LOGIN_TIMEOUT_S
    idle_s: float = SESSION_IDLE_S
    admission: Admission | None = None  # counts the deadline closures


# -- execution reports: engine event -> frame bytes (for the session's account) -------------

_ref = p.client_ref_of


def _r_accepted(ev: OrderAccepted, _account: str) -> bytes:
    return p.encode_accepted(
        ev.seq,
        ev.ts,
        ev.order_id,
        _ref(ev.client_order_id),
        ev.symbol,
        ev.side,
        ev.order_type,
        ev.tif,
        ev.price,
        ev.qty,
    )


def _r_rejected(ev: OrderRejected, _account: str) -> bytes:
    return p.encode_rejected(ev.seq, ev.ts, ev.request, ev.reason, _ref(ev.client_order_id), ev.order_id)


def _r_trade(ev: Trade, account: str) -> bytes:
    frames = b""
    if ev.maker_account == account:  # a self-trade (STP none) gives the account both fills
        frames = p.encode_fill(
            ev.seq,
            ev.ts,
            ev.trade_id,
            ev.maker_order_id,
            3 - ev.aggressor_side,
            _MAKER,
            ev.price,
            ev.qty,
            ev.maker_leaves,
        )
    if ev.taker_account == account:
        frames += p.encode_fill(
            ev.seq,
            ev.ts,
            ev.trade_id,
            ev.taker_order_id,
            ev.aggressor_side,
            _TAKER,
            ev.price,
            ev.qty,
            ev.taker_leaves,
        )
    return frames


def _r_cancelled(ev: OrderCancelled, _account: str) -> bytes:
    return p.encode_cancelled(ev.seq, ev.ts, ev.order_id, ev.reason, ev.cancelled_qty, ev.filled_qty)


def _r_amended(ev: OrderAmended, _account: str) -> bytes:
    return p.encode_amended(
        ev.seq,
        ev.ts,
        ev.order_id,
        _ref(ev.client_order_id),
        ev.price,
        ev.qty,
        ev.leaves,
        ev.priority_kept,
    )


def _r_done(ev: OrderDone, _account: str) -> bytes:
    return p.encode_done(ev.seq, ev.ts, ev.order_id, ev.filled_qty)


_REPORTS: dict[type, Callable[[object, str], bytes]] = {
    OrderAccepted: _r_accepted,
    OrderRejected: _r_rejected,
    Trade: _r_trade,
    OrderCancelled: _r_cancelled,
    OrderAmended: _r_amended,
    OrderDone: _r_done,
}


def gateway_rejection(cmd, reason: int) -> bytes:
    """A Rejected frame for a command the gateway refuses itself (seq 0: never sequenced)."""
    kind = type(cmd)
    if kind is NewOrder:
        return p.encode_rejected(0, 0, _REQ_NEW, reason, _ref(cmd.client_order_id), 0)
    if kind is Cancel:
        return p.encode_rejected(0, 0, _REQ_CANCEL, reason, _ref(cmd.client_order_id), cmd.order_id)
    if kind is Amend:
        return p.encode_rejected(0, 0, _REQ_AMEND, reason, _ref(cmd.client_order_id), cmd.order_id)
    return p.encode_rejected(0, 0, _REQ_CANCEL_ALL, reason, 0, 0)


def not_leader_frame(exc: NotLeader) -> bytes:
    """The NotLeader frame of a standby's refusal: the leader's binary host:port, or during an
    election an empty endpoint and the wait (version 2 sessions)."""
    leader = exc.leader
    host, _, port = leader.get("binary", "").rpartition(":")
    return p.encode_not_leader(
        leader.get("epoch", 0),
        min(int(exc.retry_after_s * 1000), 0xFFFFFFFF),
        int(port) if port.isdigit() and int(port) <= 0xFFFF else 0,
        host,
        leader.get("node", ""),
    )


# -- the session ---------------------------------------------------------------------------


class BinarySession(asyncio.Protocol):
    """One connection. Where it is in its life is `state` (engine/gateways/binary/states.py),
    moved only by `_move`; a frame its state does not allow is answered from `_refused`."""

    def __init__(self, config: _Config, sessions: set, opened: float | None = None) -> None:
        self._cfg = config
        self._opened = opened  # time.monotonic() at connect, when built after it (lazily)
        self._service = config.service
        self._sessions = sessions
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self.peer = None
        self.account: str | None = None
        self.version = p.PROTOCOL_VERSION  # the one the client logged in with
        self._unsubscribe: Callable[[], None] | None = None
        self._bucket = TokenBucket(config.rate, config.burst) if config.rate > 0 else None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._flight = InFlight(config.max_in_flight)  # commands submitted, not yet resolved
        self._tasks: set[asyncio.Task] = set()
        self._cancel_alls = 0  # CancelAll commands built so far (to spot them in a submission)
        self._paused_write = False
        self._reading_paused = False
        self.state = State.AWAITING_LOGIN
        self._refused = REFUSED[self.state]  # frame -> answer, for the frames this state refuses
        # Built on the first bytes (issue 13): a connection that never sends anything (a
        # flood of idle sockets) costs no decoder table.
        self._decoder: p.Decoder | None = None
        self.requests = 0  # commands submitted over the session's life
        self.read_pauses = 0  # times reading stopped for backpressure
        self.shed_before = 0  # decoder.shed already counted in loom_overload_refusals
        self._watch: IdleWatch | None = None

    def _new_decoder(self) -> p.Decoder:
        decoder = p.Decoder.for_server(
            {
                p.FrameType.LOGIN: self._b_login,
                p.FrameType.NEW_ORDER: self._b_new_order,
                p.FrameType.CANCEL: self._b_cancel,
                p.FrameType.AMEND: self._b_amend,
                p.FrameType.CANCEL_ALL: self._b_cancel_all,
                p.FrameType.HEARTBEAT: self._b_heartbeat,
            }
        )
        decoder.set_refusers(_OVERLOAD_REFUSERS)
        return decoder

    # -- builders: decoded fields -> engine command (or reply bytes) ------------------------

    def _move(self, event: str) -> None:
        """The one place the session changes state (an event the table lacks is a bug)."""
        self.state = state = TABLE.next(self.state, event)
        self._refused = REFUSED[state]

    def _b_login(self, api_key: str, version: int) -> bytes:
        refused = self._refused.get("login")  # logged in already; or a refused login earlier in the read
        if refused is not None:
            return refused
        if not p.MIN_PROTOCOL_VERSION <= version <= p.PROTOCOL_VERSION:
            self._move("login_refused")
            BAD_INPUT.note("binary", self.peer, f"login refused: protocol version {version}")
            return p.encode_login_reject(p.LoginRejectReason.UNSUPPORTED_VERSION)
        account = self._cfg.accounts.authenticate(api_key)
        if account is None:
            self._move("login_refused")
            BAD_INPUT.note("binary", self.peer, "login refused: bad credentials")
            return p.encode_login_reject(p.LoginRejectReason.BAD_CREDENTIALS)
        self.account = account
        self.version = version
        self._move("login_accepted")
        self._unsubscribe = self._cfg.router.subscribe(account, self._on_event)
        log.info("binary session %s logged in as %s", self.peer, account, extra=fields(account=account))
        cfg = self._cfg
        ack = p.encode_login_ack(
            version,
            min(int(cfg.rate), 0xFFFFFFFF) if cfg.rate > 0 else 0,
            min(int(cfg.burst), 0xFFFFFFFF) if cfg.rate > 0 else 0,
            account,
        )
        refusal = self._service.refusal
        if version >= p.NOT_LEADER_VERSION and not self._service.accepting and refusal is not None:
            exc = refusal()
            if isinstance(exc, NotLeader):  # a standby: say at once where to go
                return ack + not_leader_frame(exc)
        return ack

    def _b_heartbeat(self, token: int) -> bytes:
        # FIX (issue 13): a Heartbeat before Login was echoed, so a connection that never
        # logs on could keep itself busy; it is not logged in like any other frame.
        refused = self._refused.get("heartbeat")
        return p.encode_heartbeat(token) if refused is None else refused

    def _b_new_order(self, ref, symbol, side, order_type, tif, post_only, stp, price, qty):
        refused = self._refused.get("new_order")
        if refused is not None:
            return refused
        account = self.account
        return NewOrder(
            account, str(ref) if ref else "", symbol, side, order_type, price, qty, tif, post_only, stp
        )

    def _b_cancel(self, order_id, ref):
        refused = self._refused.get("cancel")
        if refused is not None:
            return refused
        account = self.account
        return Cancel(account, order_id, str(ref) if ref else "")

    def _b_amend(self, order_id, ref, new_qty, new_price, new_ref):
        refused = self._refused.get("amend")
        if refused is not None:
            return refused
        account = self.account
        return Amend(
            account, order_id, str(ref) if ref else "", new_qty, new_price, str(new_ref) if new_ref else ""
        )

    def _b_cancel_all(self, symbol):
        refused = self._refused.get("cancel_all")
        if refused is not None:
            return refused
        account = self.account
        self._cancel_alls += 1
        return CancelAll(account, symbol)

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self._transport = transport
        self.peer = transport.get_extra_info("peername")
        self._sessions.add(self)
        cfg = self._cfg
        # The Login deadline counts from the connect, not from the first bytes.
        waited = 0.0 if self._opened is None else time.monotonic() - self._opened
        self._watch = IdleWatch(
            max(0.0, cfg.login_s - waited),
            cfg.idle_s,
            lambda: self.account is not None,
            lambda: self._flight.count > 0 or self._reading_paused,
            self._timed_out,
        )

    def data_received(self, data: bytes) -> None:
        if self.state >= CLOSING:
            return
        self._watch.touch()
        started = time.perf_counter()
        decoder = self._decoder
        if decoder is None:
            decoder = self._decoder = self._new_decoder()
        decoder.feed(data)
        cancel_alls = self._cancel_alls  # the builders count the CancelAll commands they make
        # Shed before decoding when the queue would refuse this read's orders anyway (counted
        # as if every buffered byte were a NewOrder: a read is admitted or shed whole).
        service = self._service
        shed = self.account is not None and service.refuses_orders(decoder.buffered // _NEW_ORDER_BYTES)
        items = decoder.drain(shed)
        if not items:
            return
        out = self._out
        cmds = []
        decode_errors: list[int] = []
        for item in items:
            kind = type(item)
            if kind is bytes:  # a reply made by a builder: login, heartbeat, not logged in
                out.append(item)
                if self.state >= CLOSING:  # refused login: ignore whatever follows it
                    break
            elif kind is p.DecodeError:
                out.append(p.encode_error(item.code, item.text))
                decode_errors.append(item.code)
                if item.fatal:
                    BAD_INPUT.note("binary", self.peer, f"{item.text}; closing")
                    self._move("fatal_input")
            else:
                cmds.append(item)
        if shed:
            refused = decoder.shed - self.shed_before
            self.shed_before = decoder.shed
            if refused:
                service.refused("binary", refused)
        observer = getattr(self._service, "observer", NULL_OBSERVER)
        observer.decoded(time.perf_counter() - started)  # once per read
        for code in decode_errors:
            observer.decode_error("binary", _error_name(code))
        if cmds:
            if self._bucket is not None:
                cmds = self._rate_limit(cmds)
            if cmds:
                self._submit(cmds, self._cancel_alls != cancel_alls, started)
        if self.state >= CLOSING:
            self._update_reading()
            self._close_when_answered()
        self._flush()

    def pause_writing(self) -> None:
        self._paused_write = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._paused_write = False
        self._update_reading()

    def connection_lost(self, exc) -> None:
        self._move("lost")
        self._out.clear()
        self._sessions.discard(self)
        if self._watch is not None:
            self._watch.cancel()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self.account is not None:
            ids = fields(account=self.account)
            log.info("binary session %s (%s) closed", self.peer, self.account, extra=ids)

    # -- requests ---------------------------------------------------------------------------

    def _rate_limit(self, cmds: list) -> list:
        bucket = self._bucket
        now = self._cfg.clock()
        if bucket.allow(now, len(cmds)):
            return cmds
        allowed = []
        out = self._out
        limited = int(p.GatewayRejectReason.RATE_LIMITED)
        for cmd in cmds:
            if bucket.allow(now, 1.0):
                allowed.append(cmd)
            else:
                out.append(gateway_rejection(cmd, limited))
        if len(allowed) < len(cmds):
            getattr(self._service, "observer", NULL_OBSERVER).rate_limited("binary", len(cmds) - len(allowed))
        return allowed

    def _submit(self, cmds: list, has_cancel_all: bool, received: float = 0.0) -> None:
        self.requests += len(cmds)
        task = self._loop.create_task(self._service.submit(cmds, "binary", received))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._submitted(t, cmds, has_cancel_all))
        if self._flight.add(len(cmds)):
            self._update_reading()

    def _submitted(self, task: asyncio.Task, cmds: list, has_cancel_all: bool) -> None:
        self._tasks.discard(task)
        resume = self._flight.done(len(cmds))
        exc = None if not task.cancelled() else asyncio.CancelledError()
        if exc is None:
            exc = task.exception()
        if self.state is not CLOSED:
            if exc is None:
                if has_cancel_all:
                    self._report_mass_cancels(cmds, task.result())
            elif isinstance(exc, (ServiceStopped, Overloaded)):
                # Overloaded: admission control refused the read's commands, nothing was
                # sequenced; each is answered at once and may be resent. NotLeader (a
                # standby): likewise, and a version 2 session is told where the leader is.
                reason = int(
                    p.GatewayRejectReason.OVERLOADED
                    if isinstance(exc, Overloaded)
                    else p.GatewayRejectReason.SERVICE_UNAVAILABLE
                )
                if isinstance(exc, NotLeader) and self.version >= p.NOT_LEADER_VERSION:
                    reason = int(p.GatewayRejectReason.NOT_LEADER)
                    self._out.append(not_leader_frame(exc))
                self._out.extend(gateway_rejection(cmd, reason) for cmd in cmds)
            else:  # the commit loop failed (crash-only): the outcome is unknown, say so and go
                log.error("binary session %s: submission failed: %r", self.peer, exc)
                self._out.append(
                    p.encode_error(p.ErrorCode.SERVICE_UNAVAILABLE, "exchange failed; reconnect")
                )
                self._move("submit_failed")
        if resume:
            self._update_reading()
        if self.state >= CLOSING:
            self._close_when_answered()
        if self._out:
            self._flush()

    def _report_mass_cancels(self, cmds: list, results: list) -> None:
        out = self._out
        for cmd, events in zip(cmds, results, strict=False):
            if type(cmd) is CancelAll and not (events and type(events[0]) is OrderRejected):
                count = sum(1 for ev in events if type(ev) is OrderCancelled)
                out.append(p.encode_mass_cancelled(cmd.seq, cmd.ts, count))

    # -- reports ----------------------------------------------------------------------------

    def _on_event(self, ev) -> None:
        """Router callback: every durable event of the account, in sequence order."""
        try:
            frame = _REPORTS[type(ev)](ev, self.account)
        except KeyError:
            return
        except (struct.error, ValueError, OverflowError) as exc:
            # e.g. an order entered elsewhere with a price beyond i64: cannot be carried here
            log.warning("binary session %s: cannot encode %r: %s", self.peer, ev, exc)
            frame = p.encode_error(p.ErrorCode.INTERNAL, f"unreportable event at seq {ev.seq}")
        self._out.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out:
            return
        if self.state is CLOSED:
            out.clear()
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        transport = self._transport
        transport.write(data)
        if transport.get_write_buffer_size() > self._cfg.max_output:
            log.warning("binary session %s (%s): slow consumer, disconnecting", self.peer, self.account)
            self._move("closed")
            transport.abort()

    # -- flow control and closing -----------------------------------------------------------

    def _update_reading(self) -> None:
        closing = self.state >= CLOSING
        pause = self._flight.paused or self._paused_write or closing
        if pause != self._reading_paused and self.state is not CLOSED:
            self._reading_paused = pause
            if pause:
                self.read_pauses += not closing
                self._transport.pause_reading()
            else:
                self._transport.resume_reading()

    def _timed_out(self, reason: str) -> None:
        """A missed deadline (engine/gateways/admission.py IdleWatch): say which, and close."""
        if self.state is CLOSED:
            return
        if reason == LOGIN_TIMEOUT:
            frame = _login_timeout_frame(self._cfg.login_s)
        else:
            frame = p.encode_error(
                p.ErrorCode.IDLE_TIMEOUT, f"nothing received for {self._cfg.idle_s:g} s; send Heartbeats"
            )
            log.info("binary session %s (%s) idle: closing", self.peer, self.account)
        if self._cfg.admission is not None:
            self._cfg.admission.timed_out(reason)
        self._out.append(frame)
        self._move("timed_out")
        self._update_reading()
        self._close_when_answered()

    def _close_when_answered(self) -> None:
        if self._flight.count == 0 and self.state is not CLOSED:
            self._flush()
            self._move("closed")
            self._transport.close()  # sends what is buffered, then closes

    def close(self) -> None:
        """Server shutdown: drop the connection now."""
        if self._transport is not None and self.state is not CLOSED:
            self._flush()
            self._move("closed")
            self._transport.close()


# -- server ----------------------------------------------------------------------------------


def _login_timeout_frame(login_s: float) -> bytes:
    return p.encode_error(p.ErrorCode.LOGIN_TIMEOUT, f"no Login within {login_s:g} s")


_SESSIONS: weakref.WeakKeyDictionary[Listener, set[BinarySession]] = weakref.WeakKeyDictionary()


async def start_binary_server(
    service: ExchangeService,
    router: ExecutionRouter,
    accounts: Accounts,
    host: str = "127.0.0.1",
    port: int = 0,
    rate: float = DEFAULT_RATE,
    burst: float = DEFAULT_BURST,
    *,
    max_in_flight: int = MAX_IN_FLIGHT,
    max_output: int = MAX_OUTPUT_BUFFER,
    clock: Callable[[], float] = time.monotonic,
    login_s: float = LOGIN_TIMEOUT_S,
    idle_s: float = SESSION_IDLE_S,
    admission: Admission | None = None,
) -> Listener:
    """Listen for binary sessions. `rate`/`burst`: the per-session token bucket (requests/s;
    rate 0 = unlimited). Port 0 picks a free port: read it from `server.sockets`.
    `login_s`/`idle_s`: the login and idle deadlines; `admission`: the connection caps.
    The router must already receive the service's batches (`service.add_listener(router.on_batch)`)."""
    sessions: set[BinarySession] = set()
    config = _Config(
        service, router, accounts, rate, burst, max_in_flight, max_output, clock, login_s, idle_s, admission
    )
    if admission is not None:
        # Built on the first bytes (issue 13): a flood's silent socket costs no session, only
        # its gate and a slot on the deadline wheel, and is told its Login timed out as a
        # session would tell it.
        timed_out = _login_timeout_frame(login_s)
        factory = admission.lazy_gate(
            lambda opened: BinarySession(config, sessions, opened), login_s, farewell=timed_out
        )
    else:
        factory = lambda: BinarySession(config, sessions)  # noqa: E731
    server = await listen(factory, host, port, admission)
    limit_receive_buffers(server)  # a paused session's client feels it at once
    _SESSIONS[server] = sessions
    bound = server.sockets[0].getsockname() if server.sockets else (host, port)
    log.info("binary gateway listening on %s:%s", bound[0], bound[1])
    return server


def binary_sessions(server: Listener) -> set[BinarySession]:
    """The live sessions of a server started by `start_binary_server`."""
    return set(_SESSIONS.get(server, ()))


async def stop_binary_server(server: Listener) -> None:
    """Stop listening and close every session (asyncio.Server.close leaves them open)."""
    server.close()
    for session in binary_sessions(server):
        session.close()
    await server.wait_closed()


def _error_name(code: int) -> str:
    try:
        return p.ErrorCode(code).name.lower()
    except ValueError:
        return str(code)
