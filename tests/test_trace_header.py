"""X-Trace-Id on every order-entry answer (issue 12): accepted, rejected by a rule, refused
(journal failure, outcome unknown, overload, not leader) and unreadable order bodies. A
refusal's id is the request's own, never one derived from a seq that was given back (the
next accepted order gets that seq, and with it that derived trace id).

Runs a real node (tests/test_http_gateway.py's LiveExchange); faults are injected the way
the drills do (the admin faults endpoint) or at the journal's `os` (tests/test_outcome_unknown.py).
"""

from __future__ import annotations

import asyncio
import re

import pytest
from test_http_gateway import ADMIN_KEY, BTC, LiveExchange, on_loop
from test_outcome_unknown import _FailingSync

import engine.journal.segments as segments_mod
from engine.core.commands import NewOrder
from engine.core.domain import OrderType, Side
from engine.service import NotLeader
from telemetry.trace_ids import derived_trace_id

TRACE_ID = re.compile(r"[0-9a-f]{32}")
CALLER = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = {"traceparent": f"00-{CALLER}-00f067aa0ba902b7-01"}
BUY = {"symbol": BTC, "side": "buy", "qty": 1, "price": 100}


@pytest.fixture
def srv(tmp_path):
    server = LiveExchange(tmp_path / "node")
    try:
        yield server
    finally:
        server.close()


def trace_header(reply) -> str:
    value = reply.headers.get("X-Trace-Id", "")
    assert TRACE_ID.fullmatch(value), (reply.status, reply.body, dict(reply.headers))
    return value


def derived(srv: LiveExchange, seq: int) -> str:
    return derived_trace_id(srv.node.venue_id, seq)


@on_loop
async def test_accepted_and_rule_rejected_orders_name_their_own_trace(srv):
    accepted = await srv.api("POST", "/v1/orders", account="alice", json=BUY)
    assert accepted.status == 201
    assert trace_header(accepted) == accepted.body["order"]["trace_id"] == derived(srv, srv.seq)
    off_tick = await srv.api("POST", "/v1/orders", account="alice", json={**BUY, "price": 101})
    assert off_tick.status == 422 and off_tick.code == "PRICE_OFF_TICK", off_tick
    # Rejected by a rule: journaled, so its seq is its own and names its trace.
    assert trace_header(off_tick) == derived(srv, srv.seq)
    continued = await srv.api(
        "POST", "/v1/orders", account="alice", json={**BUY, "price": 101}, headers=TRACEPARENT
    )
    assert continued.status == 422 and trace_header(continued) == CALLER
    cancel = await srv.api("DELETE", f"/v1/orders/{accepted.body['order']['order_id']}", account="alice")
    assert cancel.status == 200 and trace_header(cancel) == derived(srv, srv.seq)
    unknown = await srv.api("DELETE", "/v1/orders/999999", account="alice")
    assert unknown.status == 404 and trace_header(unknown) == derived(srv, srv.seq)


@on_loop
async def test_unreadable_order_bodies_and_unauthenticated_requests_carry_a_trace_id(srv):
    seq = srv.seq
    missing_qty = await srv.api("POST", "/v1/orders", account="alice", json={"symbol": BTC, "side": "buy"})
    assert missing_qty.status == 400 and missing_qty.code == "INVALID_REQUEST"
    first = trace_header(missing_qty)
    again = await srv.api(
        "POST", "/v1/orders", account="alice", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert again.status == 400 and trace_header(again) != first  # each request its own
    caller = await srv.api(
        "POST",
        "/v1/orders",
        account="alice",
        data=b"{",
        headers={**TRACEPARENT, "Content-Type": "application/json"},
    )
    assert trace_header(caller) == CALLER
    amend = await srv.api("PATCH", "/v1/orders/12", account="alice", json={"qty": "x"})
    assert amend.status == 400 and trace_header(amend)
    anonymous = await srv.api("POST", "/v1/orders", json=BUY)
    assert anonymous.status == 401 and trace_header(anonymous)
    assert srv.seq == seq  # nothing was sequenced


@on_loop
async def test_journal_failure_refusals_never_reuse_a_given_back_seqs_trace(srv):
    faults = {"X-API-Key": ADMIN_KEY}
    on = await srv.api("POST", "/v1/admin/faults", headers=faults, json={"journal_write_errors": True})
    assert on.status == 200
    next_seq = srv.seq + 1
    refused = []
    for _ in range(2):
        reply = await srv.api("POST", "/v1/orders", account="alice", json=BUY)
        assert reply.status == 503 and reply.code == "JOURNAL_WRITE_FAILED", reply
        refused.append(trace_header(reply))
    assert len(set(refused)) == 2, refused  # before: both derived from the same given-back seq
    assert derived(srv, next_seq) not in refused
    off = await srv.api("POST", "/v1/admin/faults", headers=faults, json={"journal_write_errors": False})
    assert off.status == 200
    accepted = await srv.api("POST", "/v1/orders", account="alice", json=BUY)
    assert accepted.status == 201 and srv.seq == next_seq  # the seq the refusals were given
    assert trace_header(accepted) == derived(srv, next_seq) and trace_header(accepted) not in refused


@on_loop
async def test_an_outcome_unknown_answer_carries_the_requests_own_trace(srv):
    shim = _FailingSync()
    real_os = segments_mod.os
    segments_mod.os = shim
    try:
        next_seq = srv.seq + 1
        shim.fail_fsync()
        shim.cut_fails = True
        reply = await srv.api("POST", "/v1/orders", account="alice", json=BUY)
        assert reply.status == 504 and reply.code == "OUTCOME_UNKNOWN", reply
        assert trace_header(reply) != derived(srv, next_seq)
        shim.cut_fails = False
        while srv.node.unresolved is not None:  # the commit loop settles it (absent)
            await asyncio.sleep(0.01)
    finally:
        segments_mod.os = real_os


@on_loop
async def test_overload_and_not_leader_refusals_carry_a_trace_id(srv):
    service = srv.running.service
    # A stalled commit loop: it waits on the old wake-up event, so what is queued stays.
    stalled, service._wakeup = service._wakeup, asyncio.Event()
    limit = service.max_queued_commands
    service.max_queued_commands = 1
    try:
        order = NewOrder("alice", "", BTC, int(Side.BUY), int(OrderType.LIMIT), 100, 1)
        service.enqueue([order], lambda _results: None, "internal")
        reply = await srv.api("POST", "/v1/orders", account="alice", json=BUY, headers=TRACEPARENT)
        assert reply.status == 503 and reply.code == "OVERLOADED", reply
        assert trace_header(reply) == CALLER
        reply = await srv.api("POST", "/v1/orders", account="alice", json=BUY)
        assert reply.status == 503 and reply.code == "OVERLOADED" and trace_header(reply) != CALLER
    finally:
        service.max_queued_commands = limit
        service._wakeup = stalled
        stalled.set()
    service.accepting = False
    service.refusal = lambda: NotLeader("this node (b) is a standby", {"node": "a", "url": "http://a"})
    try:
        reply = await srv.api("DELETE", "/v1/orders", account="alice")
        assert reply.status == 503 and reply.code == "NOT_LEADER", reply
        trace_header(reply)
    finally:
        service.refusal = None
        service.accepting = True
