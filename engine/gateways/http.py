"""REST (under /v1) and WebSocket gateway on aiohttp.

Every error is JSON `{"error": {"code": ..., "message": ...}}`; client mistakes are 4xx,
never 500. Orders are acknowledged only once durable (the service resolves after the
journal commit). The account always comes from the API key, never from the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Literal

import msgspec
from aiohttp import WSMsgType, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from engine.access_log import AccessLog
from engine.auth import Accounts, TokenBucket
from engine.automation import RunbookAutomation, WebhookPayload
from engine.bad_input_log import BAD_INPUT
from engine.bench.stats import percentile_us
from engine.core.commands import Amend, Cancel, CancelAll, NewOrder
from engine.core.domain import OrderType, RejectReason, SelfTradePrevention, Side, TimeInForce
from engine.core.events import OrderRejected
from engine.core.order_store import OrderStore, OrderView
from engine.core.state import state_hash
from engine.gateways.http_answers import error, ok
from engine.gateways.http_errors import describe
from engine.gateways.http_limits import limits_of, ws_watch
from engine.gateways.http_shed import WS_MAX_IN_FLIGHT, shed_pipeline
from engine.gateways.json_depth import MAX_DEPTH, too_deep
from engine.gateways.json_events import event_json
from engine.gateways.openapi import OPENAPI
from engine.gateways.preauth_limit import PerIpLimit
from engine.gateways.texts import reject_code, reject_status, reject_text
from engine.gateways.ws_masking import require_masked_frames
from engine.logfmt import fields
from engine.market_data import MarketData
from engine.order_index import Lookup
from engine.overload import InFlight
from engine.routing import ExecutionRouter
from engine.service import ExchangeService, NotLeader, Overloaded, ServiceStopped
from engine.snapshots import WrittenSnapshot
from telemetry.tracing import new_trace_id, parse_traceparent

log = logging.getLogger("loom.http")

MAX_BODY = 64 * 1024
SIDES = {"buy": int(Side.BUY), "sell": int(Side.SELL)}
TYPES = {"limit": int(OrderType.LIMIT), "market": int(OrderType.MARKET)}
TIFS = {"gtc": int(TimeInForce.GTC), "ioc": int(TimeInForce.IOC), "fok": int(TimeInForce.FOK)}
STPS = {m.name.lower(): int(m) for m in SelfTradePrevention}
_json = msgspec.json.Encoder()
# FIX (tests/test_http_gateway.py): msgspec decodes JSON integers of any size, but the
# journal stores 64-bit integers: a qty/price/order id beyond them made encoding the batch
# raise OverflowError inside the commit loop, which killed it (every later order hung, a 500
# for this one). Out-of-range integers are now a 400 at the gateway, before sequencing.
INT64_MAX = 2**63 - 1
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=INT64_MAX)]


class OrderRequest(msgspec.Struct, forbid_unknown_fields=True):
    symbol: str
    side: Literal["buy", "sell"]
    qty: Int64
    type: Literal["limit", "market"] = "limit"
    price: Int64 = 0
    tif: Literal["gtc", "ioc", "fok"] = "gtc"
    post_only: bool = False
    stp: Literal["none", "cancel_newest", "cancel_oldest", "cancel_both"] = "cancel_newest"
    client_order_id: str = ""


class AmendRequest(msgspec.Struct, forbid_unknown_fields=True):
    qty: Int64 = 0  # new total quantity; 0 = unchanged
    price: Int64 = 0  # 0 = unchanged
    new_client_order_id: str = ""


@dataclass
class GatewayContext:
    service: ExchangeService
    order_store: OrderStore
    market_data: MarketData
    router: ExecutionRouter
    accounts: Accounts
    rate: float = 0.0  # requests per second per account (REST) or per session (WS); 0 = off
    burst: float = 0.0
    take_snapshot: Callable[[], Awaitable[WrittenSnapshot]] | None = None
    metrics: object | None = None  # telemetry.metrics.ExchangeMetrics
    automation: RunbookAutomation | None = None
    cluster: object | None = None  # engine.cluster.member.ClusterMember in cluster mode
    surveillance: object | None = None  # engine.core.surveillance.Surveillance
    lookups: object | None = None  # engine.order_lookup.OrderLookups: history read off the loop
    access: AccessLog = field(default_factory=AccessLog)  # off unless sampled
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    rate_limited: int = 0
    # Requests without valid credentials, per client IP (engine/gateways/preauth_limit.py); off here.
    preauth: PerIpLimit = field(default_factory=lambda: PerIpLimit(0, 0))

    @property
    def engine(self):
        return self.service.node.engine

    def allow(self, key: str) -> bool:
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = TokenBucket(self.rate, self.burst or max(1.0, self.rate))
        if bucket.allow(time.monotonic()):
            return True
        self.rate_limited += 1
        if self.metrics is not None:
            self.metrics.rate_limited("rest")
        return False

    def allow_unauthenticated(self, remote: str | None) -> bool:
        """Within the per-IP limit for requests without valid credentials (counted if not)."""
        if self.preauth.allow(remote):
            return True
        self.rate_limited += 1
        if self.metrics is not None:
            self.metrics.rate_limited("unauthenticated")
        return False

    def preauth_refusal(self) -> web.Response:
        return error(
            429,
            "RATE_LIMITED",
            f"more than {self.preauth.rate:g} requests per second from this address without a valid key",
        )


CTX = web.AppKey("ctx", GatewayContext)
_PROBES = frozenset(("/healthz", "/readyz", "/metrics"))  # never limited: probes and scrapes


def not_leader_fields(exc: NotLeader) -> dict:
    """A NOT_LEADER answer's fields (REST error body, WebSocket error): the message, the leader
    (its url, fix and binary endpoints) or, during an election, election true and the
    seconds to wait."""
    return {
        "message": exc.text("rest"),
        "leader": exc.leader,
        "election": exc.election,
        "retry_after_s": exc.retry_after_s,
    }


def not_leader(exc: NotLeader) -> web.Response:
    """503 NOT_LEADER; Retry-After is the election's wait, rounded up (1 with a leader known)."""
    fields = not_leader_fields(exc)
    message = fields.pop("message")
    return error(503, "NOT_LEADER", message, max(1, math.ceil(exc.retry_after_s)), **fields)


def rejection(ev: OrderRejected) -> web.Response:
    return error(
        reject_status(ev.reason),
        reject_code(ev.reason),
        reject_text(ev.reason),
        events=[event_json(ev)],
    )


@web.middleware
async def json_errors(request: web.Request, handler):
    started = time.perf_counter()
    response = await _answer(request, handler)
    if request.get(ORDER_ENTRY) and "X-Trace-Id" not in response.headers:
        # Refused before the core saw it (overload, not leader, a bad body, ...): the
        # request's own trace id, so even this answer can be found in the logs and traces.
        response.headers["X-Trace-Id"] = request_trace_id(request)
    access = request.app[CTX].access
    if access.sampled() and not isinstance(response, web.WebSocketResponse):  # a session logs its own
        access.rest(
            request.method,
            request.path,  # never the query: a key may ride there
            response.status,
            time.perf_counter() - started,
            request.remote,
            response.headers.get("X-Trace-Id", ""),
            request.get(_CALLER, ""),
            request.get(_ORDER, request.match_info.get("order_id")),
        )
    return response


async def _answer(request: web.Request, handler) -> web.StreamResponse:
    ctx = request.app[CTX]
    if (
        not _api_key(request)
        and request.path not in _PROBES
        and not ctx.allow_unauthenticated(request.remote)
    ):
        return ctx.preauth_refusal()
    try:
        return await handler(request)
    except _Denied as denied:  # a client mistake found before any work: its 4xx reply
        if denied.decode_error:
            _count_decode_error(request, denied.decode_error)
        return denied.response
    except web.HTTPException as exc:
        if exc.status == 413:  # a body beyond client_max_size: unreadable by definition
            _count_decode_error(request, "PAYLOAD_TOO_LARGE")
        if exc.content_type == "application/json":
            raise
        code = exc.reason.upper().replace(" ", "_")
        response = error(exc.status, code, exc.text or exc.reason)
        # FIX: keep the Allow header of a 405 (RFC 9110 requires it); it was dropped.
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Overloaded as exc:  # admission control: nothing was sequenced, resend later
        return error(503, "OVERLOADED", str(exc), exc.retry_after_s)
    except NotLeader as exc:  # a cluster standby: the client goes to the leader (or waits out the election)
        return not_leader(exc)
    except ServiceStopped as exc:
        return error(503, "SHUTTING_DOWN", str(exc))
    except HttpProcessingError as exc:  # the body could not be read (bad chunking, short body)
        status, code, message = describe(exc)
        _count_decode_error(request, code)
        BAD_INPUT.note("http", request.remote, message)
        response = error(status, code, message)
        response.force_close()
        return response
    except Exception as exc:
        if isinstance(exc, ConnectionError) and _client_gone(request):  # its business, not an error
            log.debug("client %s disconnected during %s %s", request.remote, request.method, request.path)
            return error(400, "CLIENT_DISCONNECTED", "the client closed the connection")
        trace_id = request_trace_id(request) if request.get(ORDER_ENTRY) else None
        ids = fields(trace_id=trace_id, account=request.get(_CALLER), order_id=request.get(_ORDER))
        log.exception("unhandled error on %s %s", request.method, request.path, extra=ids)
        return error(500, "INTERNAL", "internal error (logged)")


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


ORDER_ENTRY = web.RequestKey("order_entry", bool)  # an order-entry request: answers carry X-Trace-Id
_TRACE_ID = web.RequestKey("trace_id", str)
_CALLER = web.RequestKey("caller", str)  # the authenticated account (or "ops:NAME"): logs
_ORDER = web.RequestKey("order_id", int)  # the order the request created: logs
# Answers whose command was not applied by the core: its seq was given back (or is not
# settled) and may later be another order's, so it must not name this request's trace.
_REFUSED = (RejectReason.JOURNAL_WRITE_FAILED, RejectReason.OUTCOME_UNKNOWN)


def order_entry(handler):
    """Marks a handler that places, cancels or amends orders: every answer it gives,
    errors included, carries X-Trace-Id."""

    @functools.wraps(handler)
    async def marked(request: web.Request) -> web.StreamResponse:
        request[ORDER_ENTRY] = True
        shed_pipeline(request, request.app[CTX].service)  # a deep pipeline: OVERLOADED at once
        return await handler(request)

    return marked


def request_trace_id(request: web.Request) -> str:
    """This request's own trace id: the caller's (W3C traceparent) or a fresh one."""
    trace_id = request.get(_TRACE_ID)
    if trace_id is None:
        incoming = parse_traceparent(request.headers.get("traceparent", ""))
        trace_id = request[_TRACE_ID] = incoming[0] if incoming else new_trace_id()
    return trace_id


def answer_trace_id(request: web.Request, cmd, events: list) -> str:
    """The X-Trace-Id of an answer from the commit loop: the command's trace when the core
    applied it (its seq is its own); for a refusal the trace the node gave the refused
    order, else the request's own (never one derived from a seq given back)."""
    first = events[0] if events else None
    if type(first) is OrderRejected and first.reason in _REFUSED:
        return getattr(cmd, "trace_id", "") or request_trace_id(request)
    return request.app[CTX].service.node.trace_id_of(cmd)


def _count_decode_error(request: web.Request, code: str) -> None:
    metrics = request.app[CTX].metrics
    if metrics is not None:
        metrics.decode_error("rest", code)


def _api_key(request: web.Request) -> str | None:
    key = request.headers.get("X-API-Key")
    if not key:
        auth = request.headers.get("Authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else None
    # FIX: a header with bytes that are not UTF-8 arrives with surrogate escapes, which
    # made hashing the key raise UnicodeEncodeError (a 500): no such key can exist.
    if key:
        try:
            key.encode()
        except UnicodeEncodeError:
            return None
    return key


class _Denied(Exception):
    def __init__(self, response: web.Response, decode_error: str = "") -> None:
        self.response = response
        self.decode_error = decode_error  # set when the request itself was unreadable


def _unreadable(status: int, code: str, message: str) -> _Denied:
    """A refusal of a body, path or query that cannot be read: counted in loom_decode_errors."""
    return _Denied(error(status, code, message), code)


def _caller(request: web.Request) -> str | None:
    """The caller's account, or None for an ops key (read-only, any account); 401 for no
    valid key, 429 past the rate limit."""
    ctx = request.app[CTX]
    key = _api_key(request)
    account = ctx.accounts.authenticate(key)
    limited = account
    if account is None:
        operator = ctx.accounts.operator(key)
        if operator is None:
            if key and not ctx.allow_unauthenticated(request.remote):  # guessing keys
                raise _Denied(ctx.preauth_refusal())
            raise _Denied(error(401, "UNAUTHENTICATED", "a valid X-API-Key header is required"))
        limited = f"ops:{operator}"  # its own bucket: an operator named like an account shares none
    request[_CALLER] = limited
    if not ctx.allow(limited):
        raise _Denied(error(429, "RATE_LIMITED", f"more than {ctx.rate:g} requests per second"))
    return account


_READ_ONLY = "an ops key is read-only: it may read orders, traces and the admin views, not {}"


def _account(request: web.Request) -> str:
    """The trading account of the caller's key (an ops key: 403)."""
    account = _caller(request)
    if account is None:
        raise _Denied(error(403, "FORBIDDEN", _READ_ONLY.format("place, cancel or amend orders")))
    return account


def _reader(request: web.Request) -> str | None:
    """The account whose orders the caller may read, or None for an ops key (any account)."""
    return _caller(request)


def admin_view(request: web.Request) -> None:
    """An admin GET view: the admin key or an ops key, else 403."""
    accounts = request.app[CTX].accounts
    key = _api_key(request)
    if not accounts.is_admin(key) and accounts.operator(key) is None:
        raise _Denied(error(403, "FORBIDDEN", "the admin key or an ops key is required"))


def admin_action(request: web.Request) -> None:
    """An admin action (it changes something): the admin key only, else 403."""
    accounts = request.app[CTX].accounts
    key = _api_key(request)
    if not accounts.is_admin(key):
        ops = accounts.operator(key) is not None
        message = _READ_ONLY.format("this admin action (it needs the admin key)") if ops else None
        raise _Denied(error(403, "FORBIDDEN", message or "the admin key is required"))


def _is_json(content_type: str) -> bool:
    content_type = content_type.lower()
    return content_type == "application/json" or content_type.endswith("+json")


async def _decode(request: web.Request, kind):
    body = await request.read()
    # FIX: a body declared as something else (a form, text/plain, ...) was parsed as JSON
    # and executed anyway; it is a 415 now. No Content-Type at all is still read as JSON.
    if body and hdrs.CONTENT_TYPE in request.headers and not _is_json(request.content_type):
        message = f"send the body as application/json, not {request.content_type}"
        raise _unreadable(415, "UNSUPPORTED_MEDIA_TYPE", message)
    if too_deep(body):
        raise _unreadable(400, "TOO_DEEP", f"body nests JSON deeper than {MAX_DEPTH} levels")
    try:
        return msgspec.json.decode(body or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        raise _unreadable(400, "INVALID_REQUEST", str(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # FIX: invalid UTF-8 raises UnicodeDecodeError (not a DecodeError): it was a 500.
        raise _unreadable(400, "MALFORMED_JSON", f"body is not valid JSON: {exc}") from None


def _order_id(request: web.Request) -> int:
    text = request.match_info["order_id"]
    try:
        value = int(text)
    except ValueError:
        raise _unreadable(400, "INVALID_ORDER_ID", f"order id must be a whole number: {text!r}") from None
    if value <= 0:
        raise _unreadable(400, "INVALID_ORDER_ID", "order id must be positive")
    if value > INT64_MAX:  # FIX: see Int64 above (the journal holds 64-bit integers)
        raise _unreadable(400, "INVALID_ORDER_ID", f"order id must be at most {INT64_MAX}")
    return value


def new_order_command(account: str, req: OrderRequest) -> NewOrder:
    return NewOrder(
        account,
        req.client_order_id,
        req.symbol,
        SIDES[req.side],
        TYPES[req.type],
        req.price,
        req.qty,
        TIFS[req.tif],
        req.post_only,
        STPS[req.stp],
    )


def _result(
    request: web.Request, cmd, events: list, status: int = 200, order: dict | None = None
) -> web.Response:
    if events and type(events[0]) is OrderRejected:
        response = rejection(events[0])
    else:
        body: dict = {"events": [event_json(e) for e in events]}
        if order is not None:
            body["order"] = order
        response = ok(body, status)
    response.headers["X-Trace-Id"] = answer_trace_id(request, cmd, events)
    return response


# -- orders -------------------------------------------------------------------------------


@order_entry
async def post_order(request: web.Request) -> web.Response:
    account = _account(request)
    ctx = request.app[CTX]
    started = time.perf_counter()
    req = await _decode(request, OrderRequest)
    cmd = new_order_command(account, req)
    if ctx.metrics is not None:
        ctx.metrics.stage_decode.observe(time.perf_counter() - started)
    # Continue the caller's trace (W3C traceparent) or start one; journaled with the order.
    incoming = parse_traceparent(request.headers.get("traceparent", ""))
    if incoming:
        cmd.trace_id, cmd.trace_parent = incoming
    events = await ctx.service.submit_one(cmd, "rest", started)
    view = None
    if type(events[0]) is not OrderRejected:
        request[_ORDER] = events[0].order_id
        view = ctx.order_store.get(events[0].order_id)
    return _result(request, cmd, events, 201, ctx.order_store.json(view) if view else None)


def _unknown(oid: int) -> web.Response:
    # The one answer for an id never assigned and for another account's order.
    return error(404, "UNKNOWN_ORDER", f"no order {oid} for this account")


def _find(ctx: GatewayContext, account: str | None, oid: int) -> OrderView | Lookup:
    """The account's order (any account's for None: an ops key) (open, recent, or a compact
    finished record), or why there is none to show; from memory alone, never the journal."""
    view = ctx.order_store.find(oid)
    if view is not None:
        return view if account is None or view.account == account else Lookup.UNKNOWN
    index = ctx.order_store.index
    return index.missing(oid) if index is not None else Lookup.UNKNOWN


def _missing(ctx: GatewayContext, oid: int, why: Lookup) -> web.Response:
    index = ctx.order_store.index
    if why is Lookup.EVICTED:
        return error(
            410,
            "ORDER_EVICTED",
            f"order {oid} is beyond the lookup window: this node answers for the newest "
            f"{index.capacity} order ids (from {index.window_lo}); its history may still be in the "
            "journal (loom trace)",
            order_id=oid,
            window_orders=index.capacity,
        )
    if why is Lookup.HISTORY_GONE:
        return error(
            410,
            "ORDER_HISTORY_GONE",
            f"order {oid} finished before this node started and its history is no longer held "
            f"(the journal and snapshots reach back to order {index.history_from})",
            order_id=oid,
        )
    if why is Lookup.REBUILDING:
        return error(
            503,
            "INDEX_REBUILDING",
            f"order {oid} finished before this node started; the order index is still being "
            "read back from the journal: retry shortly",
            order_id=oid,
        )
    return _unknown(oid)


def _order_answer(ctx: GatewayContext, account: str | None, oid: int) -> web.Response:
    found = _find(ctx, account, oid)
    return _missing(ctx, oid, found) if isinstance(found, Lookup) else ok(ctx.order_store.json(found))


async def get_order(request: web.Request) -> web.Response:
    return _order_answer(request.app[CTX], _reader(request), _order_id(request))


async def get_order_by_client_id(request: web.Request) -> web.Response:
    """The order a client order id named: the engine keeps every account's client order
    ids for the venue's life (duplicate detection), so this resolves old ids too. Client
    order ids are per account: an ops key names it (`?account=`)."""
    account = _reader(request) or _named_account(request)
    ctx = request.app[CTX]
    clid = request.match_info["client_order_id"]
    acct = ctx.engine.accounts.get(account)
    oid = acct.by_clid.get(clid) if acct is not None else None
    if oid is None:
        held = ctx.service.node.unresolved
        if held is not None and held.holds_order(account, clid):
            # The lookup an OUTCOME_UNKNOWN answer points to: not known yet, not absent.
            return error(
                503,
                "OUTCOME_PENDING",
                f"the order with client order id {clid!r} is in a batch whose journal outcome the "
                f"node is still resolving (seq {held.seqs}): retry after Retry-After",
            )
        return error(404, "UNKNOWN_ORDER", f"no order with client order id {clid!r} for this account")
    return _order_answer(ctx, account, oid)


def _named_account(request: web.Request) -> str:
    """The account an ops key names in `?account=` (client order ids and open orders are per account)."""
    account = request.query.get("account", "")
    if not account:
        raise _Denied(error(400, "INVALID_QUERY", "an ops key must name the account: ?account=<account>"))
    return account


async def get_order_trace(request: web.Request) -> web.Response:
    """The order's trace id, a link to it, its history and its stage timings: from the order
    store (and the service's recent batch timings) when it is there in full, else read back
    from the journal by the lookup worker process (engine/order_lookup.py)."""
    from engine.order_history import trace_url

    account = _reader(request)
    oid = _order_id(request)
    ctx = request.app[CTX]
    view = _find(ctx, account, oid)
    # FIX (tests/test_order_oracle.py): an order finished before this node started and not
    # (yet) in the index has no known owner, so the journal was read for any caller and
    # another account's order was told apart from an unassigned id by the answer and its time
    # (a scan: 374 ms against 2 ms). Only an ops key reads the journal for such an id; an
    # account gets the answer GET /v1/orders/{id} gives, the same whoever owns the order.
    if isinstance(view, Lookup) and (account is not None or view not in _JOURNAL_KNOWS):
        return _missing(ctx, oid, view)
    # Not known here yet (or no more), a compact record, or seeded at a restart (acceptance
    # unknown here): the journal knows, and says why not when it does not.
    if isinstance(view, Lookup) or view.fills is None or not view.accepted_seq:
        body = await _journal_lookup(ctx, oid)
        if isinstance(body, web.Response):
            return body
        return ok(body) if account is None or body.get("account") == account else _unknown(oid)
    body = ctx.order_store.json(view)
    body["trace_url"] = trace_url(body["trace_id"])
    body["source"] = "order-store"
    body["stages"] = ctx.service.recent.stages(view.accepted_seq, view.accepted_ts)
    if body["stages"] is None:
        # Older than the recent batches held in memory (or from before a restart): the
        # journal has them.
        found = await _journal_lookup(ctx, oid)
        if not isinstance(found, web.Response):
            body["stages"] = found.get("stages")
    return ok(body)


_JOURNAL_KNOWS = (Lookup.REBUILDING, Lookup.HISTORY_GONE)  # ids whose history a journal read may find


async def _journal_lookup(ctx: GatewayContext, oid: int) -> dict | web.Response:
    """The order's history from the lookup worker, or an error response."""
    from concurrent.futures.process import BrokenProcessPool

    from engine.order_history import JournalRangeGone
    from engine.order_lookup import TIMEOUT_S, LookupBusy

    if ctx.lookups is None:
        return error(503, "LOOKUP_UNAVAILABLE", "this node reads no order history")
    try:
        found = await ctx.lookups.trace(oid)
    except LookupBusy as exc:
        return error(503, "LOOKUP_BUSY", f"{exc}: retry shortly")
    except TimeoutError:
        return error(504, "LOOKUP_TIMEOUT", f"reading the journal took over {TIMEOUT_S:.0f} s")
    except JournalRangeGone as exc:  # retention removed its records
        return error(410, "JOURNAL_RANGE_GONE", str(exc))
    except BrokenProcessPool:
        return error(503, "LOOKUP_UNAVAILABLE", "the lookup worker stopped; a new one starts on retry")
    except Exception as exc:  # the journal or stream unreadable now (NATS away, damage)
        log.warning("order %d: history lookup failed: %s", oid, exc, extra=fields(order_id=oid))
        return error(503, "LOOKUP_FAILED", f"the order's history could not be read: {exc}")
    return found if found is not None else _unknown(oid)


async def _submit(request: web.Request, cmd) -> web.Response:
    return _result(request, cmd, await request.app[CTX].service.submit_one(cmd))


@order_entry
async def delete_order(request: web.Request) -> web.Response:
    account = _account(request)
    return await _submit(request, Cancel(account, _order_id(request)))


@order_entry
async def delete_order_by_client_id(request: web.Request) -> web.Response:
    account = _account(request)
    return await _submit(request, Cancel(account, 0, request.match_info["client_order_id"]))


@order_entry
async def patch_order(request: web.Request) -> web.Response:
    account = _account(request)
    ctx = request.app[CTX]
    oid = _order_id(request)
    req = await _decode(request, AmendRequest)
    cmd = Amend(account, oid, "", req.qty, req.price, req.new_client_order_id)
    events = await ctx.service.submit_one(cmd)
    view = ctx.order_store.get(oid)
    order = ctx.order_store.json(view) if view and view.account == account else None
    return _result(request, cmd, events, 200, order)


async def list_orders(request: web.Request) -> web.Response:
    account = _reader(request) or _named_account(request)
    symbol = request.query.get("symbol", "")
    store = request.app[CTX].order_store
    views = store.open_orders(account, symbol)
    return ok({"orders": [store.json(v) for v in sorted(views, key=lambda v: v.order_id)]})


@order_entry
async def cancel_all(request: web.Request) -> web.Response:
    account = _account(request)
    return await _submit(request, CancelAll(account, request.query.get("symbol", "")))


# -- market data and reference --------------------------------------------------------------


def _int_query(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise _unreadable(400, "INVALID_QUERY", f"{name} must be a whole number") from None
    if not lo <= value <= hi:
        raise _unreadable(400, "INVALID_QUERY", f"{name} must be between {lo} and {hi}")
    return value


async def get_book(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    symbol = request.match_info["symbol"]
    book = ctx.engine.books.get(symbol)
    if book is None:
        return error(404, "UNKNOWN_SYMBOL", f"unknown symbol {symbol!r}")
    depth = _int_query(request, "depth", 10, 1, 1000)
    return ok(
        {
            "symbol": symbol,
            "seq": ctx.engine.last_seq,
            "md_seq": ctx.market_data.feed(symbol).seq,  # lines up with the WebSocket l2update seq
            "bids": [list(level) for level in book.bids.depth(depth)],
            "asks": [list(level) for level in book.asks.depth(depth)],
        }
    )


async def get_trades(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    symbol = request.match_info["symbol"]
    if symbol not in ctx.engine.books:
        return error(404, "UNKNOWN_SYMBOL", f"unknown symbol {symbol!r}")
    limit = _int_query(request, "limit", 100, 1, 1000)
    trades = ctx.order_store.recent_trades(symbol, limit)
    return ok({"symbol": symbol, "trades": [event_json(t) for t in trades]})


async def get_instruments(request: web.Request) -> web.Response:
    engine = request.app[CTX].engine
    return ok({"instruments": [msgspec.to_builtins(i) for i in engine.instruments.values()]})


async def healthz(_request: web.Request) -> web.Response:
    return ok({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    problems = []
    if not ctx.service.accepting:
        refusal = ctx.service.refusal
        problems.append(str(refusal()) if refusal else "not accepting orders (starting or shutting down)")
    unresolved = ctx.service.node.unresolved
    if unresolved is not None:
        problems.append(f"the outcome of the journal write of seq {unresolved.seqs} is unknown (resolving)")
    elif not ctx.service.node.journal_ok:
        problems.append("the last journal write failed")
    if problems:
        return error(503, "NOT_READY", "; ".join(problems))
    return ok({"status": "ready", "seq": ctx.engine.last_seq})


async def admin_stats(request: web.Request) -> web.Response:
    """Operator figures until the metrics endpoint exists: journal and batching."""
    ctx = request.app[CTX]
    admin_view(request)
    node = ctx.service.node
    fsyncs = sorted(node.journal.fsync_ns)
    return ok(
        {
            "seq": node.engine.last_seq,
            "data_dir": str(node.config.data_dir),
            "batches": ctx.service.batches,
            "commands": ctx.service.commands,
            "journal_bytes": node.journal.size_bytes,
            "fsyncs_sampled": len(fsyncs),
            "fsync_p50_us": percentile_us(fsyncs, 50),
            "fsync_p99_us": percentile_us(fsyncs, 99),
            "fsync_max_us": round(fsyncs[-1] / 1000, 1) if fsyncs else 0.0,
            "rejected_batches": node.rejected_batches,
            "rate_limited": ctx.rate_limited,
        }
    )


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus text, or OpenMetrics (which carries exemplars) when the scraper asks."""
    ctx = request.app[CTX]
    if ctx.metrics is None:
        return error(404, "NOT_AVAILABLE", "metrics are not configured")
    registry = ctx.metrics.registry
    if "application/openmetrics-text" in request.headers.get("Accept", ""):
        body, content_type = openmetrics_latest(registry), OPENMETRICS_CONTENT_TYPE
    else:
        body, content_type = generate_latest(registry), PROMETHEUS_CONTENT_TYPE
    return web.Response(body=body, headers={"Content-Type": content_type})


async def openapi(_request: web.Request) -> web.Response:
    return ok(OPENAPI)


async def admin_snapshot(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    admin_action(request)
    if ctx.take_snapshot is None:
        return error(501, "NOT_AVAILABLE", "snapshots are not configured")
    try:
        written = await ctx.take_snapshot()  # written by a child: awaited, the loop goes on
    except OSError as exc:  # counted and logged by the node; the previous snapshot stands
        return error(500, "SNAPSHOT_FAILED", str(exc))
    return ok(
        {
            "seq": written.seq,
            "path": str(written.path),
            "bytes": written.size,
            "state_hash": written.state_hash,
            "seconds": round(written.duration_s, 4),
        }
    )


async def admin_automation(request: web.Request) -> web.Response:
    """Alertmanager's webhook: runs the runbook actions its firing alerts name."""
    automation = request.app[CTX].automation
    if automation is None:
        return error(501, "NOT_AVAILABLE", "runbook automation is not configured")
    if not automation.authorized(request.headers.get("Authorization")):
        return error(401, "UNAUTHENTICATED", "Authorization: Bearer <automation token> is required")
    payload = await _decode(request, WebhookPayload)
    if payload.version != "4":
        return error(400, "INVALID_REQUEST", f"webhook payload version {payload.version!r}; expected '4'")
    return ok(await automation.handle(payload))


async def admin_automation_audit(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    admin_view(request)
    if ctx.automation is None:
        return error(501, "NOT_AVAILABLE", "runbook automation is not configured")
    return ok({"records": ctx.automation.audit_records()})


async def admin_cluster(request: web.Request) -> web.Response:
    """This node's place in the cluster: role, leader, epoch, lag (`?verify=1` adds the
    state hash, computed now)."""
    ctx = request.app[CTX]
    admin_view(request)
    if ctx.cluster is None:
        return ok({"role": "standalone", "applied_seq": ctx.engine.last_seq})
    status = ctx.cluster.status()
    if request.query.get("verify") == "1":
        status["state_hash"] = state_hash(ctx.engine)
    return ok(status)


async def admin_cluster_step_down(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    admin_action(request)
    if ctx.cluster is None:
        return error(409, "NOT_CLUSTERED", "this node runs standalone: there is no lease to release")
    return ok(await ctx.cluster.step_down())


class FaultsRequest(msgspec.Struct, forbid_unknown_fields=True):
    journal_write_errors: bool


async def admin_faults(request: web.Request) -> web.Response:
    """Fault injection for drills and tests: every journal write fails (EIO) while on."""
    ctx = request.app[CTX]
    admin_action(request)
    req = await _decode(request, FaultsRequest)
    ctx.service.node.journal.fail_writes(errno.EIO if req.journal_write_errors else None)
    log.warning("drill: journal write errors %s", "injected" if req.journal_write_errors else "cleared")
    return ok({"journal_write_errors": req.journal_write_errors})


# -- WebSocket ------------------------------------------------------------------------------


def _text_frame(payload: bytes) -> bytes:
    """One unmasked, final WebSocket text frame (RFC 6455 5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


class WsSession:
    """One WebSocket connection: order entry, market data and execution streams. Replies
    and pushes go through an outbox drained by one writer task, so the commit loop never
    waits on a slow client (a client too far behind is disconnected)."""

    MAX_OUTBOX = 50_000
    HIGH_WATER = 4 * 1024 * 1024  # bytes buffered in the socket before the writer waits

    def __init__(
        self, ctx: GatewayContext, ws: web.WebSocketResponse, account: str | None, transport=None
    ) -> None:
        self.ctx = ctx
        self.ws = ws
        self.account = account
        self.outbox: list[bytes] = []
        self.transport = transport
        self.wake = asyncio.Event()
        self.closed = False
        self.sent = 0  # messages queued to the client (the access log's messages_out)
        self.unsubscribers: dict[tuple, Callable[[], None]] = {}
        self.bucket = TokenBucket(ctx.rate, ctx.burst or max(1.0, ctx.rate))
        self.flight = InFlight(WS_MAX_IN_FLIGHT)  # orders submitted, not yet answered
        self.readable = asyncio.Event()  # cleared while the in-flight bound holds reading
        self.readable.set()
        self.control_bucket = TokenBucket(ctx.rate, ctx.burst or max(1.0, ctx.rate))
        # When the oldest market data message in the outbox became durable (0: none queued).
        self.md_since = 0.0

    def send(self, message: dict) -> None:
        if self.closed:
            return
        if len(self.outbox) >= self.MAX_OUTBOX:
            log.warning("websocket client too slow (%d messages queued); closing", len(self.outbox))
            if self.ctx.metrics is not None:
                self.ctx.metrics.md_slow_consumer_drops.inc()
            self.closed = True
            self.wake.set()
            return
        self.outbox.append(_json.encode(message))
        self.sent += 1
        self.wake.set()

    def send_market_data(self, message: dict) -> None:
        """A book or trade push: as send, noting when its batch became durable."""
        if not self.md_since:
            self.md_since = self.ctx.market_data.published_at
        self.send(message)

    async def writer(self) -> None:
        while not self.closed or self.outbox:
            if not self.outbox:
                self.wake.clear()
                await self.wake.wait()
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
            transport.write(b"".join([_text_frame(data) for data in batch]))
            if self.md_since:
                if self.ctx.metrics is not None:
                    self.ctx.metrics.md_fanout_lag.observe(time.perf_counter() - self.md_since)
                self.md_since = 0.0
            while transport.get_write_buffer_size() > self.HIGH_WATER and not transport.is_closing():
                await asyncio.sleep(0.001)
        if not self.ws.closed:
            await self.ws.close()

    def fail(self, req_id, code: str, message: str) -> None:
        self.send({"type": "error", "req_id": req_id, "code": code, "message": message})

    def unreadable(self, req_id, code: str, message: str) -> None:
        """An error for a message that cannot be read: counted in loom_decode_errors."""
        if self.ctx.metrics is not None:
            self.ctx.metrics.decode_error("websocket", code)
        self.fail(req_id, code, message)

    def handle(self, raw: str | bytes) -> None:
        if too_deep(raw):  # msgspec would recurse until RecursionError ended the session
            self.unreadable(None, "TOO_DEEP", f"message nests JSON deeper than {MAX_DEPTH} levels")
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
        except Overloaded as exc:  # nothing was sequenced: resend after retry_after_s
            self.send(
                {
                    "type": "error",
                    "req_id": req_id,
                    "code": "OVERLOADED",
                    "message": str(exc),
                    "retry_after_s": exc.retry_after_s,
                }
            )
        except NotLeader as exc:
            body = not_leader_fields(exc)
            self.send({"type": "error", "req_id": req_id, "code": "NOT_LEADER", **body})
        except ServiceStopped as exc:
            self.fail(req_id, "SHUTTING_DOWN", str(exc))

    def _trading(self, req_id) -> bool:
        if self.account is None:
            self.fail(req_id, "UNAUTHENTICATED", "send {'op': 'auth', 'api_key': ...} first")
            return False
        return self._within_rate(req_id, self.bucket)

    def _within_rate(self, req_id, bucket: TokenBucket) -> bool:
        """The session's rate limit: one bucket for trading, one for control ops (auth, ping,
        subscribe: never limited before), so a client at its trading limit can still ping."""
        if not bucket.allow(time.monotonic()):
            self.ctx.rate_limited += 1
            if self.ctx.metrics is not None:
                self.ctx.metrics.rate_limited("websocket")
            self.fail(req_id, "RATE_LIMITED", f"more than {self.ctx.rate:g} requests per second")
            return False
        return True

    def _submit(self, req_id, command) -> None:
        def done(results: list[list]) -> None:
            if self.flight.done():
                self.readable.set()
            events = results[0]
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

        self.ctx.service.enqueue([command], done, "websocket")
        if self.flight.add():  # stop reading this session until half its orders are answered
            self.readable.clear()

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
        self.send({"type": "authenticated", "req_id": req_id, "account": account})

    def op_order(self, req_id, msg: dict) -> None:
        traceparent = msg.pop("traceparent", "")
        req = msgspec.convert(msg, OrderRequest)
        if self._trading(req_id):
            cmd = new_order_command(self.account, req)
            incoming = parse_traceparent(traceparent) if isinstance(traceparent, str) else None
            if incoming:
                cmd.trace_id, cmd.trace_parent = incoming
            self._submit(req_id, cmd)

    def op_cancel(self, req_id, msg: dict) -> None:
        req = msgspec.convert(msg, _WsCancel)
        if not req.order_id and not req.client_order_id:
            self.fail(req_id, "INVALID_REQUEST", "cancel needs order_id or client_order_id")
        elif self._trading(req_id):
            self._submit(req_id, Cancel(self.account, req.order_id, req.client_order_id))

    def op_amend(self, req_id, msg: dict) -> None:
        req = msgspec.convert(msg, _WsAmend)
        if self._trading(req_id):
            cmd = Amend(
                self.account, req.order_id, req.client_order_id, req.qty, req.price, req.new_client_order_id
            )
            self._submit(req_id, cmd)

    def op_cancel_all(self, req_id, msg: dict) -> None:
        req = msgspec.convert(msg, _WsCancelAll)
        if self._trading(req_id):
            self._submit(req_id, CancelAll(self.account, req.symbol))

    def op_subscribe(self, req_id, msg: dict) -> None:
        req = msgspec.convert(msg, _WsSubscribe)
        key = _sub_key(req)
        if key in self.unsubscribers:
            self.fail(req_id, "ALREADY_SUBSCRIBED", f"already subscribed to {req.channel} {req.symbol}")
            return
        if req.channel == "executions":
            if self.account is None:
                self.fail(req_id, "UNAUTHENTICATED", "executions need an authenticated session")
                return
            self.unsubscribers[key] = self.ctx.router.subscribe(
                self.account, lambda ev: self.send({"type": "execution", "event": event_json(ev)})
            )
            self.send({"type": "subscribed", "req_id": req_id, "channel": "executions"})
            return
        if req.symbol not in self.ctx.engine.books:
            self.fail(req_id, "UNKNOWN_SYMBOL", f"unknown symbol {req.symbol!r}")
            return
        feed = self.ctx.market_data.feed(req.symbol)
        subscribers = feed.book_subscribers if req.channel == "book" else feed.trade_subscribers
        subscribers.add(self.send_market_data)
        self.unsubscribers[key] = lambda: subscribers.discard(self.send_market_data)
        self.send({"type": "subscribed", "req_id": req_id, "channel": req.channel, "symbol": req.symbol})
        if req.channel == "book":
            self.send(self.ctx.market_data.snapshot(req.symbol))

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
        self.closed = True
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
    channel: Literal["book", "trades", "executions"]
    symbol: str = ""


def _sub_key(req: _WsSubscribe) -> tuple:
    # FIX (tests/test_ws_gateway.py): executions are per account, not per symbol; keyed by
    # (channel, symbol) a second subscription naming another symbol was accepted and every
    # execution report was then delivered twice.
    return (req.channel, "" if req.channel == "executions" else req.symbol)


_WS_CONTROL = frozenset(("auth", "subscribe", "unsubscribe", "ping"))
_WS_OPS = {
    "auth": WsSession.op_auth,
    "order": WsSession.op_order,
    "cancel": WsSession.op_cancel,
    "amend": WsSession.op_amend,
    "cancel_all": WsSession.op_cancel_all,
    "subscribe": WsSession.op_subscribe,
    "unsubscribe": WsSession.op_unsubscribe,
    "ping": WsSession.op_ping,
}


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ctx = request.app[CTX]
    key = _api_key(request)
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
                await session.readable.wait()
    finally:
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


SESSIONS = web.AppKey("sessions", set)
