"""The WebSocket gateway (/v1/ws): one WsSession per connection for order entry, market data
and execution streams (the protocol: docs/websocket.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Literal

import msgspec
from aiohttp import WSMsgType, web

from engine.auth import TokenBucket
from engine.candles import INTERVALS, candle_json
from engine.core.commands import Amend, Cancel, CancelAll
from engine.core.events import OrderRejected
from engine.gateways.http_answers import error, not_leader_fields
from engine.gateways.http_auth import api_key
from engine.gateways.http_context import CTX, MAX_BODY, SESSIONS, GatewayContext
from engine.gateways.http_limits import limits_of, ws_watch
from engine.gateways.http_requests import Int64, OrderRequest, new_order_command
from engine.gateways.http_shed import HeldSocket
from engine.gateways.json_depth import MAX_DEPTH, too_deep
from engine.gateways.json_events import event_json
from engine.gateways.ws_batch import OrderBatch
from engine.gateways.ws_frames import DEFAULT_SEND_BUFFER, json_frame
from engine.gateways.ws_masking import require_masked_frames
from engine.gateways.ws_shed import OverloadedFrames, shed_req_id
from engine.gateways.ws_states import ACTIVE, AWAITING_AUTH, CLOSED, DROPPED, REFUSED, TABLE
from engine.ledger_index import balance_json
from engine.market_data import MAX_RATE_HZ
from engine.overload import WS_MAX_IN_FLIGHT, InFlight
from engine.reason_texts import reject_code, reject_text
from engine.service import NotLeader, Overloaded, ServiceStopped
from telemetry.trace_ids import parse_traceparent

log = logging.getLogger("loom.http")

_CANDLE_INTERVALS = ", ".join(INTERVALS)


class WsSession:
    """One WebSocket connection: order entry, market data and execution streams. Replies
    and pushes go through an outbox of encoded frames drained by one writer task, so the
    commit loop never waits on a slow client: a client whose outbox reaches the bound
    ([market_data] max_queued) is told SLOW_CONSUMER and disconnected. Market data frames
    are shared with every other subscriber (encoded once by engine/market_data.py).

    Where the session is in its life is `state` (engine/gateways/ws_states.py), moved only
    by `_move`; what its state does not allow is refused in one place, `_refuses`."""

    def __init__(
        self, ctx: GatewayContext, ws: web.WebSocketResponse, account: str | None, transport=None
    ) -> None:
        self.ctx = ctx
        self.ws = ws
        self.account = account
        self.state = ACTIVE if account is not None else AWAITING_AUTH
        self._refused = REFUSED[self.state]  # input -> (code, message) or None, for what it refuses
        self.closed = False  # the state is CLOSED or DROPPED (read on every push: kept by _move)
        self.outbox: list[bytes] = []
        self.transport = transport
        self.wake = asyncio.Event()
        self.sent = 0  # messages queued to the client (the access log's messages_out)
        self.unsubscribers: dict[tuple, Callable[[], None]] = {}
        self.bucket = TokenBucket(ctx.rate, ctx.burst or max(1.0, ctx.rate))
        self.flight = InFlight(WS_MAX_IN_FLIGHT)  # orders submitted, not yet answered
        self.readable = asyncio.Event()  # cleared while the in-flight bound holds reading
        self.readable.set()
        self.control_bucket = TokenBucket(ctx.rate, ctx.burst or max(1.0, ctx.rate))
        self.overloaded = OverloadedFrames()  # the cheap refusal's frames (engine/gateways/ws_shed.py)
        self.batch = OrderBatch(self._submit_now)  # this loop turn's orders (engine/gateways/ws_batch.py)
        # When the oldest market data message in the outbox became durable (0: none queued).
        self.md_since = 0.0
        self.max_queued = ctx.market_data.max_queued
        self.high_water = ctx.market_data.send_buffer_bytes  # socket bytes before the writer waits
        self.idle = False  # the writer waits for frames: nothing of this session is unwritten
        if self.high_water < DEFAULT_SEND_BUFFER and transport is not None:
            # A smaller bound than the default also caps the kernel's send buffer, which
            # autotuning grows to megabytes: "too far behind" then comes that much sooner.
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.high_water)

    @property
    def dropped(self) -> bool:
        """Cut off as a slow consumer."""
        return self.state is DROPPED

    def _move(self, event: str) -> None:
        """The one place the session changes state (an event the table lacks is a bug)."""
        self.state = state = TABLE.next(self.state, event)
        self._refused = REFUSED[state]
        self.closed = state >= CLOSED

    def _refuses(self, req_id, event: str) -> bool:
        """Whether the state refuses this input; if it does, the client is told why (a
        closed session's input is ignored: no reply would be sent)."""
        if event not in self._refused:
            return False
        answer = self._refused[event]
        if answer is not None:
            self.fail(req_id, *answer)
        return True

    def _account_for(self, req_id, event: str) -> str | None:
        """The session's account, for an input that needs one; None (and the client told
        why) when the state refuses it (a state that allows it has an account)."""
        return None if self._refuses(req_id, event) else self.account

    def send(self, message: dict) -> None:
        self._queue(json_frame(message))

    def push(self, frame: bytes, published_at: float) -> bool:
        """A market data frame (shared, encoded once), noting when its batch became durable.
        With nothing queued and the socket keeping up, it is written at once: waking the
        writer task per frame cost more than the write (10,000 book subscribers). True when
        written at once: the publisher then takes the fan-out lag once for all such writes
        (a histogram observe per frame was a fifth of a 10,000-subscriber flush, py-spy)."""
        transport = self.transport
        if (
            self.idle
            and not self.outbox
            and not self.closed
            and transport is not None
            and not transport.is_closing()
            and transport.get_write_buffer_size() <= self.high_water
        ):
            transport.write(frame)
            self.sent += 1
            return True
        if not self.md_since:
            self.md_since = published_at
        self._queue(frame)
        return False

    def _queue(self, frame: bytes) -> None:
        if self.closed:
            return
        if len(self.outbox) >= self.max_queued:
            self._drop_slow()
            return
        self.outbox.append(frame)
        self.sent += 1
        self.wake.set()

    def _drop_slow(self) -> None:
        """Too far behind: what is queued is discarded, the client is told why, and the
        session ends (its subscriptions at once, so no publisher pays for it any more)."""
        log.warning("websocket client too slow (%d messages queued); closing", len(self.outbox))
        self.ctx.observer.slow_consumer_dropped()
        reason = {
            "type": "error",
            "req_id": None,
            "code": "SLOW_CONSUMER",
            "message": f"{len(self.outbox)} messages were queued for this session, the limit "
            "([market_data] max_queued): disconnected. Reconnect, resubscribe and read faster "
            "(or subscribe to the book with a lower max_rate)",
        }
        self.outbox = [json_frame(reason)]
        self._move("slow_consumer")
        self.close()

    async def writer(self) -> None:
        while not self.closed or self.outbox:
            if not self.outbox:
                self.wake.clear()
                self.idle = not self.closed and not self.ws.closed
                await self.wake.wait()
                self.idle = False
                continue
            batch, self.outbox = self.outbox, []
            if self.ws.closed:
                return
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            # Every queued message as its own text frame, all in one write: a send (and a
            # system call) per message cost more than the order behind it. Server frames
            # are unmasked and the socket is uncompressed, so framing here is exact; whole
            # frames never interleave with aiohttp's own (pings, close).
            transport.write(b"".join(batch))
            if self.md_since:
                self.ctx.observer.fanout_lag(time.perf_counter() - self.md_since)
                self.md_since = 0.0
            while transport.get_write_buffer_size() > self.high_water and not transport.is_closing():
                if self.dropped and self.outbox:
                    transport.write(b"".join(self.outbox))  # the SLOW_CONSUMER error, after the rest
                    self.outbox = []
                await asyncio.sleep(0.001)
                if self.dropped:
                    break
        if not self.ws.closed:
            # A slow consumer's close waits (aiohttp's close timeout) for a peer that may not read.
            await self.ws.close(code=1008 if self.dropped else 1000)

    def fail(self, req_id, code: str, message: str) -> None:
        self.send({"type": "error", "req_id": req_id, "code": code, "message": message})

    def unreadable(self, req_id, code: str, message: str) -> None:
        """An error for a message that cannot be read: counted in loom_decode_errors."""
        self.ctx.observer.decode_error("websocket", code)
        self.fail(req_id, code, message)

    def handle(self, raw: str | bytes) -> None:
        if self._refuses(None, "message"):
            return
        if too_deep(raw):  # msgspec would recurse until RecursionError ended the session
            self.unreadable(None, "TOO_DEEP", f"message nests JSON deeper than {MAX_DEPTH} levels")
            return
        if self._shed(raw):
            return
        try:
            msg = msgspec.json.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            # FIX: a binary frame that is not UTF-8 raises UnicodeDecodeError, which escaped
            # and closed the session; it is a MALFORMED_JSON error like any other.
            self.unreadable(None, "MALFORMED_JSON", f"message is not valid JSON: {exc}")
            return
        if not isinstance(msg, dict):
            self.unreadable(None, "INVALID_REQUEST", "a message must be a JSON object with an 'op'")
            return
        req_id = msg.pop("req_id", None)
        op = msg.pop("op", None)
        handler = _WS_OPS.get(op) if isinstance(op, str) else None
        if handler is None:
            self.unreadable(req_id, "UNKNOWN_OP", f"unknown op {op!r}; one of {sorted(_WS_OPS)}")
            return
        if op in _WS_CONTROL and not self._within_rate(req_id, self.control_bucket):
            return  # (trading ops check their own bucket once authenticated)
        try:
            handler(self, req_id, msg)
        except msgspec.ValidationError as exc:
            self.unreadable(req_id, "INVALID_REQUEST", str(exc))
        except (Overloaded, NotLeader, ServiceStopped) as exc:
            self._refusal(req_id, exc)

    def _refusal(self, req_id, exc: Overloaded | NotLeader | ServiceStopped) -> None:
        """The answer to a command the exchange did not take (nothing was sequenced)."""
        if isinstance(exc, Overloaded):  # resend after retry_after_s
            self.send(
                {
                    "type": "error",
                    "req_id": req_id,
                    "code": "OVERLOADED",
                    "message": str(exc),
                    "retry_after_s": exc.retry_after_s,
                }
            )
        elif isinstance(exc, NotLeader):
            body = not_leader_fields(exc)
            self.send({"type": "error", "req_id": req_id, "code": "NOT_LEADER", **body})
        else:
            self.fail(req_id, "SHUTTING_DOWN", str(exc))

    def _shed(self, raw: str | bytes) -> bool:
        """While the commit queue refuses new orders, an order or amend of an authenticated
        session within its rate limit is refused from its op and req_id alone, before the
        full decode (engine/gateways/ws_shed.py): the answer the ordinary path would give
        (OVERLOADED), at a fraction of its cost. Anything else goes the ordinary way."""
        service = self.ctx.service
        # (this read's orders not yet submitted count: the batch would be refused with them)
        if (
            self.state is not ACTIVE
            or not service.accepting
            or not service.refuses_orders(len(self.batch) + 1)
        ):
            return False
        req_id = shed_req_id(raw)
        if req_id is None or not self.bucket.allow(time.monotonic()):
            return False  # (over the rate limit: the ordinary path answers RATE_LIMITED)
        service.refused("websocket", 1)
        self._queue(self.overloaded.frame(req_id, service))
        return True

    def _trading(self, req_id) -> str | None:
        """The account to trade for, or None: refused by the state or the rate limit."""
        account = self._account_for(req_id, "trade")
        return account if account is not None and self._within_rate(req_id, self.bucket) else None

    def _within_rate(self, req_id, bucket: TokenBucket) -> bool:
        """The session's rate limit: one bucket for trading, one for control ops (auth, ping,
        subscribe: never limited before), so a client at its trading limit can still ping."""
        if not bucket.allow(time.monotonic()):
            self.ctx.rate_limited += 1
            self.ctx.observer.rate_limited("websocket")
            self.fail(req_id, "RATE_LIMITED", f"more than {self.ctx.rate:g} requests per second")
            return False
        return True

    def _submit(self, req_id, command, batched: bool = False) -> None:
        """Submit one command; `batched` (new orders, amends): with the others of this loop
        turn (engine/gateways/ws_batch.py). Anything else flushes those first, so the queue
        sees the session's commands in the order it sent them."""
        if self.flight.add():  # stop reading this session until half its orders are answered
            self.readable.clear()
        if batched:
            self.batch.add(req_id, command)
            return
        self.batch.flush()
        self._submit_now([req_id], [command])

    def _submit_now(self, req_ids: list, commands: list) -> None:
        try:
            self.ctx.service.enqueue(commands, lambda results: self._answer(req_ids, results), "websocket")
        except (Overloaded, NotLeader, ServiceStopped) as exc:  # nothing was sequenced
            if self.flight.done(len(req_ids)):
                self.readable.set()
            if isinstance(exc, Overloaded) and len(req_ids) > 1:  # counted by the service
                frames = self.overloaded
                for req_id in req_ids:
                    self._queue(frames.frame(msgspec.json.encode(req_id), self.ctx.service))
                return
            for req_id in req_ids:
                self._refusal(req_id, exc)

    def _answer(self, req_ids: list, results: list[list]) -> None:
        """The committed answer of each command of one submission, in the order sent."""
        if self.flight.done(len(req_ids)):
            self.readable.set()
        for req_id, events in zip(req_ids, results, strict=True):
            if events and type(events[0]) is OrderRejected:
                ev = events[0]
                self.send(
                    {
                        "type": "rejected",
                        "req_id": req_id,
                        "code": reject_code(ev.reason),
                        "message": reject_text(ev.reason),
                        "events": [event_json(ev)],
                    }
                )
            else:
                self.send({"type": "ack", "req_id": req_id, "events": [event_json(e) for e in events]})

    def op_auth(self, req_id, msg: dict) -> None:
        key = msg.get("api_key")
        if key is not None and not isinstance(key, str):
            # FIX: a non-string api_key (a number, a list) raised inside the key hashing and
            # closed the session; it is an INVALID_REQUEST error now.
            self.fail(req_id, "INVALID_REQUEST", "api_key must be a string")
            return
        account = self.ctx.accounts.authenticate(key)
        if account is None:
            self.fail(req_id, "UNAUTHENTICATED", "unknown API key")
            return
        self.account = account
        self._move("authenticated")
        self.send({"type": "authenticated", "req_id": req_id, "account": account})

    def op_order(self, req_id, msg: dict) -> None:
        traceparent = msg.pop("traceparent", "")
        req = msgspec.convert(msg, OrderRequest)
        account = self._trading(req_id)
        if account is not None:
            cmd = new_order_command(account, req)
            incoming = parse_traceparent(traceparent) if isinstance(traceparent, str) else None
            if incoming:
                cmd.trace_id, cmd.trace_parent = incoming
            self._submit(req_id, cmd, batched=True)

    def op_cancel(self, req_id, msg: dict) -> None:
        req = msgspec.convert(msg, _WsCancel)
        if not req.order_id and not req.client_order_id:
            self.fail(req_id, "INVALID_REQUEST", "cancel needs order_id or client_order_id")
        elif (account := self._trading(req_id)) is not None:
            self._submit(req_id, Cancel(account, req.order_id, req.client_order_id))

    def op_amend(self, req_id, msg: dict) -> None:
        req = msgspec.convert(msg, _WsAmend)
        account = self._trading(req_id)
        if account is not None:
            cmd = Amend(
                account, req.order_id, req.client_order_id, req.qty, req.price, req.new_client_order_id
            )
            self._submit(req_id, cmd, batched=True)

    def op_cancel_all(self, req_id, msg: dict) -> None:
        req = msgspec.convert(msg, _WsCancelAll)
        account = self._trading(req_id)
        if account is not None:
            self._submit(req_id, CancelAll(account, req.symbol))

    def op_subscribe(self, req_id, msg: dict) -> None:
        req = msgspec.convert(msg, _WsSubscribe)
        key = _sub_key(req)
        if key in self.unsubscribers:
            self.fail(req_id, "ALREADY_SUBSCRIBED", f"already subscribed to {req.channel} {req.symbol}")
            return
        if req.channel == "executions":
            account = self._account_for(req_id, "subscribe_executions")
            if account is None:
                return
            self.unsubscribers[key] = self.ctx.router.subscribe(
                account, lambda ev: self.send({"type": "execution", "event": event_json(ev)})
            )
            self.send({"type": "subscribed", "req_id": req_id, "channel": "executions"})
            return
        if req.channel == "balances":
            account = self._account_for(req_id, "subscribe_balances")
            if account is None:
                return
            self.unsubscribers[key] = self.ctx.ledger.subscribe(
                account, lambda _account, entry: self.send(balance_json(entry))
            )
            self.send({"type": "subscribed", "req_id": req_id, "channel": "balances"})
            return
        if req.symbol not in self.ctx.engine.books:
            self.fail(req_id, "UNKNOWN_SYMBOL", f"unknown symbol {req.symbol!r}")
            return
        md = self.ctx.market_data
        if req.channel == "l3" and not md.l3_available:
            self.fail(req_id, "NOT_AVAILABLE", "l3 is served by the matching node only (this serves levels)")
            return
        if req.channel == "candles" and req.interval not in INTERVALS:
            self.fail(req_id, "INVALID_REQUEST", f"candles need an interval: one of {_CANDLE_INTERVALS}")
            return
        max_rate = md.book_max_rate if req.max_rate is None else req.max_rate
        if req.channel == "book" and not 0 <= max_rate <= MAX_RATE_HZ:
            self.fail(req_id, "INVALID_REQUEST", f"max_rate is 0 (every update) to {MAX_RATE_HZ} per second")
            return
        if req.channel == "book":
            self.unsubscribers[key] = md.subscribe_book(req.symbol, self, max_rate)
        elif req.channel == "l3":
            self.unsubscribers[key] = md.subscribe_l3(req.symbol, self)
        else:
            self.unsubscribers[key] = md.subscribe(req.channel, req.symbol, self, req.interval)
        answer = {"type": "subscribed", "req_id": req_id, "channel": req.channel, "symbol": req.symbol}
        if req.channel == "candles":
            answer["interval"] = req.interval
        elif req.channel == "book":
            answer["max_rate"] = max_rate
        self.send(answer)
        self._first_state(req.channel, req.symbol, req.interval)

    def _first_state(self, channel: str, symbol: str, interval: str, req_id=None) -> None:
        """What a new subscriber starts from: a snapshot, the ticker, the current candle. A
        resync's snapshot carries its req_id (it is the answer)."""
        md = self.ctx.market_data
        if channel == "book":
            self.send(md.snapshot(symbol) | ({"req_id": req_id} if req_id is not None else {}))
        elif channel == "l3":
            self.send(md.l3_snapshot(symbol) | ({"req_id": req_id} if req_id is not None else {}))
        elif channel == "ticker":
            self.send(md.ticker(symbol))
        elif channel == "candles":
            for b in md.candles.query(symbol, interval, 0, 0, 1):
                self.send({"type": "candle", **candle_json(symbol, interval, b)})

    def op_resync(self, req_id, msg: dict) -> None:
        """Gap recovery without resubscribing: a fresh snapshot on the live subscription."""
        req = msgspec.convert(msg, _WsSubscribe)
        if req.channel not in ("book", "l3"):
            self.fail(req_id, "INVALID_REQUEST", "resync is for the sequenced channels: book, l3")
            return
        if _sub_key(req) not in self.unsubscribers:
            self.fail(req_id, "NOT_SUBSCRIBED", f"not subscribed to {req.channel} {req.symbol}")
            return
        self.ctx.observer.md_gap_recovery(req.channel)
        self._first_state(req.channel, req.symbol, "", req_id)

    def op_unsubscribe(self, req_id, msg: dict) -> None:
        req = msgspec.convert(msg, _WsSubscribe)
        stop = self.unsubscribers.pop(_sub_key(req), None)
        if stop is None:
            self.fail(req_id, "NOT_SUBSCRIBED", f"not subscribed to {req.channel} {req.symbol}")
            return
        stop()
        self.send({"type": "unsubscribed", "req_id": req_id, "channel": req.channel, "symbol": req.symbol})

    def op_ping(self, req_id, _msg: dict) -> None:
        self.send({"type": "pong", "req_id": req_id})

    def close(self) -> None:
        self._move("closed")
        for stop in self.unsubscribers.values():
            stop()
        self.unsubscribers.clear()
        self.wake.set()


class _WsCancel(msgspec.Struct, forbid_unknown_fields=True):
    order_id: Int64 = 0  # FIX: Int64, see above
    client_order_id: str = ""


class _WsAmend(msgspec.Struct, forbid_unknown_fields=True):
    order_id: Int64 = 0  # FIX: Int64, see above
    client_order_id: str = ""
    qty: Int64 = 0
    price: Int64 = 0
    new_client_order_id: str = ""


class _WsCancelAll(msgspec.Struct, forbid_unknown_fields=True):
    symbol: str = ""


class _WsSubscribe(msgspec.Struct, forbid_unknown_fields=True):
    channel: Literal["book", "trades", "ticker", "candles", "l3", "executions", "balances"]
    symbol: str = ""
    interval: str = ""  # candles: 1m, 5m or 1h
    max_rate: float | None = None  # book: updates per second at most (0: every one); None: the node's default


def _sub_key(req: _WsSubscribe) -> tuple:
    # FIX (tests/test_ws_gateway.py): executions are per account, not per symbol; keyed by
    # (channel, symbol) a second subscription naming another symbol was accepted and every
    # execution report was then delivered twice.
    return (req.channel, "" if req.channel in _PER_ACCOUNT else req.symbol, req.interval)


_PER_ACCOUNT = frozenset(("executions", "balances"))


_WS_CONTROL = frozenset(("auth", "subscribe", "unsubscribe", "resync", "ping"))
_WS_OPS = {
    "auth": WsSession.op_auth,
    "order": WsSession.op_order,
    "cancel": WsSession.op_cancel,
    "amend": WsSession.op_amend,
    "cancel_all": WsSession.op_cancel_all,
    "subscribe": WsSession.op_subscribe,
    "unsubscribe": WsSession.op_unsubscribe,
    "resync": WsSession.op_resync,
    "ping": WsSession.op_ping,
}


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ctx = request.app[CTX]
    key = api_key(request)
    account = ctx.accounts.authenticate(key) if key else None
    if key and account is None:
        return error(401, "UNAUTHENTICATED", "unknown API key")
    limits = limits_of(request.app)
    ws = web.WebSocketResponse(
        heartbeat=limits.settings.ws_heartbeat_s, max_msg_size=MAX_BODY, compress=False
    )
    await ws.prepare(request)
    require_masked_frames(request, ws)  # RFC 6455: an unmasked client frame closes with 1002
    session = WsSession(ctx, ws, account, request.transport)
    writer = asyncio.create_task(session.writer())
    watch = ws_watch(session, limits)  # auth or subscribe in time; no endless silence
    request.app[SESSIONS].add(session)
    logged = ctx.access.sampled()  # this session's open and close go to the access log
    if logged:
        ctx.access.session("websocket", "open", request.remote, account or "", path=request.path)
    received = 0
    socket_hold = HeldSocket(request.protocol)
    try:
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                received += 1
                watch.touch()
                session.handle(msg.data)
            elif msg.type == WSMsgType.ERROR:
                break
            if session.closed:
                break
            if not session.readable.is_set():
                socket_hold.hold()  # else aiohttp reads on into its queue (engine/gateways/http_shed.py)
                await session.readable.wait()
                socket_hold.release()
    finally:
        socket_hold.release()  # (a close handshake reads the client's close frame)
        watch.cancel()
        request.app[SESSIONS].discard(session)
        session.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer, 5)
        if logged:
            ctx.access.session(
                "websocket",
                "close",
                request.remote,
                session.account or "",
                messages_in=received,
                messages_out=session.sent,
                close_code=ws.close_code,
            )
    return ws
