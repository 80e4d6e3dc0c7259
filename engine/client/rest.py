"""A REST client (aiohttp) that follows the cluster's leader and resends what was not answered.

    async with RestClient(["http://127.0.0.1:8081", "http://127.0.0.1:8082"], api_key) as client:
        outcome = await client.place({"symbol": "BTC-USD", "side": "buy", "qty": 5, "price": 100,
                                      "client_order_id": "my-1"})
        outcome.answer, outcome.order_id   # accepted / duplicate (placed by an earlier send) / refused

`place` keeps one order's whole story: a 503 NOT_LEADER sends it to `error.leader.url` (or,
during an election, waits `retry_after_s`), a lost connection or timeout to the next node,
OVERLOADED, JOURNAL_WRITE_FAILED and 504 OUTCOME_UNKNOWN to a resend after a pause, always
with the same client order id. A resend answered 409 DUPLICATE_CLIENT_ORDER_ID means an
earlier send landed: the order is looked up by client order id
(`GET /v1/orders/by-client-id/{id}`) for its order id. A resend refused for another reason is
confirmed the same way, since the engine checks the order before the duplicate id and the
first send may have landed. Only a 404 UNKNOWN_ORDER there makes such a refusal definitive.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp

from engine.client.ledger import Answer, Entry, OrderLedger, classify

log = logging.getLogger("loom.client.rest")

RESEND_PAUSE_S = 0.05
ROUND_PAUSE_S = 0.1  # after every node failed to answer, before the next round


@dataclass(frozen=True)
class Outcome:
    client_order_id: str
    answer: Answer  # ACCEPTED, DUPLICATE or REFUSED
    order_id: int = 0
    code: str = ""  # the refusal's error code
    order: dict | None = None  # the order's JSON when known
    sends: int = 1


class LookupUnavailable(RuntimeError):
    """The node has no lookup by client order id (an older version), or refused it."""


class GaveUp(RuntimeError):
    """No node gave a definite answer within the deadline: the order's outcome is unknown
    (look it up by client order id later)."""


class RestClient:
    def __init__(
        self,
        urls: Sequence[str],
        api_key: str,
        *,
        timeout: float = 2.0,
        give_up_after: float = 60.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if not urls:
            raise ValueError("no node URLs given")
        self.urls = [u.rstrip("/") for u in urls]
        self.api_key = api_key
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.give_up_after = give_up_after
        self.ledger = OrderLedger()
        self.leader: str | None = None  # the node that last accepted, or that was named
        self._session = session
        self._own_session = session is None
        self._rotation = itertools.cycle(range(len(self.urls)))
        self._ids = itertools.count(1)

    async def __aenter__(self) -> RestClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"X-API-Key": self.api_key})
        return self._session

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()

    # -- requests ------------------------------------------------------------------------------

    async def _request(self, method: str, url: str, body: dict | None = None) -> tuple[int, dict] | None:
        """(status, JSON body), or None when nothing answered (refused, reset, timed out)."""
        headers = {"X-API-Key": self.api_key}
        try:
            async with self.session.request(
                method, url, json=body, headers=headers, timeout=self.timeout
            ) as resp:
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    data = {}
                return resp.status, data if isinstance(data, dict) else {}
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.debug("%s %s: %s", method, url, exc)
            return None

    def _next_url(self) -> str:
        if self.leader is not None:
            return self.leader
        return self.urls[next(self._rotation)]

    async def get(self, path: str) -> tuple[int, dict]:
        """GET from the leader (any node when none is known); raises GaveUp if none answers."""
        deadline = time.monotonic() + self.give_up_after
        while time.monotonic() < deadline:
            url = self._next_url()
            answer = await self._request("GET", url + path)
            if answer is not None:
                return answer
            self.leader = None
            await asyncio.sleep(ROUND_PAUSE_S)
        raise GaveUp(f"no node answered GET {path}")

    async def lookup(self, client_order_id: str) -> dict | None:
        """The order with this client order id (its JSON), None when the venue has none."""
        status, body = await self.get(f"/v1/orders/by-client-id/{quote(client_order_id, safe='')}")
        if status == 200:
            return body
        if status == 404 and body.get("error", {}).get("code") == "UNKNOWN_ORDER":
            return None
        raise LookupUnavailable(f"lookup of {client_order_id!r} answered {status}: {body}")

    # -- placing -------------------------------------------------------------------------------

    async def place(self, order: dict, sent_before: bool = False) -> Outcome:
        """Place one order and return its definite outcome (a client order id is generated when
        the order has none). `sent_before`: an earlier run sent it and lost the answer (a
        duplicate then means placed). Raises GaveUp when no node answers within `give_up_after`."""
        body = dict(order)
        body.setdefault("client_order_id", f"rc-{int(time.time() * 1000)}-{next(self._ids)}")
        entry = self.ledger.add(body["client_order_id"], body)
        entry.sends = 1 if sent_before else 0
        deadline = time.monotonic() + self.give_up_after
        while time.monotonic() < deadline:
            url = self._next_url()
            self.ledger.sent(entry)
            answer = await self._request("POST", url + "/v1/orders", body)
            if answer is None:  # no answer: the order may or may not have landed
                self.leader = None
                await asyncio.sleep(ROUND_PAUSE_S / len(self.urls))
                continue
            status, data = answer
            if status == 201:
                self.leader = url
                placed = data.get("order") or {}
                return self._settle(entry, Answer.ACCEPTED, placed.get("order_id", 0), "", placed)
            err = data.get("error", {})
            code = err.get("code", f"HTTP_{status}")
            verdict = classify(code, entry.sends > 1)
            if verdict is Answer.ELSEWHERE:
                await self._follow(url, err)
                continue
            if verdict is Answer.RESEND:
                await asyncio.sleep(RESEND_PAUSE_S)
                continue
            self.leader = url
            if entry.sends > 1:  # a resend refused: did an earlier send land? the lookup knows
                try:
                    found = await self.lookup(entry.client_order_id)
                except LookupUnavailable:  # a node without the lookup: the answer stands
                    found = {} if verdict is Answer.DUPLICATE else None
                if found is not None:
                    return self._settle(entry, Answer.DUPLICATE, found.get("order_id", 0), code, found)
                if verdict is Answer.DUPLICATE:  # the id is taken, yet no order has it
                    raise GaveUp(f"{code} for {entry.client_order_id!r}, but the lookup finds no order")
            return self._settle(entry, Answer.REFUSED, 0, code)
        raise GaveUp(f"no definite answer for {entry.client_order_id!r} in {self.give_up_after} s")

    async def _follow(self, url: str, err: dict) -> None:
        """Not the leader: go to the one it names; during an election wait as it says; else
        (shutting down) try the next node."""
        leader = (err.get("leader") or {}).get("url") or None
        self.leader = leader if leader != url else None
        wait = float(err.get("retry_after_s") or 0)
        await asyncio.sleep(min(wait, 5.0) if self.leader is None and wait else 0)

    def _settle(self, entry: Entry, answer: Answer, order_id: int, code: str, order: dict | None = None):
        self.ledger.settle(entry.client_order_id, answer, order_id, code)
        return Outcome(entry.client_order_id, answer, order_id, code, order, entry.sends)
