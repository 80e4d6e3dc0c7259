"""The sessions' state tables (engine/gateways/session_states.py and each session's table),
walked pair by pair: every (state, event) of the binary, WebSocket and FIX sessions either
moves to the state written here, is answered on the wire as written here (a client input
its state refuses), or raises TransitionError (a lifecycle move the session never makes).
The expectations are spelled out below, not read back from the tables under test."""

from __future__ import annotations

import asyncio
import itertools
import json
from enum import Enum

import pytest

from engine.app import start_exchange
from engine.config import Config
from engine.core.commands import Amend, Cancel, CancelAll, NewOrder
from engine.core.domain import Instrument
from engine.gateways import ws_states as w
from engine.gateways.binary import protocol as p
from engine.gateways.binary import states as b
from engine.gateways.binary.server import BinarySession, _Config
from engine.gateways.fix import session as fix
from engine.gateways.http_context import CTX
from engine.gateways.session_states import StateTable, TransitionError
from engine.gateways.ws_session import WsSession

NOT_LOGGED_IN = p.encode_error(p.ErrorCode.NOT_LOGGED_IN, "log in first")
ALREADY_LOGGED_IN = p.encode_error(p.ErrorCode.ALREADY_LOGGED_IN, "already logged in")
REQUESTS = ("new_order", "cancel", "amend", "cancel_all", "heartbeat")
CLOSERS = ("fatal_input", "timed_out", "submit_failed")

# -- binary -----------------------------------------------------------------------------------

S = b.State
BINARY_MOVES = {
    (S.AWAITING_LOGIN, "login"): S.AWAITING_LOGIN,
    (S.AWAITING_LOGIN, "login_accepted"): S.ACTIVE,
    (S.AWAITING_LOGIN, "login_refused"): S.CLOSING,
    (S.AWAITING_LOGIN, "fatal_input"): S.CLOSING,
    (S.AWAITING_LOGIN, "timed_out"): S.CLOSING,
    (S.AWAITING_LOGIN, "closed"): S.CLOSED,
    (S.AWAITING_LOGIN, "lost"): S.CLOSED,
    **{(S.ACTIVE, e): S.ACTIVE for e in REQUESTS},
    **{(S.ACTIVE, e): S.CLOSING for e in CLOSERS},
    (S.ACTIVE, "closed"): S.CLOSED,
    (S.ACTIVE, "lost"): S.CLOSED,
    **{(S.CLOSING, e): S.CLOSING for e in CLOSERS},
    (S.CLOSING, "closed"): S.CLOSED,
    (S.CLOSING, "lost"): S.CLOSED,
    (S.CLOSED, "closed"): S.CLOSED,
    (S.CLOSED, "lost"): S.CLOSED,
}
BINARY_ANSWERS = {
    **{(S.AWAITING_LOGIN, e): NOT_LOGGED_IN for e in REQUESTS},
    (S.ACTIVE, "login"): ALREADY_LOGGED_IN,
    **{(s, e): b"" for s in (S.CLOSING, S.CLOSED) for e in ("login", *REQUESTS)},
}

# -- websocket --------------------------------------------------------------------------------

W = w.State
WS_MOVES = {
    (W.AWAITING_AUTH, "message"): W.AWAITING_AUTH,
    (W.AWAITING_AUTH, "authenticated"): W.ACTIVE,
    (W.AWAITING_AUTH, "closed"): W.CLOSED,
    (W.AWAITING_AUTH, "slow_consumer"): W.DROPPED,
    **{(W.ACTIVE, e): W.ACTIVE for e in ("message", "trade", "subscribe_executions", "subscribe_balances")},
    (W.ACTIVE, "authenticated"): W.ACTIVE,
    (W.ACTIVE, "closed"): W.CLOSED,
    (W.ACTIVE, "slow_consumer"): W.DROPPED,
    (W.CLOSED, "closed"): W.CLOSED,
    (W.DROPPED, "closed"): W.DROPPED,
}
NEEDS_AUTH = "UNAUTHENTICATED"
WS_ANSWERS = {
    (W.AWAITING_AUTH, "trade"): (NEEDS_AUTH, "send {'op': 'auth', 'api_key': ...} first"),
    (W.AWAITING_AUTH, "subscribe_executions"): (
        "UNAUTHENTICATED",
        "executions need an authenticated session",
    ),
    (W.AWAITING_AUTH, "subscribe_balances"): (NEEDS_AUTH, "balances need an authenticated session"),
    **{
        (s, e): None
        for s in (W.CLOSED, W.DROPPED)
        for e in ("message", "trade", "subscribe_executions", "subscribe_balances")
    },
}

# -- FIX (its table predates the shared mechanics; it now runs through them) -----------------

F = fix.State
FIX_MOVES = {
    (F.AWAIT_LOGON, "logon_accepted"): F.ACTIVE,
    (F.AWAIT_LOGON, "close"): F.CLOSED,
    (F.ACTIVE, "logout_sent"): F.LOGOUT_SENT,
    (F.ACTIVE, "close"): F.CLOSED,
    (F.LOGOUT_SENT, "close"): F.CLOSED,
    (F.CLOSED, "close"): F.CLOSED,
}

TABLES = [
    pytest.param(b.TABLE, b.INPUTS, BINARY_MOVES, BINARY_ANSWERS, b.REFUSED, id="binary"),
    pytest.param(w.TABLE, w.INPUTS, WS_MOVES, WS_ANSWERS, w.REFUSED, id="websocket"),
    pytest.param(fix.TABLE, (), FIX_MOVES, {}, None, id="fix"),
]


@pytest.mark.parametrize(("table", "inputs", "moves", "answers", "refused"), TABLES)
def test_every_state_and_event_pair(table, inputs, moves, answers, refused):
    pairs = list(itertools.product(table.states, table.events))
    assert len(pairs) == len(table.states) * len(table.events) > len(moves)
    for state, event in pairs:
        if (state, event) in moves:
            assert table.next(state, event) is moves[(state, event)], (state, event)
            assert (state, event) not in answers, f"{state.name} both allows and refuses {event}"
            if refused is not None:
                assert event not in refused[state]
            continue
        with pytest.raises(TransitionError, match=f"from {state.name} on '{event}'"):
            table.next(state, event)
        if event in inputs:  # a client input its state refuses: answered as written above
            assert refused[state][event] == answers[(state, event)], (state, event)
        else:
            assert (state, event) not in answers
    if refused is not None:  # nothing is refused beyond what is written above
        assert {(s, e) for s, by in refused.items() for e in by} == set(answers)


def test_fix_session_moves_through_the_shared_table():
    assert fix.TABLE.transitions == fix.TRANSITIONS  # the one table the session and its tests read


class _Phase(Enum):
    A = 1
    B = 2


def test_a_forbidden_move_names_the_state_the_event_and_what_is_allowed():
    table = StateTable(
        "demo", _Phase, ("go", "stop"), {(_Phase.A, "go"): _Phase.B, (_Phase.A, "stop"): _Phase.A}
    )
    with pytest.raises(TransitionError) as caught:
        table.next(_Phase.B, "go")
    assert str(caught.value) == "demo session: no transition from B on 'go' (allowed: none)"
    with pytest.raises(TransitionError, match=r"allowed: go, stop"):
        table.next(_Phase.A, "jump")
    assert table.allowed(_Phase.A) == {"go", "stop"}


def test_a_table_naming_an_unknown_state_or_event_is_refused_when_built():
    with pytest.raises(ValueError, match="unknown event 'jump'"):
        StateTable("demo", _Phase, ("go",), {(_Phase.A, "jump"): _Phase.B})
    with pytest.raises(ValueError, match="unknown state"):
        StateTable("demo", [_Phase.A], ("go",), {(_Phase.A, "go"): _Phase.B})


# -- the binary session itself: its builders answer from the table ----------------------------

_BUILD = {
    "new_order": lambda s: s._b_new_order(1, "BTC-USD", 1, 1, 1, False, 0, 100, 1),
    "cancel": lambda s: s._b_cancel(7, 1),
    "amend": lambda s: s._b_amend(7, 1, 2, 100, 0),
    "cancel_all": lambda s: s._b_cancel_all(""),
    "heartbeat": lambda s: s._b_heartbeat(5),
}
_COMMAND = {"new_order": NewOrder, "cancel": Cancel, "amend": Amend, "cancel_all": CancelAll}
# How a fresh session reaches each state, by the session's own moves.
_PATH = {
    S.AWAITING_LOGIN: (),
    S.ACTIVE: ("login_accepted",),
    S.CLOSING: ("login_accepted", "fatal_input"),
    S.CLOSED: ("login_accepted", "lost"),
}


def test_the_binary_session_answers_each_frame_as_its_state_allows():
    async def walk() -> None:
        config = _Config(None, None, None, 0.0, 0.0, 16, 1 << 20, lambda: 0.0)  # builders touch none
        for state, path in _PATH.items():
            for event in (*REQUESTS, "login"):
                session = BinarySession(config, set())
                for step in path:
                    session._move(step)
                session.account = "alice" if "login_accepted" in path else None
                assert session.state is state
                if event == "login":
                    if state is S.AWAITING_LOGIN:
                        continue  # the allowed login authenticates: tests/test_binary_server.py
                    assert session._b_login("key", p.PROTOCOL_VERSION) == BINARY_ANSWERS[(state, "login")]
                    continue
                got = _BUILD[event](session)
                if (state, event) in BINARY_ANSWERS:
                    assert got == BINARY_ANSWERS[(state, event)], (state, event)
                elif event == "heartbeat":
                    assert got == p.encode_heartbeat(5)
                else:
                    assert type(got) is _COMMAND[event] and got.account == "alice", (state, event)
                assert session.state is state  # a frame never moves the session by itself

    asyncio.run(walk())


def test_the_binary_session_refuses_a_lifecycle_move_its_state_does_not_allow():
    async def walk() -> None:
        config = _Config(None, None, None, 0.0, 0.0, 16, 1 << 20, lambda: 0.0)
        session = BinarySession(config, set())
        with pytest.raises(TransitionError, match="no transition from AWAITING_LOGIN on 'submit_failed'"):
            session._move("submit_failed")  # nothing was submitted before login
        session._move("lost")
        with pytest.raises(TransitionError, match="no transition from CLOSED on 'login_accepted'"):
            session._move("login_accepted")
        assert session.state is S.CLOSED

    asyncio.run(walk())


# -- the WebSocket session itself, on a live node's gateway context ---------------------------


def _frames(session) -> list[dict]:
    out = [json.loads(_payload(f)) for f in session.outbox]
    session.outbox.clear()
    return out


def _payload(frame: bytes) -> bytes:
    """The JSON of one unmasked server text frame (engine/gateways/ws_frames.py)."""
    n = frame[1] & 0x7F
    start = 2 if n < 126 else 4 if n == 126 else 10
    return frame[start:]


async def _ws_walk(data_dir) -> dict:
    config = Config(
        data_dir=data_dir,
        http_port=0,
        fix_port=-1,
        binary_port=-1,
        instruments=[Instrument("BTC-USD", tick_size=1, lot_size=1, min_qty=1, max_qty=1000)],
        api_keys={"alice-key-0123456789abcdef": "alice"},
        admin_key="admin-key-0123456789abcdef",
    )
    running = await start_exchange(config)
    seen: dict = {}
    try:
        ctx = running.http_runner.app[CTX]
        order = {"op": "order", "req_id": 1, "symbol": "BTC-USD", "side": "buy", "type": "limit"}
        order |= {"price": 100, "qty": 1}
        executions = {"op": "subscribe", "req_id": 2, "channel": "executions"}
        session = WsSession(ctx, None, None)
        seen["state"] = session.state
        session.handle(json.dumps(order))
        session.handle(json.dumps(executions))
        seen["awaiting_auth"] = _frames(session)
        session.handle(json.dumps({"op": "auth", "req_id": 3, "api_key": "alice-key-0123456789abcdef"}))
        seen["auth"] = (session.state, _frames(session))
        session.handle(json.dumps(executions))
        session.handle(json.dumps(order))
        seen["active"] = (_frames(session), session.flight.count)
        session.close()
        session.handle(json.dumps(order | {"req_id": 4}))
        seen["closed"] = (session.state, session.closed, session.flight.count, session.outbox)
    finally:
        await running.stop()
    return seen


def test_the_websocket_session_refuses_what_its_state_does_not_allow(tmp_path):
    seen = asyncio.run(_ws_walk(tmp_path))
    assert seen["state"] is W.AWAITING_AUTH
    assert [(m["req_id"], m["code"], m["message"]) for m in seen["awaiting_auth"]] == [
        (1, *WS_ANSWERS[(W.AWAITING_AUTH, "trade")]),
        (2, *WS_ANSWERS[(W.AWAITING_AUTH, "subscribe_executions")]),
    ]
    state, frames = seen["auth"]
    assert state is W.ACTIVE and frames == [{"type": "authenticated", "req_id": 3, "account": "alice"}]
    frames, in_flight = seen["active"]
    assert frames == [{"type": "subscribed", "req_id": 2, "channel": "executions"}]
    assert in_flight == 1  # the order went to the engine (its ack comes once durable)
    # Closed: the order after the close is neither answered nor submitted.
    assert seen["closed"] == (W.CLOSED, True, 1, [])
