"""A binary-protocol client that follows the cluster's leader and resends what was not answered.

    client = LeaderFollowingBinaryClient([("127.0.0.1", 9879), ("127.0.0.1", 9889)], api_key)
    await client.start()                      # connects to the leader (follows NotLeader hints)
    client.new_order(7, "BTC-USD", Side.BUY, price=100, qty=5)   # client_ref 7 = client order id "7"
    await client.settled(timeout=30)          # every order accepted, or refused definitively
    client.ledger.figures()                   # resent, duplicates resolved, ack gap, unresolved

It logs in with protocol version 2, so a standby answers with a NotLeader frame naming the
leader's binary endpoint (or, during an election, how long to wait). On a NOT_LEADER
refusal, a lost connection or a failed login it reconnects (the hinted node first, then the
others in turn) and resends every order still pending, with the same client_ref: an order
that had landed is answered DUPLICATE_CLIENT_ORDER_ID, which settles it as placed once. The
Rejected frame of a duplicate carries no order id (the binary protocol has no lookup); a
client that needs it asks REST (`engine.client.rest`, lookup by client order id).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from engine.client.ledger import Answer, Entry, OrderLedger, classify, reason_name
from engine.core.domain import RequestKind
from engine.gateways.binary import protocol as p
from engine.gateways.binary.client import BinaryClient, LoginRefused

log = logging.getLogger("loom.client.binary")

_NEW = int(RequestKind.NEW)
RECONNECT_PAUSE_S = 0.05  # between two rounds over every node
RESEND_PAUSE_S = 0.02  # before resending what the leader could not take (overloaded, unknown)


def parse_nodes(text: str) -> list[tuple[str, int]]:
    """ "host:port,host:port" -> [(host, port), ...]; ValueError naming the bad entry."""
    nodes = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"not host:port: {item!r}")
        nodes.append((host, int(port)))
    if not nodes:
        raise ValueError("no nodes given")
    return nodes


class _Connection:
    """One connection's view: whether the node said it does not lead (and where the leader is)."""

    def __init__(self) -> None:
        self.client: BinaryClient | None = None
        self.not_leader: p.NotLeader | None = None


class LeaderFollowingBinaryClient:
    def __init__(
        self,
        nodes: Sequence[tuple[str, int]],
        api_key: str,
        *,
        on_frames: Callable[[list], None] | None = None,
        on_settled: Callable[[Entry], None] | None = None,
        connect_timeout: float = 2.0,
        ledger: OrderLedger | None = None,
    ) -> None:
        if not nodes:
            raise ValueError("no nodes given")
        self.nodes = list(nodes)
        self.api_key = api_key
        self.on_frames = on_frames  # every frame received (reports, fills), after the ledger saw it
        self.on_settled = on_settled
        self.connect_timeout = connect_timeout
        self.ledger = ledger or OrderLedger()
        self.conn: _Connection | None = None
        self.endpoint: tuple[str, int] | None = None  # where the current connection goes
        self.connects = 0
        self._hint: tuple[str, int] | None = None
        self._wait_s = 0.0  # an election's retry-after, before the next round
        self._next = 0  # the node to try after the hint
        self._ready = asyncio.Event()
        self._reconnecting: asyncio.Task | None = None
        self._resend_due: asyncio.TimerHandle | None = None
        self._to_resend: dict[str, Entry] = {}  # answered "resend" (overloaded, outcome unknown)
        self._error: BaseException | None = None
        self._settled = asyncio.Event()
        self._closed = False

    # -- connecting ---------------------------------------------------------------------------

    async def start(self, timeout: float = 60.0) -> None:
        self._reconnect()
        await asyncio.wait_for(self._ready.wait(), timeout)
        if self._error is not None:
            raise self._error

    def _reconnect(self) -> None:
        if self._closed or (self._reconnecting is not None and not self._reconnecting.done()):
            return
        self._ready.clear()
        old, self.conn = self.conn, None
        if old is not None and old.client is not None:
            old.client.close()
        self._reconnecting = asyncio.get_running_loop().create_task(self._find_leader())

    def _candidates(self) -> list[tuple[str, int]]:
        hint, self._hint = self._hint, None
        start = self._next % len(self.nodes)
        order = self.nodes[start:] + self.nodes[:start]
        self._next += 1
        return [hint, *(n for n in order if n != hint)] if hint else order

    async def _find_leader(self) -> None:
        while not self._closed:
            if self._wait_s:
                await asyncio.sleep(self._wait_s)
                self._wait_s = 0.0
            unreachable: set[tuple[str, int]] = set()
            for host, port in self._candidates():
                if (host, port) in unreachable:
                    continue
                conn = _Connection()
                try:
                    conn.client = await BinaryClient.connect(
                        host,
                        port,
                        self.api_key,
                        on_frames=lambda frames, c=conn: self._frames(c, frames),
                        timeout=self.connect_timeout,
                    )
                except LoginRefused as exc:  # a wrong key is not fixed by another node
                    self._error = exc
                    self._ready.set()
                    return
                except (OSError, TimeoutError) as exc:
                    log.debug("binary %s:%d: %s", host, port, exc)
                    unreachable.add((host, port))
                    continue
                if conn.not_leader is not None:  # a standby: it named the leader, or an election
                    conn.client.close()
                    self._learn(conn.not_leader)
                    if self._hint in unreachable:  # it still names the leader that just died
                        self._hint = None
                    if self._hint is not None or self._wait_s:
                        break  # go where it points (or wait as it says) before the rest
                    continue
                self.conn, self.endpoint = conn, (host, port)
                self.connects += 1
                conn.client.closed.add_done_callback(lambda _f, c=conn: self._lost(c))
                self._resend_all()
                self._ready.set()
                return
            else:
                await asyncio.sleep(RECONNECT_PAUSE_S)

    def _learn(self, hint: p.NotLeader) -> None:
        endpoint = hint.endpoint
        if endpoint is not None:
            self._hint = endpoint
        else:
            self._wait_s = min(hint.retry_after_ms / 1000, 5.0)

    def _lost(self, conn: _Connection) -> None:
        if conn is self.conn and not self._closed:
            log.info("binary connection to %s:%d lost; finding the leader", *self.endpoint)
            self._reconnect()

    # -- orders --------------------------------------------------------------------------------

    def new_order(self, client_ref: int, *order, **options) -> None:
        """Place an order (client_ref > 0: its client order id, what makes resending safe);
        arguments as protocol.new_order_frame (symbol, side, price, qty, ...)."""
        if not 0 < client_ref <= p.U64_MAX:
            raise ValueError("client_ref must be 1..2**64-1: it is what makes a resend safe")
        self.new_frames([(str(client_ref), p.new_order_frame(client_ref, *order, **options))])

    def new_frames(self, orders: list[tuple[str, bytes]], sent_before: bool = False) -> None:
        """Encoded NewOrder frames with their client order ids (str(client_ref)), in one write.
        `sent_before`: an earlier run sent them and got no answer (resume)."""
        entries = [self.ledger.add(cid, frame) for cid, frame in orders]
        if sent_before:
            for entry in entries:
                entry.sends = 1  # the earlier run's send
        self._settled.clear()
        if self.conn is not None:
            self._send(entries)

    def resume(self, orders: list[tuple[str, bytes]]) -> None:
        """Orders an earlier run of this client sent without getting their answers (kept by the
        caller across a restart): resent; an order that had landed is answered
        DUPLICATE_CLIENT_ORDER_ID and settles as placed, once."""
        self.new_frames(orders, sent_before=True)

    def _send(self, entries: list[Entry]) -> None:
        if not entries:
            return
        try:
            self.conn.client.send(b"".join(e.request for e in entries))
        except ConnectionError:
            self._reconnect()  # they stay pending: resent once a leader is found
            return
        for entry in entries:
            self.ledger.sent(entry)

    def _resend_all(self) -> None:
        """A new connection: everything pending was sent elsewhere (or never), send it here."""
        self._to_resend.clear()
        self._send(list(self.ledger.pending.values()))

    def _resend_refused(self) -> None:
        self._resend_due = None
        entries = [e for e in self._to_resend.values() if e.answer is None]
        self._to_resend.clear()
        if self.conn is not None:
            self._send(entries)

    def _frames(self, conn: _Connection, frames: list) -> None:
        ledger = self.ledger
        elsewhere = False
        for f in frames:
            kind = type(f)
            if kind is p.Accepted:
                self._settle(str(f.client_ref), Answer.ACCEPTED, f.order_id)
            elif kind is p.Rejected and f.request == _NEW and f.client_ref:
                cid = str(f.client_ref)
                entry = ledger.pending.get(cid)
                if entry is None:
                    continue
                code = reason_name(f.reason)
                answer = classify(code, entry.sends > 1)
                if answer is Answer.ELSEWHERE:
                    elsewhere = True
                elif answer is Answer.RESEND:
                    self._to_resend[cid] = entry
                    self._resend_soon()
                else:
                    self._settle(cid, answer, f.order_id, code)
            elif kind is p.NotLeader:
                conn.not_leader = f
        if conn is self.conn and (elsewhere or conn.not_leader is not None):
            if conn.not_leader is not None:
                self._learn(conn.not_leader)
            self._reconnect()
        if self.on_frames is not None:
            self.on_frames(frames)

    def _resend_soon(self) -> None:
        if self._resend_due is None:
            self._resend_due = asyncio.get_running_loop().call_later(RESEND_PAUSE_S, self._resend_refused)

    def _settle(self, cid: str, answer: Answer, order_id: int = 0, code: str = "") -> None:
        entry = self.ledger.settle(cid, answer, order_id, code)
        if entry is not None:
            if self.on_settled is not None:
                self.on_settled(entry)
            if not self.ledger.pending:
                self._settled.set()

    async def settled(self, timeout: float | None = None) -> bool:
        """Wait until every order placed so far has a definite answer; False on timeout."""
        if not self.ledger.pending:
            return True
        try:
            await asyncio.wait_for(self._settled.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        self._closed = True
        if self._resend_due is not None:
            self._resend_due.cancel()
        if self._reconnecting is not None and not self._reconnecting.done():
            self._reconnecting.cancel()
        if self.conn is not None and self.conn.client is not None:
            await self.conn.client.aclose()
