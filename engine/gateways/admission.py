"""Connection admission for every listener, and the deadlines a connection must meet.

Issue 13: nothing capped connections, so 1,100 idle unauthenticated binary sockets under a
1,024-descriptor limit took `/healthz`, REST orders and the journal's next segment down
together, silently. Now each listener (HTTP/WebSocket, binary, FIX) admits a connection only
below its global cap and below a per-IP cap; the caps' defaults come from the descriptor
budget (engine/fdbudget.py), which keeps the journal's, the snapshots' and the metrics'
descriptors out of the connections' reach. A refused connection gets its protocol's refusal
(HTTP 503 JSON TOO_MANY_CONNECTIONS, a binary Error frame, a FIX Logout with Text) and is
closed; refusals are counted by reason and logged as one line when they begin and a summary
every `summary_every_s` while they go on, never a line each.

The gate wraps the listener's protocol factory, so admission happens before a protocol
object (an aiohttp handler, a FIX session) is even built, and the count is released exactly
when the transport goes. Deadlines (`IdleWatch`): a connection must log on within
`login_timeout_s` (FIX has its own logon timer with the same value), and a logged-on
session that sends nothing for `session_idle_s`, with nothing in flight, is closed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, fields

from engine.auth import TokenBucket
from engine.gateways.deadlines import deadline_wheel
from engine.summarised_log import SummarisedLog, Window

log = logging.getLogger("loom.admission")

LISTEN_BACKLOG = 1024  # the kernel's accept queue per listener: a connect burst waits, not fails
LISTENER_FULL = "listener_full"
PER_IP = "per_ip"
REFUSAL_REASONS = (LISTENER_FULL, PER_IP)
LOGIN_TIMEOUT = "login_timeout"
IDLE_TIMEOUT = "idle_timeout"
BODY_TIMEOUT = "body_timeout"
TIMEOUT_REASONS = (LOGIN_TIMEOUT, IDLE_TIMEOUT, BODY_TIMEOUT)
BURST_S = 0.1  # a full listener's refusals at once before it pauses: this long at refusal_rate


@dataclass
class AdmissionSettings:
    """The `[admission]` section of the node's TOML (engine/config.py)."""

    max_connections: int = 0  # per listener; 0 = derived from the descriptor budget
    max_connections_per_ip: int = 0  # per listener and client IP; 0 = derived (see fdbudget)
    login_timeout_s: float = 10.0  # binary Login, WebSocket auth/subscribe, FIX Logon
    session_idle_s: float = 60.0  # a logged-on binary or idle WebSocket session sending nothing
    http_idle_s: float = 15.0  # keep-alive idle, and so the deadline for a request's head
    http_body_s: float = 10.0  # to receive a request's whole body once its head is in
    ws_heartbeat_s: float = 30.0  # WebSocket ping interval; no pong within half of it closes
    reserve_fds: int = 128  # descriptors kept from connections: journal, snapshots, NATS, metrics
    summary_every_s: float = 10.0  # refusals are summarised this often while they go on
    # A full listener refuses at most about this many connections a second; past it, it stops
    # accepting for `refusal_backoff_s` (the rest wait in the kernel's accept queue): 0 = never.
    refusal_rate: float = 500.0
    refusal_backoff_s: float = 0.5

    def check(self) -> None:
        """Raises ValueError naming the first setting out of range."""
        for f in fields(self):
            value = getattr(self, f.name)
            zero_ok = ("max_connections", "max_connections_per_ip", "reserve_fds", "refusal_rate")
            least = 0 if f.name in zero_ok else 0.1
            if value < least:
                raise ValueError(f"[admission] {f.name} must be at least {least:g}, not {value!r}")

    @classmethod
    def from_toml(cls, section: dict) -> AdmissionSettings:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(section) - set(known))
        if unknown:
            raise ValueError(f"unknown [admission] setting(s) {unknown}")
        settings = cls()
        for name, value in section.items():
            kind = int if known[name].type == "int" else float
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"[admission] {name} must be a number, not {value!r}")
            setattr(settings, name, kind(value))
        return settings


def http_refusal(text: str) -> bytes:
    """The whole HTTP answer a refused connection gets before it has sent anything."""
    body = json.dumps({"error": {"code": "TOO_MANY_CONNECTIONS", "message": text}}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class Admission:
    """One listener's connection counts, caps, refusals and timeouts."""

    def __init__(
        self,
        protocol: str,
        limit: int,
        per_ip: int,
        refusal: Callable[[str], bytes],
        summary_every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        refusal_rate: float = 0.0,
        backoff_s: float = 0.5,
    ) -> None:
        self.protocol = protocol
        self.limit = limit
        self.per_ip = per_ip
        self._refusal = refusal  # text -> the bytes a refused connection is sent
        self.open = 0
        self.silent = 0  # admitted by a lazy gate, nothing received yet (no protocol built)
        self.by_ip: dict[str, int] = {}
        self.refused = dict.fromkeys(REFUSAL_REASONS, 0)
        self.timeouts = dict.fromkeys(TIMEOUT_REASONS, 0)
        self._summary = RefusalSummary(protocol, summary_every_s, clock)
        self._clock = clock
        self._refusals: dict[str, tuple[float, bytes]] = {}  # reason -> (built at, bytes)
        self.brake = RefusalBrake(protocol, refusal_rate, backoff_s, summary_every_s, clock)

    def admit(self, ip: str) -> str | None:
        """Counts the connection in and returns None, or returns why it is refused."""
        if self.open >= self.limit:
            reason = LISTENER_FULL
        elif self.by_ip.get(ip, 0) >= self.per_ip:
            reason = PER_IP
        else:
            self.open += 1
            self.by_ip[ip] = self.by_ip.get(ip, 0) + 1
            return None
        self.refused[reason] += 1
        self._summary.refused(reason, ip, self.open, self.limit, self.per_ip)
        if reason == LISTENER_FULL:  # never for per_ip: the listener has room for others
            self.brake.refused()
        return reason

    def release(self, ip: str) -> None:
        self.open -= 1
        left = self.by_ip[ip] - 1
        if left:
            self.by_ip[ip] = left
        else:
            del self.by_ip[ip]

    def timed_out(self, reason: str) -> None:
        self.timeouts[reason] += 1

    def refusal(self, reason: str) -> bytes:
        """The bytes a refused connection is sent; built at most once a second per reason (a
        flood is refused thousands of times a second; FIX's Logout carries a SendingTime)."""
        now = self._clock()
        cached = self._refusals.get(reason)
        if cached is not None and now - cached[0] < 1.0:
            return cached[1]
        if reason == LISTENER_FULL:
            data = self._refusal(f"the {self.protocol} listener is at its {self.limit} connections; retry")
        else:
            data = self._refusal(f"more than {self.per_ip} {self.protocol} connections from this address")
        self._refusals[reason] = (now, data)
        return data

    def lazy_gate(
        self,
        factory: Callable[[float], asyncio.BaseProtocol],
        silent_s: float,
        reason: str = LOGIN_TIMEOUT,
        farewell: bytes = b"",
    ) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for `loop.create_server` that admits a connection; its real
        protocol, `factory(opened)` (`opened`: the connection's time.monotonic()), is built
        on the connection's first bytes: until then it holds only
        a slot on the loop's deadline wheel, and is closed (a timeout counted as `reason`) if
        nothing arrives within `silent_s` (after sending it `farewell`, the protocol's own
        word for the timeout, if any). Issue 13: an aiohttp handler, a FIX task and stream,
        or a binary session, per idle socket of a flood is what stalled the event loop."""
        return lambda: _Gate(self, factory, silent_s, reason, farewell)


class _Gate(asyncio.Protocol):
    """Stands in front of a connection's real protocol: admits it (or refuses and closes),
    builds the real one (at once, or on the first bytes when `silent_s`), forwards every
    callback, and releases the count when the transport goes."""

    __slots__ = (
        "_admission",
        "_factory",
        "_inner",
        "_ip",
        "_transport",
        "_opened",
        "_silent_s",
        "_reason",
        "_farewell",
    )

    def __init__(
        self,
        admission: Admission,
        factory: Callable[[float], asyncio.BaseProtocol],
        silent_s: float = 0.0,
        reason: str = "",
        farewell: bytes = b"",
    ) -> None:
        self._admission = admission
        self._factory = factory
        self._inner = None
        self._ip: str | None = None  # set once admitted
        self._transport = None
        self._opened = 0.0
        self._silent_s = silent_s
        self._reason = reason  # the timeout a silent connection is counted as
        self._farewell = farewell  # what it is sent before it is closed

    def connection_made(self, transport) -> None:
        peer = transport.get_extra_info("peername")
        ip = peer[0] if peer else ""
        admission = self._admission
        reason = admission.admit(ip)
        if reason is not None:
            transport.write(admission.refusal(reason))
            transport.close()
            return
        self._ip = ip
        self._opened = time.monotonic()
        if self._silent_s > 0:
            self._transport = transport
            admission.silent += 1
            loop = asyncio.get_running_loop()
            # The gate is its own deadline callback (__call__), not a bound method: one object
            # fewer per held connection for every full GC pass to walk (a flood's connections
            # are most of the live heap: session 8 counted 6 tracked objects each, now 5).
            deadline_wheel(loop).add(loop.time() + self._silent_s, self)
            return
        self._inner = self._factory(self._opened)
        self._inner.connection_made(transport)

    def __call__(self) -> None:
        """The silent deadline, run by the loop's deadline wheel."""
        transport = self._transport
        if transport is not None and self._inner is None:
            self._transport = None
            self._admission.silent -= 1
            self._admission.timed_out(self._reason)
            if self._farewell:
                transport.write(self._farewell)
            transport.close()

    def connection_lost(self, exc) -> None:
        if self._ip is None:
            return
        inner = self._inner
        self._inner = None
        self._admission.release(self._ip)
        self._ip = None
        if inner is not None:
            inner.connection_lost(exc)
        elif self._transport is not None:  # closed before it said anything
            self._transport = None
            self._admission.silent -= 1

    def data_received(self, data: bytes) -> None:
        inner = self._inner
        if inner is None:
            transport = self._transport
            if transport is None:  # refused, or past its silent deadline
                return
            self._transport = None
            self._admission.silent -= 1
            inner = self._inner = self._factory(self._opened)
            inner.connection_made(transport)
        inner.data_received(data)

    def eof_received(self):
        inner = self._inner
        return inner.eof_received() if inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class RefusalBrake:
    """Bounds the rate at which a full listener accepts only to refuse (session 9).

    Under `ulimit -n 1024` a flood's 20,000 sockets are nearly all refused, and each comes
    back 2 s later: ~10,000 accepts, refusals and closes a second, which cost the node little
    but the flood's process a core of the two, and the trader's acks waited for CPU. A token
    bucket of `rate` refusals a second, BURST_S's worth at once (a burst of refusals is one
    stall of the loop): when it is empty the listener (engine/gateways/listener.py, `pause`)
    stops accepting for `backoff_s`. Meanwhile connections wait in the kernel's accept queue
    (kept short while paused), then in their SYN retries, costing neither side CPU; when it
    resumes they are admitted if room came, else refused as before. One WARNING line when
    pausing begins, then summaries (engine/summarised_log.py).
    """

    def __init__(
        self, protocol: str, rate: float, backoff_s: float, every_s: float, clock: Callable[[], float]
    ) -> None:
        self.protocol = protocol
        self.rate = rate
        self.backoff_s = backoff_s
        self.pause: Callable[[float], bool] | None = None  # set by the listener; True: it paused now
        self.pauses = 0
        self._clock = clock
        self._bucket = TokenBucket(rate, max(1.0, rate * BURST_S))
        self._runs = SummarisedLog(self._summary, every_s, clock, quiet_s=every_s)

    def refused(self) -> None:
        """One full-listener refusal: pause the listener when it is over its rate."""
        if self.rate <= 0 or self.pause is None:
            return
        now = self._clock()
        if self._bucket.allow(now):
            return
        if not self.pause(self.backoff_s):
            return  # already paused: the rest of an accept batch
        self.pauses += 1
        if self._runs.note("paused", now=now):
            log.warning(
                "%s listener full and refusing over %g connections a second: not accepting for "
                "%g s at a time (new connections wait in the accept queue); further pauses "
                "summarised every %g s",
                self.protocol,
                self.rate,
                self.backoff_s,
                self._runs.every_s,
            )

    def _summary(self, window: Window, now: float) -> None:
        log.warning(
            "%s listener paused accepting %d times in the last %.0f s (full, refusing over %g a second)",
            self.protocol,
            window.events,
            min(now, window.last + self._runs.every_s) - window.start,
            self.rate,
        )


class RefusalSummary:
    """One WARNING when a listener starts refusing, then one summary per `every_s` while it
    goes on (on the next refusal after the window), and the episode ends after a quiet
    window: the next refusal starts a new one (engine/summarised_log.py)."""

    def __init__(self, protocol: str, every_s: float, clock: Callable[[], float]) -> None:
        self.protocol = protocol
        self._runs = SummarisedLog(self._summary, every_s, clock, quiet_s=every_s)
        self._open_now = 0

    def refused(self, reason: str, ip: str, open_now: int, limit: int, per_ip: int) -> None:
        self._open_now = open_now
        if self._runs.note(reason, ip):
            log.warning(
                "%s listener refusing connections (%s: %d open, cap %d, %d per address; from %s); "
                "further refusals summarised every %g s",
                self.protocol,
                reason,
                open_now,
                limit,
                per_ip,
                ip,
                self._runs.every_s,
            )

    def _summary(self, window: Window, now: float) -> None:
        counts = ", ".join(f"{n} {reason}" for reason, n in sorted(window.kinds.items()))
        # Summarised on a refusal (not after a quiet gap): the open count is current.
        on_refusal = window.last == now
        log.warning(
            "%s listener refused %s connections in the last %.0f s from %d address(es)%s",
            self.protocol,
            counts,
            min(now, window.last + self._runs.every_s) - window.start,
            len(window.sources),
            f"; {self._open_now} open" if on_refusal else "",
        )


class IdleWatch:
    """The deadlines of one connection, on the loop's shared deadline wheel (no timer of its
    own: engine/gateways/deadlines.py): not `authenticated()` within `login_s` of connecting
    -> `on_timeout(LOGIN_TIMEOUT)`; afterwards no `touch()` for `idle_s` while not `busy()`
    -> `on_timeout(IDLE_TIMEOUT)`. `cancel()` drops the callbacks, so a closed connection is
    not kept alive until its deadline comes round."""

    __slots__ = ("_loop", "_wheel", "_login_s", "_idle_s", "_authenticated", "_busy", "_on_timeout", "last")

    def __init__(
        self,
        login_s: float,
        idle_s: float,
        authenticated: Callable[[], bool],
        busy: Callable[[], bool],
        on_timeout: Callable[[str], None],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._wheel = deadline_wheel(self._loop)
        self._login_s = login_s
        self._idle_s = idle_s
        self._authenticated = authenticated
        self._busy = busy
        self._on_timeout: Callable[[str], None] | None = on_timeout
        self.last = self._loop.time()
        self._wheel.add(self.last + login_s, self._check)

    def touch(self) -> None:
        self.last = self._loop.time()

    def cancel(self) -> None:
        self._on_timeout = None
        self._authenticated = self._busy = _never

    def _check(self) -> None:
        on_timeout = self._on_timeout
        if on_timeout is None:
            return
        if not self._authenticated():
            on_timeout(LOGIN_TIMEOUT)
            return
        now = self._loop.time()
        due = self.last + self._idle_s
        if now >= due and not self._busy():
            on_timeout(IDLE_TIMEOUT)
            return
        self._wheel.add(max(due, now + 1.0), self._check)


def _never() -> bool:
    return False
