"""A thin asyncio acceptor for the FIX 4.4 gateway.

One task per connection reads bytes into its `FixSession`, writes what the session has to
send, and submits the commands each read produced as one batch, reading on while it
commits: the node's overload rule refuses new orders past its bound at once (OVERLOADED),
and a session with `MAX_IN_FLIGHT` orders unanswered is not read (TCP backpressure).
Execution reports come from the execution router, which calls the session for every
durable event of its account. One task per gateway drives every session's timers
(heartbeats, TestRequest, logon and logout timeouts). A connection that has sent nothing
yet is only its admission gate and a slot on the loop's deadline wheel
(`Admission.lazy_gate`): its task, stream and session are built on its first bytes, so a
flood of idle sockets costs little (issue 13).

    server = await start_fix_server(service, router, order_store, accounts,
                                    "127.0.0.1", 0, store_dir)
    port = server.sockets[0].getsockname()[1]
    ...
    await stop_fix_server(server)   # Logout to every session, then close
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path

from engine.access_log import AccessLog
from engine.gateways.admission import LOGIN_TIMEOUT, Admission
from engine.gateways.fix.codec import encode_message, utc_timestamp
from engine.gateways.fix.comp_ids import DEFAULT_MAX_PER_ACCOUNT, CompIdBinding
from engine.gateways.fix.session import FixSession, SessionConfig, SessionEnv, State
from engine.gateways.fix.store import FileStore, store_dir_name
from engine.gateways.listener import Listener, listen
from engine.observer import NULL_OBSERVER
from engine.overload import TEXT_RECEIVE_BUFFER, InFlight, coded_text, limit_receive_buffers
from engine.service import NotLeader, Overloaded, ServiceStopped

log = logging.getLogger("loom.fix")

MAX_WRITE_BUFFER = 16 * 1024 * 1024  # a client this far behind is dropped (it can resend)
READ_CHUNK = 64 * 1024
# Orders one session may have submitted and not yet answered before it is no longer read.
# Above what the overload rule admits (about a read's worth plus 50 ms of capacity), so under
# overload the excess is refused at once rather than left waiting in the socket buffers.
MAX_IN_FLIGHT = 2048
# What loom_fix_sessions{state} calls each state of the session machine (an operator's words).
STATE_LABELS = {
    State.AWAIT_LOGON: "awaiting_logon",
    State.ACTIVE: "logged_on",
    State.LOGOUT_SENT: "logging_out",
    State.CLOSED: "closing",
}


def session_states() -> tuple[str, ...]:
    return tuple(STATE_LABELS.values())


class _Connection:
    def __init__(self, session: FixSession, writer: asyncio.StreamWriter) -> None:
        self.session = session
        self.writer = writer
        self.task: asyncio.Task | None = None
        self.peer = writer.get_extra_info("peername")
        self.submissions: set[asyncio.Task] = set()  # reads' batches not yet settled
        self.flight = InFlight(MAX_IN_FLIGHT)
        self.readable = asyncio.Event()  # set when a paused session may be read again
        self._flush_due = False  # a flush of event reports is scheduled
        self._loop = asyncio.get_running_loop()

    def flush(self) -> None:
        """Write what the session has to send; close the transport once the session is
        closed (after the bytes already queued, e.g. a Logout, are sent)."""
        data = self.session.data_to_send()
        writer = self.writer
        if writer.is_closing():
            return
        if data:
            writer.write(data)
        if self.session.closed:
            writer.close()
        elif writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            log.warning(
                "FIX %s at %s reads too slowly: dropping the connection", self.session.counterparty, self.peer
            )
            writer.transport.abort()

    def on_event(self, event) -> None:
        """An event of the account: its report is written with the rest of its batch's, once
        the router has handed them all over (one send and one store write per batch, not per
        report: a read's hundreds of orders are answered together; issue 13)."""
        self.session.on_event(event)
        if not self._flush_due:
            self._flush_due = True
            self._loop.call_soon(self._flush_batch)

    def _flush_batch(self) -> None:
        self._flush_due = False
        self.flush()


@dataclass
class FixGateway:
    """The state behind one listening FIX server."""

    service: object
    router: object
    order_store: object
    accounts: object
    store_dir: Path
    config: SessionConfig
    timer_interval: float = 0.5
    sessions: dict[str, FixSession] = field(default_factory=dict)  # logged on, by SenderCompID
    connections: set[_Connection] = field(default_factory=set)
    access: AccessLog = field(default_factory=AccessLog)  # off unless sampled
    admission: Admission | None = None  # counts the Logon timeouts
    comp_ids: CompIdBinding | None = None  # SenderCompIDs per account (default: none bound, 16 each)
    _ticker: asyncio.Task | None = None

    def __post_init__(self) -> None:
        self.store_dir = Path(self.store_dir)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if self.comp_ids is None:
            self.comp_ids = CompIdBinding(store_dir=self.store_dir)
        binding = self.comp_ids
        lookup = getattr(self.order_store, "get", None)
        self.env = SessionEnv(
            authenticate=self.accounts.authenticate,  # type: ignore[attr-defined]
            comp_id_problem=lambda comp_id, account: binding.problem(
                comp_id, account, store_dir_name(comp_id)
            ),
            open_store=lambda comp_id: FileStore(self.store_dir, comp_id),
            order_lookup=lookup,
            claim=self._claim,
            release=self._release,
            shed=self._shed,
        )

    def session_states(self) -> dict[str, int]:
        """Open connections by session state (every state listed, 0 included)."""
        counts = dict.fromkeys(STATE_LABELS.values(), 0)
        for conn in self.connections:
            counts[STATE_LABELS[conn.session.state]] += 1
        if self.admission is not None:  # connected, nothing received yet: no session built
            counts[STATE_LABELS[State.AWAIT_LOGON]] += self.admission.silent
        return counts

    def _claim(self, comp_id: str, session: FixSession) -> bool:
        # A session that is still settling its commands keeps its SenderCompID (and its
        # store files) until its connection task ends.
        if comp_id in self.sessions:
            return False
        self.sessions[comp_id] = session
        return True

    def _release(self, comp_id: str, session: FixSession) -> None:
        if self.sessions.get(comp_id) is session:
            del self.sessions[comp_id]

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, opened: float | None = None
    ) -> None:
        """Run one connection; `opened`: when it connected (time.monotonic; default now)."""
        session = FixSession(self.env, self.config, created=opened)
        conn = _Connection(session, writer)
        conn.task = asyncio.current_task()
        self.connections.add(conn)
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick_all())
        unsubscribe = None
        reason = "connection closed by the counterparty"
        logged = self.access.sampled()  # this session's logon and logout go to the access log
        try:
            while not session.closed:
                data = await reader.read(READ_CHUNK)
                if not data:
                    break
                started = time.perf_counter()
                limited_before = session.stats.get("rate_limited", 0)
                session.receive_data(data)
                observer = getattr(self.service, "observer", NULL_OBSERVER)
                observer.decoded(time.perf_counter() - started)  # once per read
                limited = session.stats.get("rate_limited", 0) - limited_before
                if limited:
                    observer.rate_limited("fix", limited)
                if session.decode_errors:
                    for code, n in session.decode_errors.items():
                        observer.decode_error("fix", code, n)
                    session.decode_errors.clear()
                if unsubscribe is None and session.account:
                    unsubscribe = self.router.subscribe(session.account, conn.on_event)  # type: ignore[attr-defined]
                    if logged:
                        self._access(conn, session, "logon")
                conn.flush()
                commands = session.take_commands()
                if commands:
                    self._submit(conn, commands, started)
                if not writer.is_closing():
                    await writer.drain()
                if conn.flight.paused:  # too much of this session in flight: let TCP push back
                    await conn.readable.wait()
        except (ConnectionError, OSError) as exc:
            reason = f"connection lost: {exc}"
        except Exception:
            log.exception("FIX connection from %s failed", conn.peer)
            reason = "internal error"
        finally:
            if conn.submissions:  # answer what is in flight before the session lets go of its store
                await asyncio.wait(list(conn.submissions), timeout=5.0)
            if self.admission is not None and session.close_reason.startswith("no Logon within"):
                self.admission.timed_out(LOGIN_TIMEOUT)
            session.close(reason)
            conn.flush()
            if unsubscribe is not None:
                unsubscribe()
                if logged:
                    self._access(conn, session, "logout", reason=session.close_reason or reason)
            self.connections.discard(conn)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _submit(self, conn: _Connection, commands: list, started: float) -> None:
        """Hand one read's commands to the exchange and read on while they commit, so the
        node's overload rule sees this session's backlog and refuses its excess at once
        (`_shed`) instead of leaving it to wait in the socket buffers."""
        task = asyncio.get_running_loop().create_task(
            self.service.submit(commands, "fix", started)  # type: ignore[attr-defined]
        )
        conn.submissions.add(task)
        if conn.flight.add(len(commands)):
            conn.readable.clear()
        task.add_done_callback(lambda t: self._submitted(conn, t, commands))

    def _submitted(self, conn: _Connection, task: asyncio.Task, commands: list) -> None:
        conn.submissions.discard(task)
        session = conn.session
        exc = asyncio.CancelledError() if task.cancelled() else task.exception()
        if exc is None:
            session.submit_done(commands)
        elif isinstance(exc, Overloaded):  # counted in loom_overload_refusals, not logged
            session.submit_done(commands, exc, coded_text(str(exc)))
        elif isinstance(exc, NotLeader):  # a standby: the reject's Text names the leader's FIX endpoint
            session.submit_done(commands, ServiceStopped(f"NOT_LEADER: {exc.text('fix')}"))
        else:
            log.error("FIX %s: batch of %d commands failed: %s", session.counterparty, len(commands), exc)
            session.submit_done(commands, exc)
        if conn.flight.done(len(commands)):
            conn.readable.set()
        conn.flush()

    def _shed(self, n: int) -> str | None:
        """The session's question to the node's overload rule: why n new orders would be
        refused now (counted as refused), or None."""
        service = self.service
        if not service.refuses_orders(n):  # type: ignore[attr-defined]
            return None
        service.refused("fix", 1)  # type: ignore[attr-defined]
        return coded_text(service.overload_text())  # type: ignore[attr-defined]

    def _access(self, conn: _Connection, session: FixSession, event: str, reason: str = "") -> None:
        stats = session.stats
        self.access.session(
            "fix",
            event,
            ":".join(map(str, conn.peer[:2])) if conn.peer else None,
            session.account,
            sender_comp_id=session.counterparty,
            target_comp_id=self.config.comp_id,
            messages_in=sum(n for k, n in stats.items() if k.startswith("received.")),
            messages_out=sum(n for k, n in stats.items() if k.startswith("sent.")),
            reason=reason,
        )

    async def _tick_all(self) -> None:
        """Every session's timers, every `timer_interval`: one task for the gateway (a task
        per connection cost the loop 2 wake-ups a second per idle socket)."""
        while True:
            await asyncio.sleep(self.timer_interval)
            for conn in list(self.connections):
                if conn.session.closed:
                    continue
                try:
                    conn.session.on_timer()
                    conn.flush()
                except Exception:
                    log.exception("FIX %s: session timer failed", conn.peer)

    async def close(self, timeout: float = 5.0) -> None:
        """Log every session out (waiting up to `timeout` for the answers), then drop
        whatever is left."""
        for conn in list(self.connections):
            conn.session.logout("the exchange is shutting down")
            conn.flush()
        tasks = [c.task for c in self.connections if c.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for conn in list(self.connections):
                conn.writer.transport.abort()
            if pending:
                _, still = await asyncio.wait(pending, timeout=1.0)
                for task in still:
                    task.cancel()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None


_GATEWAYS: weakref.WeakKeyDictionary[Listener, FixGateway] = weakref.WeakKeyDictionary()


async def start_fix_server(
    service,
    router,
    order_store,
    accounts,
    host: str,
    port: int,
    store_dir: Path | str,
    heartbeat_timeout: float = 10.0,
    *,
    config: SessionConfig | None = None,
    timer_interval: float = 0.5,
    access: AccessLog | None = None,
    admission: Admission | None = None,
    comp_ids: dict[str, str] | None = None,
    max_comp_ids: int = DEFAULT_MAX_PER_ACCOUNT,
) -> Listener:
    """Listen for FIX 4.4 clients. `heartbeat_timeout` is how long a counterparty has to
    answer our TestRequest (sent after HeartBtInt + 20% of silence) before it is logged
    out and disconnected; `store_dir` keeps each SenderCompID's sequence numbers and sent
    messages across restarts. `admission`: the connection caps (a refused connection gets a
    Logout whose Text says why, then is closed); `comp_ids` binds SenderCompIDs to accounts
    (SenderCompID -> account; an account with none bound may use up to `max_comp_ids`)."""
    cfg = replace(config or SessionConfig(), heartbeat_timeout=heartbeat_timeout)
    binding = CompIdBinding(comp_ids, max_comp_ids, Path(store_dir))
    gateway = FixGateway(
        service, router, order_store, accounts, Path(store_dir), cfg, timer_interval, comp_ids=binding
    )
    if access is not None:
        gateway.access = access
    gateway.admission = admission

    def stream(opened: float) -> asyncio.StreamReaderProtocol:  # what asyncio.start_server builds
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(), lambda r, w: gateway.serve(r, w, opened))

    if admission is not None:  # the task, stream and session are built on the first bytes
        factory = admission.lazy_gate(stream, cfg.logon_timeout)
    else:
        factory = lambda: stream(time.monotonic())  # noqa: E731
    server = await listen(factory, host, port, admission)
    # Small socket buffers make a paused session's pause reach the client at once instead
    # of parking its orders in the kernel.
    limit_receive_buffers(server, TEXT_RECEIVE_BUFFER)
    _GATEWAYS[server] = gateway
    log.info("FIX gateway listening on %s", ", ".join(str(s.getsockname()) for s in server.sockets))
    return server


def refusal_logout(text: str, comp_id: str = "LOOM") -> bytes:
    """The Logout a connection refused before its Logon gets (its CompID is not known yet)."""
    return encode_message("5", comp_id, "UNKNOWN", 1, utc_timestamp(time.time()), [(58, text)])


def fix_gateway(server: Listener) -> FixGateway:
    """The gateway state behind a server from `start_fix_server` (live sessions etc.)."""
    return _GATEWAYS[server]


async def stop_fix_server(server: Listener, timeout: float = 5.0) -> None:
    """Stop accepting, log every session out, close the connections and the stores."""
    server.close()
    gateway = _GATEWAYS.pop(server, None)
    if gateway is not None:
        await gateway.close(timeout)
    await server.wait_closed()
