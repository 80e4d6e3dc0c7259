"""The gateway's shared state: one GatewayContext per app (service, stores, accounts, limits,
metrics), and what one request carries between the middleware and its handler.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from engine.access_log import AccessLog
from engine.auth import Accounts, TokenBucket
from engine.automation import RunbookAutomation
from engine.core.order_store import OrderStore
from engine.gateways.http_answers import error
from engine.gateways.preauth_limit import PerIpLimit
from engine.ledger_index import LedgerIndex
from engine.market_data import MarketData
from engine.observer import Observer
from engine.routing import ExecutionRouter
from engine.service import ExchangeService
from engine.snapshots import WrittenSnapshot
from telemetry.trace_ids import new_trace_id, parse_traceparent

if TYPE_CHECKING:  # telemetry.metrics is imported where metrics are wanted, not by every gateway
    from telemetry.metrics import ExchangeMetrics

MAX_BODY = 64 * 1024


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
    metrics: ExchangeMetrics | None = None  # its renderers serve /metrics
    automation: RunbookAutomation | None = None
    cluster: object | None = None  # engine.cluster.member.ClusterMember in cluster mode
    surveillance: object | None = None  # engine.surveillance_desk.SurveillanceDesk
    lookups: object | None = None  # engine.order_lookup.OrderLookups: history read off the loop
    ledger: LedgerIndex = field(default_factory=LedgerIndex)  # ledger entries and balance pushes
    access: AccessLog = field(default_factory=AccessLog)  # off unless sampled
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    rate_limited: int = 0
    # Requests without valid credentials, per client IP (engine/gateways/preauth_limit.py); off here.
    preauth: PerIpLimit = field(default_factory=lambda: PerIpLimit(0, 0))

    @property
    def observer(self) -> Observer:
        """Where the gateway reports to telemetry: the service's observer (engine/observer.py)."""
        return self.service.observer

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
        self.observer.rate_limited("rest")
        return False

    def allow_unauthenticated(self, remote: str | None) -> bool:
        """Within the per-IP limit for requests without valid credentials (counted if not)."""
        if self.preauth.allow(remote):
            return True
        self.rate_limited += 1
        self.observer.rate_limited("unauthenticated")
        return False

    def preauth_refusal(self) -> web.Response:
        return error(
            429,
            "RATE_LIMITED",
            f"more than {self.preauth.rate:g} requests per second from this address without a valid key",
        )


CTX = web.AppKey("ctx", GatewayContext)
PROBES = frozenset(("/healthz", "/readyz", "/metrics"))  # never limited: probes and scrapes


ORDER_ENTRY = web.RequestKey("order_entry", bool)  # an order-entry request: answers carry X-Trace-Id
TRACE_ID = web.RequestKey("trace_id", str)
CALLER = web.RequestKey("caller", str)  # the authenticated account (or "ops:NAME"): logs
ORDER_ID = web.RequestKey("order_id", int)  # the order the request created: logs


def request_trace_id(request: web.Request) -> str:
    """This request's own trace id: the caller's (W3C traceparent) or a fresh one."""
    trace_id = request.get(TRACE_ID)
    if trace_id is None:
        trace_id = request[TRACE_ID] = trace_id_in(request.headers)
    return trace_id


def trace_id_in(headers) -> str:
    """The trace id a request's headers carry (W3C traceparent), or a fresh one."""
    incoming = parse_traceparent(headers.get("traceparent", ""))
    return incoming[0] if incoming else new_trace_id()


SESSIONS = web.AppKey("sessions", set)  # the open WebSocket sessions (ws_session.py)
