"""Execution reports: every durable event that concerns an account goes to that account's
live sessions (WebSocket, FIX, binary), in sequence order, including the fills of resting
orders that another account's order traded against."""

from __future__ import annotations

import logging
from collections.abc import Callable

from engine.core.events import Trade

log = logging.getLogger("loom.routing")

Listener = Callable[[object], None]


class ExecutionRouter:
    def __init__(self) -> None:
        self.by_account: dict[str, set[Listener]] = {}

    def subscribe(self, account: str, listener: Listener) -> Callable[[], None]:
        self.by_account.setdefault(account, set()).add(listener)

        def unsubscribe() -> None:
            listeners = self.by_account.get(account)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self.by_account[account]

        return unsubscribe

    def on_batch(self, _commands: list, results: list[list]) -> None:
        by_account = self.by_account
        if not by_account:
            return
        for events in results:
            for ev in events:
                if type(ev) is Trade:
                    self._send(ev.maker_account, ev)
                    if ev.taker_account != ev.maker_account:
                        self._send(ev.taker_account, ev)
                else:
                    self._send(getattr(ev, "account", ""), ev)

    def _send(self, account: str, ev) -> None:
        listeners = self.by_account.get(account)
        if not listeners:
            return
        for listener in list(listeners):
            try:
                listener(ev)
            except Exception:
                log.exception("execution listener for %s failed; dropping it", account)
                listeners.discard(listener)
