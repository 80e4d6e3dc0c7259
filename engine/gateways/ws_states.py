"""The WebSocket session's states and the table that moves it between them (the mechanics:
engine/gateways/session_states.py). What a client asks for in a state that does not allow
it is answered from `REFUSED`, derived from the same table: trading and the per-account
channels need an authenticated session; a closed session reads nothing more."""

from __future__ import annotations

from enum import IntEnum

from engine.gateways.session_states import StateTable


class State(IntEnum):
    AWAITING_AUTH = 0  # connected without an API key: market data, ping and auth only
    ACTIVE = 1  # authenticated (by the upgrade's API key or an auth op): trading as well
    CLOSED = 2  # done: the writer sends what is queued, then closes with 1000
    DROPPED = 3  # cut off as a slow consumer: the writer sends SLOW_CONSUMER, closes with 1008


AWAITING_AUTH, ACTIVE, CLOSED, DROPPED = State

# Client input: any message at all, and the ops that need an account.
INPUTS = ("message", "trade", "subscribe_executions", "subscribe_balances")
LIFECYCLE = ("authenticated", "closed", "slow_consumer")

TABLE = StateTable(
    "websocket",
    State,
    INPUTS + LIFECYCLE,
    {
        (AWAITING_AUTH, "message"): AWAITING_AUTH,
        (AWAITING_AUTH, "authenticated"): ACTIVE,
        (AWAITING_AUTH, "closed"): CLOSED,
        (AWAITING_AUTH, "slow_consumer"): DROPPED,
        **{(ACTIVE, e): ACTIVE for e in INPUTS},
        (ACTIVE, "authenticated"): ACTIVE,  # another key: the session trades for its account
        (ACTIVE, "closed"): CLOSED,
        (ACTIVE, "slow_consumer"): DROPPED,
        (CLOSED, "closed"): CLOSED,
        (DROPPED, "closed"): DROPPED,  # the drop closes the session; its close code stays 1008
    },
)

_NEEDS_AUTH = {
    "trade": ("UNAUTHENTICATED", "send {'op': 'auth', 'api_key': ...} first"),
    "subscribe_executions": ("UNAUTHENTICATED", "executions need an authenticated session"),
    "subscribe_balances": ("UNAUTHENTICATED", "balances need an authenticated session"),
}


def _answer(state: State, event: str) -> tuple[str, str] | None:
    """(code, message) of the error a refused input gets; None: none (a closed session's
    replies would never be sent, so its input is ignored)."""
    return _NEEDS_AUTH[event] if state is AWAITING_AUTH else None


REFUSED: dict[State, dict[str, tuple[str, str] | None]] = TABLE.refusals(INPUTS, _answer)
