"""The binary session's states and the table that moves it between them (the mechanics:
engine/gateways/session_states.py). Client frames that a state does not allow are answered
from `REFUSED`, derived from the same table: before Login every request is NOT_LOGGED_IN,
after it a second Login is ALREADY_LOGGED_IN, and once the session is closing nothing more
is answered."""

from __future__ import annotations

from enum import IntEnum

from engine.gateways.binary import protocol as p
from engine.gateways.session_states import StateTable


class State(IntEnum):
    AWAITING_LOGIN = 0  # connected; the first frame must be a Login
    ACTIVE = 1  # logged in: orders, cancels, amends, mass cancels, heartbeats
    CLOSING = 2  # reads no more input; closes once the requests in flight are answered
    CLOSED = 3  # the connection is closed (by us or by the peer)


AWAITING_LOGIN, ACTIVE, CLOSING, CLOSED = State

# Client frames (each checked against the state when it is decoded).
INPUTS = ("login", "new_order", "cancel", "amend", "cancel_all", "heartbeat")
REQUESTS = ("new_order", "cancel", "amend", "cancel_all", "heartbeat")
# What happens to the session.
LIFECYCLE = ("login_accepted", "login_refused", "fatal_input", "timed_out", "submit_failed", "closed", "lost")
# Each of these starts closing; once closing, a later one changes nothing (the first reason stands).
_CLOSING_CAUSES = ("fatal_input", "timed_out", "submit_failed")

TABLE = StateTable(
    "binary",
    State,
    INPUTS + LIFECYCLE,
    {
        (AWAITING_LOGIN, "login"): AWAITING_LOGIN,
        (AWAITING_LOGIN, "login_accepted"): ACTIVE,
        (AWAITING_LOGIN, "login_refused"): CLOSING,
        (AWAITING_LOGIN, "fatal_input"): CLOSING,
        (AWAITING_LOGIN, "timed_out"): CLOSING,
        (AWAITING_LOGIN, "closed"): CLOSED,
        (AWAITING_LOGIN, "lost"): CLOSED,
        **{(ACTIVE, e): ACTIVE for e in REQUESTS},
        **{(ACTIVE, e): CLOSING for e in _CLOSING_CAUSES},
        (ACTIVE, "closed"): CLOSED,
        (ACTIVE, "lost"): CLOSED,
        **{(CLOSING, e): CLOSING for e in _CLOSING_CAUSES},
        (CLOSING, "closed"): CLOSED,
        (CLOSING, "lost"): CLOSED,
        (CLOSED, "closed"): CLOSED,
        (CLOSED, "lost"): CLOSED,
    },
)

_NOT_LOGGED_IN = p.encode_error(p.ErrorCode.NOT_LOGGED_IN, "log in first")
_ALREADY_LOGGED_IN = p.encode_error(p.ErrorCode.ALREADY_LOGGED_IN, "already logged in")
# The answer to a frame its state does not allow. Once closing, none: the read stops at the
# reply that began the close, so nothing after it reaches the wire.
_ANSWER = {AWAITING_LOGIN: _NOT_LOGGED_IN, ACTIVE: _ALREADY_LOGGED_IN, CLOSING: b"", CLOSED: b""}
REFUSED: dict[State, dict[str, bytes]] = TABLE.refusals(INPUTS, lambda state, _frame: _ANSWER[state])
