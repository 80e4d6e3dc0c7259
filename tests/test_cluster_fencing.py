"""Fencing and demotion of whole nodes (two in-process `start_exchange` cluster members on
a real NATS cluster): a leader whose lease lapsed without it noticing (its lease loop is
stopped, as if paused) keeps believing it leads; once the standby has taken over, the old
leader's next batch is refused by the stream, the order is not acknowledged, and the old
leader demotes itself and follows the new one."""

from __future__ import annotations

import asyncio

from natsproc import unique_stream
from waiting import wait_until_async

from engine.app import start_exchange
from engine.cluster.member import Role
from engine.config import Config
from engine.core.commands import NewOrder
from engine.core.domain import Instrument, OrderType, RejectReason, Side
from engine.core.events import OrderAccepted, OrderRejected
from engine.service import NotLeader

SYMBOL = "BTC-USD"


def order(clid: str) -> NewOrder:
    return NewOrder("alice", clid, SYMBOL, int(Side.BUY), int(OrderType.LIMIT), 100, 1)


def config(tmp_path, node_id: str, urls: list[str], stream: str, lease_ttl: float = 0.6) -> Config:
    return Config(
        data_dir=tmp_path / node_id,
        http_port=0,
        fix_port=-1,
        binary_port=-1,
        admin_key="admin-key-0000000000",
        api_keys={"alice-key-0000000000": "alice"},
        instruments=[Instrument(SYMBOL, tick_size=1, lot_size=1)],
        cluster=urls,
        node_id=node_id,
        cluster_stream=stream,
        lease_ttl=lease_ttl,
    )


def test_a_deposed_leader_is_fenced_and_demotes(nats_cluster, tmp_path):
    stream, _ = unique_stream()

    async def scenario() -> None:
        a = await start_exchange(config(tmp_path, "a", nats_cluster.urls, stream))
        b = None
        try:
            await wait_until_async("a leads", lambda: a.cluster.role == Role.LEADER)
            assert (await a.service.submit_one(order("a1")))[0].__class__ is OrderAccepted
            b = await start_exchange(config(tmp_path, "b", nats_cluster.urls, stream))
            await wait_until_async("b follows", lambda: b.node.engine.last_seq == a.node.engine.last_seq)
            await wait_until_async("b sees a lead", lambda: b.cluster.lease.view.holder == "a")
            assert b.cluster.role == Role.STANDBY
            try:
                await b.service.submit_one(order("b0"))
                raise AssertionError("a standby accepted an order")
            except NotLeader as exc:
                assert exc.leader["node"] == "a"

            # a's lease loop stops (a long pause): a still thinks it leads; b takes over.
            a.cluster._background[0].cancel()
            await wait_until_async("b leads", lambda: b.cluster.role == Role.LEADER)
            assert a.cluster.role == Role.LEADER and a.cluster.lease.held  # a has not noticed
            assert (await b.service.submit_one(order("b1")))[0].__class__ is OrderAccepted

            # a's next batch is fenced by the stream: refused, not acknowledged; a demotes.
            events = await a.service.submit_one(order("a2"))
            assert isinstance(events[0], OrderRejected)
            assert events[0].reason == RejectReason.JOURNAL_WRITE_FAILED
            assert a.node.journal.fenced == 1
            # (a's renewal, the proof it would need to promote again, is refused)
            await wait_until_async(
                "a demotes", lambda: a.cluster.role == Role.STANDBY and not a.cluster.lease.held
            )
            assert not a.service.accepting
            # ...and follows b: b's order arrives, a's refused one never existed.
            assert (await b.service.submit_one(order("b2")))[0].__class__ is OrderAccepted
            await wait_until_async("a catches up", lambda: a.node.engine.last_seq == b.node.engine.last_seq)
            clids = {o.client_order_id for o in a.order_store.open_orders("alice")}
            assert clids == {"a1", "b1", "b2"}
            # The pause ends: a's lease loop runs again, sees b lead, and stays a standby.
            a.cluster._background[0] = a.cluster.link.submit(a.cluster.lease.run())
            await wait_until_async("a sees b lead", lambda: a.cluster.status()["leader"] == "b")
            assert a.cluster.role == Role.STANDBY and b.cluster.role == Role.LEADER
            assert b.cluster.status()["epoch"] > 1
        finally:
            for running in (b, a):
                if running is not None:
                    await running.stop()

    asyncio.run(scenario())


def test_step_down_over_rest_hands_over_and_the_automation_knows_the_hooks(nats_cluster, tmp_path):
    stream, _ = unique_stream()

    async def scenario() -> None:
        import aiohttp

        # A step-down hands the lease over at once, so no short TTL is needed here; a long
        # one keeps a CPU-starved test run (suites in parallel) from a real, unasked failover.
        a = await start_exchange(config(tmp_path, "a", nats_cluster.urls, stream, lease_ttl=3.0))
        b = None
        try:
            await wait_until_async("a leads", lambda: a.cluster.role == Role.LEADER)
            b = await start_exchange(config(tmp_path, "b", nats_cluster.urls, stream, lease_ttl=3.0))
            await wait_until_async("b sees a lead", lambda: b.cluster.lease.view.holder == "a")
            admin = {"X-API-Key": "admin-key-0000000000"}
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{a.ports['http']}/v1/admin/cluster"
                async with http.get(url) as resp:
                    assert resp.status == 403
                async with http.get(url, headers=admin) as resp:
                    status = await resp.json()
                assert (status["role"], status["leader"], status["lag"]) == ("leader", "a", 0)
                async with http.post(url + "/step-down", headers=admin) as resp:
                    assert resp.status == 200
                    assert (await resp.json())["stepped_down"] is True
                assert a.cluster.role == Role.STANDBY and not a.service.accepting
                await wait_until_async("b leads", lambda: b.cluster.role == Role.LEADER)
                assert (await b.service.submit_one(order("b1")))[0].__class__ is OrderAccepted
                await wait_until_async(
                    "a follows b", lambda: a.node.engine.last_seq == b.node.engine.last_seq
                )
                await wait_until_async("a sees b lead", lambda: a.cluster.status()["leader"] == "b")
                async with http.get(f"http://127.0.0.1:{a.ports['http']}/readyz") as resp:
                    assert resp.status == 503 and "leader is node b" in (await resp.text())
            actions = a.cluster.automation_actions()
            assert set(actions) == {"promote-standby", "step-down"}
            assert "not stepping down" in actions["step-down"]()  # a is no longer the leader
            assert "leader b" in actions["promote-standby"]()  # b's lease is live: nothing taken
            assert a.cluster.role == Role.STANDBY and b.cluster.role == Role.LEADER
        finally:
            for running in (b, a):
                if running is not None:
                    await running.stop()

    asyncio.run(scenario())
