"""Binary-protocol load driver: pre-encoded frames, many per write, acks matched by
client_ref (the run's ref of the load order's index, LoadRun.client_ref)."""

from __future__ import annotations

import time

from engine.client.ledger import reason_name
from engine.core.domain import OrderType, SelfTradePrevention, Side, TimeInForce
from engine.gateways.binary import protocol as p
from engine.gateways.binary.client import BinaryClient
from engine.load.backpressure import limit_send_buffer, room
from engine.load.runner import SYMBOL, LoadOrder, LoadRun

_SIDE = {"buy": int(Side.BUY), "sell": int(Side.SELL)}
_TIF = {"gtc": int(TimeInForce.GTC), "ioc": int(TimeInForce.IOC)}
_LIMIT = int(OrderType.LIMIT)
_STP = int(SelfTradePrevention.CANCEL_NEWEST)


class BinaryDriver:
    def __init__(
        self,
        host: str,
        port: int,
        api_key: str,
        connections: int,
        run: LoadRun,
        hold: bool = False,
        max_in_flight: int = 0,
    ) -> None:
        self.host, self.port, self.api_key, self.n = host, port, api_key, connections
        self.run = run
        self.hold = hold
        self.max_in_flight = max_in_flight  # per connection, with hold (engine.load.backpressure)
        self.clients: list[BinaryClient] = []
        self.pending: list[set[int]] = []  # per connection: the refs it sent and not yet answered
        self._next = 0

    async def connect(self, on_ack) -> None:
        accepted, rejected = p.Accepted, p.Rejected
        overloaded = int(p.GatewayRejectReason.OVERLOADED)
        index_of = self.run.index_of_ref

        # A session receives the execution reports of its whole account (every session of it
        # and every protocol): each connection counts only the answers to its own orders.
        # FIX (tests/test_load_runs.py): with --connections 4 every ack was counted 4 times.
        def reader(mine: set[int]):
            def on_frames(frames: list) -> None:
                now = time.perf_counter_ns()
                for f in frames:
                    kind = type(f)
                    if kind is accepted:
                        if f.client_ref in mine:
                            mine.discard(f.client_ref)
                            on_ack(index_of(f.client_ref), True, now, False, None, f.order_id)
                    elif kind is rejected and f.request == 1 and f.client_ref in mine:
                        mine.discard(f.client_ref)
                        shed = f.reason == overloaded
                        on_ack(index_of(f.client_ref), False, now, shed, reason_name(f.reason))

            return on_frames

        for _ in range(self.n):
            mine: set[int] = set()
            client = await BinaryClient.connect(self.host, self.port, self.api_key, on_frames=reader(mine))
            if self.hold:
                limit_send_buffer(client.transport)
            self.clients.append(client)
            self.pending.append(mine)

    def send(self, orders: list[LoadOrder]) -> int:
        encode = p.encode_new_order
        per: dict[int, list[bytes]] = {}
        held = 0
        free = [
            room(self.hold, c.transport, len(mine), self.max_in_flight, len(orders))
            for c, mine in zip(self.clients, self.pending, strict=True)
        ]
        if not any(free):  # every connection holds: nothing to build or route
            return len(orders)
        for k in range(len(orders)):
            c = self._next
            self._next = (c + 1) % self.n
            if free[c] <= 0:
                held += 1
                continue
            free[c] -= 1
            o = orders[k]  # built only now (engine.load.runner.OrderBatch)
            ref = self.run.client_ref(o.index)
            frame = encode(ref, SYMBOL, _SIDE[o.side], _LIMIT, _TIF[o.tif], False, _STP, o.price, o.qty)
            per.setdefault(c, []).append(frame)
            self.pending[c].add(ref)
        for c, frames in per.items():
            self.clients[c].send_many(frames)
        return held

    async def close(self) -> None:
        for c in self.clients:
            c.close()


class FollowingBinaryDriver:
    """`loom load --protocol binary --nodes ...`: a cluster's nodes, the leader found and
    followed across a failover (engine.client.binary), every order not answered resent with
    the same client_ref (LoadRun.client_ref: unique per run, never 0)."""

    def __init__(self, nodes: list[tuple[str, int]], api_key: str, connections: int, run: LoadRun) -> None:
        self.nodes, self.api_key, self.n = nodes, api_key, connections
        self.run = run
        self.clients: list = []
        self._next = 0

    async def connect(self, on_ack) -> None:
        from engine.client.binary import LeaderFollowingBinaryClient
        from engine.client.ledger import Answer

        index_of = self.run.index_of_ref

        def settled(entry) -> None:
            ok = entry.answer is not Answer.REFUSED
            on_ack(index_of(int(entry.client_order_id)), ok, None, False, None if ok else entry.code)

        for _ in range(self.n):
            client = LeaderFollowingBinaryClient(self.nodes, self.api_key, on_settled=settled)
            await client.start()
            self.clients.append(client)

    def send(self, orders: list[LoadOrder]) -> None:
        encode = p.encode_new_order
        per: dict[int, list[tuple[str, bytes]]] = {}
        for o in orders:
            c = self._next
            self._next = (c + 1) % self.n
            ref = self.run.client_ref(o.index)
            frame = encode(ref, SYMBOL, _SIDE[o.side], _LIMIT, _TIF[o.tif], False, _STP, o.price, o.qty)
            per.setdefault(c, []).append((str(ref), frame))
        for c, frames in per.items():
            self.clients[c].new_frames(frames)

    def figures(self) -> dict:
        """The failover figures over every connection: resent, duplicates resolved, the
        longest gap between acks, and the orders still unresolved (must be 0)."""
        total: dict = {}
        for client in self.clients:
            for key, value in client.ledger.figures().items():
                merge = max if key == "max_ack_gap_ms" else lambda a, b: a + b
                total[key] = merge(total.get(key, 0), value)
        total["connects"] = sum(c.connects for c in self.clients)
        return total

    async def close(self) -> None:
        for c in self.clients:
            await c.close()
