"""Replay: applying journaled commands when nobody listens to the events.

Recovery applies a million commands and throws every event away, counting them only.
`SilentReplayer` hands each batch to `MatchingEngine.replay`, the same order path and
match loop as `apply` with no event sink: a new order changes the state exactly as under
`apply` and returns the number of events `apply` would have emitted, without building
them. Every rule (validation, risk, price-time priority, self-trade prevention, post-only,
fill-or-kill, IOC, market orders, amends) lives once, in engine/core/matcher.py.

Pure like the rest of the core: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from engine.core.commands import Command, ReplayCommand
from engine.core.matcher import MatchingEngine


class SilentReplayer:
    """Applies batches of sequenced commands to one engine without building the events of
    new orders (the bulk of any journal); the rare rest builds its few events and counts them."""

    __slots__ = ("engine",)

    def __init__(self, engine: MatchingEngine) -> None:
        self.engine = engine

    def apply(self, commands: Iterable[Command | ReplayCommand]) -> int:
        """Apply the commands in order; return how many events `MatchingEngine.apply`
        would have emitted for them."""
        return self.engine.replay(commands)
