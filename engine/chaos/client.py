"""A thin REST client for chaos runs: a few concurrent senders of new orders, each with a
client order id never used before, every one recorded in a History (invoked, then its
outcome by engine.chaos.history.classify). It never resends: an unknown outcome stays
unknown for the checker to resolve from the journal.

It follows the leader: a NOT_LEADER answer names it (else the next node is tried), and a
node that does not answer is left for the next one. Runs its own event loop on a thread,
so the drill can inject faults from the calling thread meanwhile.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import aiohttp

from engine.chaos.history import CONNECT_FAILED, CONNECTION_LOST, OK, TIMEOUT, History, classify

SYMBOL = "BTC-USD"


class RecordingClient:
    def __init__(
        self,
        targets: Callable[[], list[str]],  # the nodes' current REST base URLs ("" for one that is down)
        account: str,
        api_key: str,
        history: History,
        concurrency: int = 4,
        timeout: float = 4.0,  # above the replicated journal's 2 s publish timeout
        prefix: str = "chaos",
    ) -> None:
        self.targets = targets
        self.account = account
        self.api_key = api_key
        self.history = history
        self.concurrency = concurrency
        self.timeout = timeout
        self.prefix = prefix
        self.stop_event = threading.Event()
        self._next = 0
        self._guess = ""  # the node believed to lead
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> RecordingClient:
        self._thread = threading.Thread(target=self._main, name="chaos-client", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sending; every request in flight is answered or times out first."""
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 10)
        self.history.close_pending(time.monotonic())
        if self.error is not None:
            raise RuntimeError(f"the chaos client failed: {self.error!r}") from self.error

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by stop()
            self.error = exc

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        headers = {"X-API-Key": self.api_key}
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
            await asyncio.gather(*(self._sender(session) for _ in range(self.concurrency)))

    def _target(self) -> str:
        bases = [b for b in self.targets() if b]
        if self._guess in bases:
            return self._guess
        self._guess = bases[0] if bases else ""
        return self._guess

    def _move_on(self, base: str, hint: str = "") -> None:
        """After `base` refused or did not answer: the leader it named, else the next node."""
        bases = [b for b in self.targets() if b]
        if hint in bases:
            self._guess = hint
        elif base == self._guess and bases:
            self._guess = bases[(bases.index(base) + 1) % len(bases)] if base in bases else bases[0]

    async def _sender(self, session: aiohttp.ClientSession) -> None:
        while not self.stop_event.is_set():
            base = self._target()
            if not base:
                await asyncio.sleep(0.05)
                continue
            self._next += 1
            n = self._next
            clid = f"{self.prefix}-{n}"
            op = self.history.invoke(self.account, clid, base, time.monotonic())
            price = 1000 + n % 100  # buys only: every accepted order rests
            order = {"symbol": SYMBOL, "side": "buy", "qty": 1, "price": price, "client_order_id": clid}
            status, code, order_id, hint = await self._post(session, base, order)
            outcome = classify(status, code)
            answer = f"{status} {code}".strip() if status else code
            self.history.complete(op, outcome, answer, time.monotonic(), order_id)
            if outcome != OK:
                self._move_on(base, hint)
                await asyncio.sleep(0.01)  # a breath before the next try: no hot loop

    async def _post(
        self, session: aiohttp.ClientSession, base: str, order: dict
    ) -> tuple[int, str, int, str]:
        """(status, error code, order id, leader hint); status 0 when nothing answered."""
        try:
            async with session.post(base + "/v1/orders", json=order) as resp:
                status = resp.status
                body = await resp.json(content_type=None)
        except aiohttp.ClientConnectorError:
            return 0, CONNECT_FAILED, 0, ""
        except TimeoutError:
            return 0, TIMEOUT, 0, ""
        except (aiohttp.ClientError, OSError, ValueError):
            return 0, CONNECTION_LOST, 0, ""
        if 200 <= status < 300:
            placed = body.get("order") or next((e for e in body.get("events", []) if "order_id" in e), {})
            return status, "", int(placed.get("order_id", 0)), ""
        err = (body or {}).get("error") or {}
        leader = err.get("leader")
        hint = str(leader.get("url") or "") if isinstance(leader, dict) else ""
        return status, str(err.get("code", "")), 0, hint
