"""The table mechanics shared by the sessions' state machines (FIX, binary, WebSocket).

Each session module declares, as data, its named states and a transition table
`(state, event) -> next state`, in the style of h11's connection states; `StateTable.next`
is the one place that moves a session on. An event missing from the table raises
`TransitionError`: a lifecycle move the session does not allow is a bug in the session,
never something a client can cause. What a client sends in the wrong state (an order
before login) is answered on the wire instead: each session keeps that answer in a
refusal table beside its transitions (tests/test_session_states.py walks every pair).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from typing import Generic, TypeVar

S = TypeVar("S", bound=Enum)
R = TypeVar("R")


class TransitionError(RuntimeError):
    """A session was moved on an event its state does not allow (a bug in the session)."""


class StateTable(Generic[S]):
    """`(state, event) -> state` for one kind of session, checked when it is built: every
    state it names is one of `states` and every event one of `events`."""

    __slots__ = ("name", "states", "events", "transitions", "_allowed")

    def __init__(
        self, name: str, states: Iterable[S], events: Iterable[str], transitions: Mapping[tuple[S, str], S]
    ) -> None:
        self.name = name
        self.states: tuple[S, ...] = tuple(states)
        self.events: tuple[str, ...] = tuple(events)
        self.transitions = dict(transitions)
        for (state, event), nxt in self.transitions.items():
            if state not in self.states or nxt not in self.states:
                raise ValueError(f"{name} state table: unknown state in ({state}, {event!r}) -> {nxt}")
            if event not in self.events:
                raise ValueError(f"{name} state table: unknown event {event!r}")
        self._allowed = {
            state: frozenset(e for (s, e) in self.transitions if s == state) for state in self.states
        }

    def next(self, state: S, event: str) -> S:
        nxt = self.transitions.get((state, event))
        if nxt is None:
            allowed = ", ".join(sorted(self._allowed.get(state, ()))) or "none"
            raise TransitionError(
                f"{self.name} session: no transition from {state.name} on {event!r} (allowed: {allowed})"
            )
        return nxt

    def allowed(self, state: S) -> frozenset[str]:
        """The events `state` has a transition for."""
        return self._allowed[state]

    def refusals(self, inputs: Iterable[str], answer: Callable[[S, str], R]) -> dict[S, dict[str, R]]:
        """state -> {input the state has no transition for: `answer(state, input)`}: what the
        session says (on the wire) to a client input that is not allowed in its state. The
        transitions are the one source of what is allowed; this only names the answers."""
        inputs = tuple(inputs)
        return {
            state: {e: answer(state, e) for e in inputs if e not in self._allowed[state]}
            for state in self.states
        }
