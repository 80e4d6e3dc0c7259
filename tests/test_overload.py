"""Admission control: past `max_queued_commands` new orders are refused at once (Overloaded),
before anything is sequenced, so a refused command is never journaled; cancels get a
quarter more room. Service-level cases drive a real ExchangeNode (journal with fdatasync);
the gateway cases run the real binary server and a real `loom run` subprocess.

No fixed sleeps: waits are on the queue reaching a depth, a frame, or the readiness line."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import urllib.request

import pytest
from waiting import wait_until_async

from engine.auth import Accounts
from engine.config import ConfigError, load_config
from engine.core.commands import Amend, Cancel, CancelAll, NewOrder, SetKillSwitch
from engine.core.domain import Instrument, OrderType, RequestKind, RiskScope, Side
from engine.core.events import OrderAccepted, OrderRejected
from engine.exchange import ExchangeNode, NodeConfig
from engine.gateways.binary import protocol as p
from engine.gateways.binary.client import BinaryClient
from engine.gateways.binary.server import start_binary_server, stop_binary_server
from engine.journal import segments as segments_mod
from engine.journal.segments import FileJournal
from engine.overload import CommitCycles
from engine.routing import ExecutionRouter
from engine.service import DEFAULT_MAX_QUEUED_COMMANDS, ExchangeService, Overloaded, ServiceStopped
from telemetry.metrics import ExchangeMetrics
from telemetry.observer import MetricsObserver

BTC = "BTC-USD"
INSTRUMENTS = (Instrument(BTC),)
BUY, SELL = int(Side.BUY), int(Side.SELL)
LIMIT = int(OrderType.LIMIT)
WAIT = 10.0


def new_node(tmp_path) -> ExchangeNode:
    return ExchangeNode(
        NodeConfig(tmp_path / "data", INSTRUMENTS, snapshot_every_commands=0, snapshot_every_s=0)
    )


def buy(clid: str, price: int = 100, account: str = "alice") -> NewOrder:
    return NewOrder(account, clid, BTC, BUY, LIMIT, price, 1)


def recount(service: ExchangeService) -> int:
    """The queue's commands counted the slow way, to check the O(1) counter against."""
    return sum(len(pending.commands) for pending in service._queue)


def journaled_clids(tmp_path) -> list[str]:
    journal = FileJournal(tmp_path / "data" / "journal", read_only=True)
    try:
        return [c.client_order_id for c in journal.read() if type(c) is NewOrder]
    finally:
        journal.close()


def refusals(metrics: ExchangeMetrics, protocol: str) -> float:
    return metrics.registry.get_sample_value("loom_overload_refusals_total", {"protocol": protocol})


# -- the service --------------------------------------------------------------------------


def test_the_bound_refuses_new_orders_at_once_and_admits_cancels_up_to_the_hard_bound(tmp_path):
    async def main():
        node = new_node(tmp_path)
        metrics = ExchangeMetrics(process=False)
        service = ExchangeService(node, max_batch=3, observer=MetricsObserver(metrics), max_queued_commands=8)
        assert (service.max_queued_commands, service.max_queued_cancels) == (8, 10)
        acked: dict[str, list] = {}

        def answer(clid):
            return lambda results: acked.__setitem__(clid, results[0])

        # The commit loop is not started yet: nothing drains, the queue fills.
        for i in range(8):
            service.enqueue([buy(f"o{i}", 100 - i)], answer(f"o{i}"), "rest")
        assert service.queued == recount(service) == 8
        for cmd in (buy("late"), Amend("alice", 0, "o1", new_qty=2)):
            with pytest.raises(Overloaded) as refused:
                service.enqueue([cmd], answer("late"), "rest")
            assert refused.value.queued == 8 and refused.value.retry_after_s >= 1
        with pytest.raises(Overloaded):  # the future form refuses before awaiting anything
            await service.submit([buy("late-2")], "websocket")
        # Cancels (and the admin's risk commands) have a quarter more room: 10.
        service.enqueue([Cancel("alice", 0, "o0")], answer("cancel-o0"), "rest")
        service.enqueue([CancelAll("bob", BTC)], answer("cancel-all"), "binary")
        assert service.queued == recount(service) == 10
        with pytest.raises(Overloaded):
            service.enqueue([Cancel("alice", 0, "o1")], answer("cancel-o1"), "rest")
        # A submission mixing a new order with cancels is held to the order bound.
        with pytest.raises(Overloaded):
            service.enqueue([Cancel("alice", 0, "o2"), buy("mixed")], answer("mixed"), "binary")
        assert service.overload_refusals == 6
        assert refusals(metrics, "rest") == 3
        assert refusals(metrics, "websocket") == 1
        assert refusals(metrics, "binary") == 2
        assert refusals(metrics, "fix") == 0  # declared at 0 from the start

        depths: list[tuple[int, int]] = []
        service.add_listener(lambda batch, results: depths.append((service.queued, recount(service))))
        service.start()
        await service.stop()  # commits everything queued, in batches of at most 3
        assert len(depths) >= 4 and all(counter == slow for counter, slow in depths)
        assert service.queued == 0
        assert [type(acked[f"o{i}"][0]) for i in range(1, 8)] == [OrderAccepted] * 7
        assert "late" not in acked and "mixed" not in acked and "cancel-o1" not in acked
        node.close()
        # Nothing refused is journaled; everything acknowledged is.
        assert journaled_clids(tmp_path) == [f"o{i}" for i in range(8)]

    asyncio.run(asyncio.wait_for(main(), 60))


def test_the_counter_stays_right_through_write_failures_and_admits_again(tmp_path):
    async def main():
        node = new_node(tmp_path)
        service = ExchangeService(node, max_batch=2, max_queued_commands=4)
        service.start()
        node.journal.fail_writes(5)  # errno EIO: every batch refused with JOURNAL_WRITE_FAILED
        results = await asyncio.gather(*(service.submit([buy(f"f{i}")]) for i in range(4)))
        assert all(type(r[0][0]) is OrderRejected for r in results)
        assert service.queued == recount(service) == 0
        node.journal.fail_writes(None)
        futures = [asyncio.ensure_future(service.submit([buy(f"ok{i}")])) for i in range(4)]
        await asyncio.sleep(0)  # the four are queued (none committed: the loop has not run)
        assert service.queued == 4
        with pytest.raises(Overloaded):
            await service.submit([buy("over")])
        done = await asyncio.gather(*futures)
        assert [type(r[0][0]) for r in done] == [OrderAccepted] * 4
        assert service.queued == recount(service) == 0
        again = await service.submit([buy("again")])  # room again: admitted and acknowledged
        assert type(again[0][0]) is OrderAccepted
        await service.stop()
        with pytest.raises(ServiceStopped):  # a stopped service says so, not "overloaded"
            await service.submit([buy("after-stop")])
        node.close()
        assert journaled_clids(tmp_path) == [f"ok{i}" for i in range(4)] + ["again"]

    asyncio.run(asyncio.wait_for(main(), 60))


def test_an_empty_queue_admits_a_submission_larger_than_the_bound(tmp_path):
    async def main():
        node = new_node(tmp_path)
        service = ExchangeService(node, max_queued_commands=3)
        service.start()
        results = await service.submit([buy(f"big{i}") for i in range(5)])
        assert [type(r[0]) for r in results] == [OrderAccepted] * 5
        await service.stop()
        node.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_kill_switch_gets_through_an_order_backlog(tmp_path):
    async def main():
        node = new_node(tmp_path)
        service = ExchangeService(node, max_queued_commands=2)
        for i in range(2):
            service.enqueue([buy(f"k{i}")], lambda results: None)
        with pytest.raises(Overloaded):
            service.enqueue([buy("k2")], lambda results: None)
        switch = SetKillSwitch(int(RiskScope.ACCOUNT), "alice", True, "runaway")
        service.start()
        events = await service.submit_one(switch, "admin")
        assert events and type(events[0]) is not OrderRejected
        await service.stop()
        node.close()

    asyncio.run(asyncio.wait_for(main(), 60))


class _SlowDisk:
    """Stands in for `os` inside engine.journal.segments: each fdatasync first takes `delay` s
    (a slow disk), and while `gate` is set it waits until the test opens it (a disk held up,
    e.g. by a snapshot's writeback). `held` counts the syncs that reached a gate."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.gate: threading.Event | None = None
        self.held = 0
        self.held_too_long = False

    def __getattr__(self, name):
        return getattr(os, name)

    def fdatasync(self, fd):
        os.fdatasync(fd)
        if self.delay:
            time.sleep(self.delay)
        gate = self.gate
        if gate is not None:
            self.held += 1
            self.held_too_long |= not gate.wait(WAIT)

    def release(self, hold_next: bool = False) -> None:
        """Let the held sync finish; with `hold_next`, the next one is held at a new gate."""
        gate, self.gate = self.gate, threading.Event() if hold_next else None
        gate.set()


def test_the_queue_delay_does_not_count_the_commit_cycle_a_submission_arrived_during():
    waits = CommitCycles()
    waits.begin(1.0)
    assert waits.backlog_wait(1.01, 1.5) == 0.0  # arrived during the cycle in flight
    assert waits.backlog_wait(0.9, 1.5) == pytest.approx(0.6)  # queued before it, left out of its batch
    waits.end(2.0)
    assert waits.backlog_wait(1.01, 2.03) == pytest.approx(0.03)  # counted from the cycle's end
    assert waits.backlog_wait(2.01, 2.03) == pytest.approx(0.02)  # arrived after it: all of it
    assert waits.backlog_wait(0.9, 2.03) == pytest.approx(1.13)


async def _held_write(service: ExchangeService, disk: _SlowDisk, clid: str) -> asyncio.Future:
    """Make the disk slow for one write (inline: nothing to overlap yet), then hold the next
    one at the gate; returns that write's submission once the journal thread is in its sync."""
    disk.delay = 0.005  # over SLOW_FSYNC_NS: the next writes go to the journal thread
    await service.submit([buy(f"{clid}-slow")])
    disk.delay = 0.0
    disk.gate = threading.Event()
    before = disk.held
    held = asyncio.ensure_future(service.submit([buy(clid)]))
    await wait_until_async("the journal thread held in fdatasync", lambda: disk.held > before, timeout=WAIT)
    return held


def test_a_slow_disk_does_not_refuse_orders_but_a_backlog_still_does(tmp_path, monkeypatch):
    """The defect: with the journal's fdatasync off the event loop, the loop went on reading
    orders while a slow disk held the write, and the 50 ms queue-delay bound refused them
    (344 of 4,000 in `loom bench snapshot-stall`), though the next batch would take them all.
    A queue the batch left behind (more than max_batch) is a backlog and is still refused."""
    disk = _SlowDisk()
    monkeypatch.setattr(segments_mod, "os", disk)

    async def main():
        node = new_node(tmp_path)
        service = ExchangeService(node, max_batch=4, max_queued_commands=100, max_queue_delay_s=0.05)
        service.start()
        held = await _held_write(service, disk, "held")
        assert service.threaded_writes >= 1  # the held write is on the journal thread: the loop runs
        acked: dict[str, list] = {}
        for i in range(3):  # fits in the next batch with what arrives later
            service.enqueue([buy(f"q{i}")], lambda results, i=i: acked.__setitem__(f"q{i}", results[0]))
        await wait_until_async(
            "the queue's oldest past 3x the delay bound", lambda: service.oldest_queued_age() > 0.15
        )
        assert not service.refuses_orders(1)
        late = asyncio.ensure_future(service.submit([buy("late")]))  # admitted, not Overloaded
        await asyncio.sleep(0)
        assert service.queued == 4 and service.overload_refusals == 0
        disk.release()
        assert type((await held)[0][0]) is OrderAccepted
        assert type((await late)[0][0]) is OrderAccepted
        assert [type(acked[f"q{i}"][0]) for i in range(3)] == [OrderAccepted] * 3

        # The same slow disk with more queued than one batch takes (max_batch 4): the next
        # batch leaves two behind, and their whole wait counts.
        held = await _held_write(service, disk, "held-2")
        behind: dict[str, list] = {}
        for i in range(6):
            service.enqueue([buy(f"b{i}")], lambda results, i=i: behind.__setitem__(f"b{i}", results[0]))
        before = disk.held
        disk.release(hold_next=True)
        await wait_until_async(
            "the next batch (4 of 6) held in its sync", lambda: disk.held > before and service.queued == 2
        )
        await wait_until_async(
            "the left-behind oldest past the delay bound", lambda: service.oldest_queued_age() > 0.05
        )
        assert service.refuses_orders(1)
        with pytest.raises(Overloaded):
            await service.submit([buy("refused")])
        assert service.overload_refusals == 1
        disk.release()
        await held
        await service.stop()
        assert [type(behind[f"b{i}"][0]) for i in range(6)] == [OrderAccepted] * 6
        node.close()
        assert not disk.held_too_long
        assert "refused" not in journaled_clids(tmp_path) and "late" in journaled_clids(tmp_path)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_crashed_commit_loop_leaves_no_count_behind(tmp_path):
    async def main():
        node = new_node(tmp_path)
        service = ExchangeService(node, max_queued_commands=10)

        def broken(batch):
            raise RuntimeError("broken invariant")

        node.stamp = broken
        futures = [asyncio.ensure_future(service.submit([buy(f"c{i}")])) for i in range(3)]
        await asyncio.sleep(0)
        assert service.queued == 3
        service.start()
        for future in futures:
            with pytest.raises(RuntimeError):
                await future
        assert service.queued == recount(service) == 0
        with pytest.raises(RuntimeError):
            await service.stop()
        node.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_max_queued_commands_is_configurable_and_checked(tmp_path):
    assert load_config(None, env={}).max_queued_commands == DEFAULT_MAX_QUEUED_COMMANDS
    toml = tmp_path / "loom.toml"
    toml.write_text("max_queued_commands = 500\n")
    assert load_config(str(toml), env={}).max_queued_commands == 500
    env = {"LOOM_MAX_QUEUED_COMMANDS": "700"}
    assert load_config(str(toml), env=env).max_queued_commands == 700
    with pytest.raises(ConfigError, match="max_queued_commands"):
        load_config(None, env={"LOOM_MAX_QUEUED_COMMANDS": "0"})
    toml.write_text('max_queued_commands = "many"\n')
    with pytest.raises(ConfigError, match="max_queued_commands"):
        load_config(str(toml), env={})


# -- the binary gateway -------------------------------------------------------------------

ALICE_KEY = "alice-secret-key-0123456789abcd"


def test_binary_gateway_refuses_with_the_overloaded_reason_and_journals_nothing_refused(tmp_path):
    async def main():
        node = new_node(tmp_path)
        # Not started: nothing drains yet. Bound 4 for orders, 5 for cancels.
        service = ExchangeService(node, max_queued_commands=4)
        router = ExecutionRouter()
        service.add_listener(router.on_batch)
        server = await start_binary_server(service, router, Accounts({ALICE_KEY: "alice"}), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = await BinaryClient.connect("127.0.0.1", port, ALICE_KEY)
        try:
            for ref in (1, 2, 3, 4):
                client.new_order(ref, BTC, BUY, price=100, qty=1)
            await wait_until_async("four orders queued", lambda: service.queued == 4, timeout=WAIT)
            client.new_order(5, BTC, BUY, price=100, qty=1)
            refused = await client.recv(WAIT)
            assert type(refused) is p.Rejected
            assert (refused.seq, refused.client_ref, refused.reason) == (
                0,
                5,
                p.GatewayRejectReason.OVERLOADED,
            )
            client.cancel(order_id=12345)  # a cancel still gets in (the hard bound is 5)
            await wait_until_async("the cancel queued beside them", lambda: service.queued == 5, timeout=WAIT)
            client.cancel(order_id=12346)  # but not past it
            refused = await client.recv(WAIT)
            assert (refused.request, refused.order_id) == (int(RequestKind.CANCEL), 12346)
            assert refused.reason == p.GatewayRejectReason.OVERLOADED
            service.start()  # the queue drains: the admitted commands are answered
            answers = [await client.recv(WAIT) for _ in range(5)]
            assert [(type(f), f.client_ref) for f in answers[:4]] == [(p.Accepted, r) for r in (1, 2, 3, 4)]
            assert type(answers[4]) is p.Rejected and answers[4].seq > 0  # unknown order, journaled
            client.new_order(6, BTC, BUY, price=100, qty=1)  # and it admits again
            assert type(await client.recv(WAIT)) is p.Accepted
            assert service.overload_refusals == 2
        finally:
            await client.aclose()
            await stop_binary_server(server)
            await service.stop()
            node.close()
        assert journaled_clids(tmp_path) == ["1", "2", "3", "4", "6"]

    asyncio.run(asyncio.wait_for(main(), 60))


# -- a real `loom run`, overloaded through REST ------------------------------------------

KEYS = {f"overload-{name}-key-0123456789": name for name in ("alice", "bob", "carol", "dave")}


def loom_args(tmp_path, bound: int = 16):
    config = tmp_path / "loom.toml"
    accounts = "".join(f'[[accounts]]\nname = "{n}"\napi_key = "{k}"\n\n' for k, n in KEYS.items())
    config.write_text(f'max_queued_commands = {bound}\n\n[[instruments]]\nsymbol = "{BTC}"\n\n{accounts}')
    data_dir = tmp_path / "node"
    args = ["--config", str(config), "--data-dir", str(data_dir), "--http-port", "0"]
    return [*args, "--fix-port", "-1", "--binary-port", "-1"], data_dir


def loom_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}


def test_loom_run_sheds_a_rest_burst_with_503_overloaded_and_journals_only_what_it_acknowledged(tmp_path):
    import aiohttp
    from loomproc import loom_run

    args, data_dir = loom_args(tmp_path)

    async def post(session, url, key, clid):
        body = {"symbol": BTC, "side": "buy", "qty": 1, "price": 100, "client_order_id": clid}
        async with session.post(f"{url}/v1/orders", json=body, headers={"X-API-Key": key}) as resp:
            return clid, resp.status, resp.headers.get("Retry-After"), await resp.json()

    async def burst(url, round_no):
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            keys = list(KEYS)
            return await asyncio.gather(
                *(post(session, url, keys[i % 4], f"r{round_no}-{i}") for i in range(300))
            )

    accepted: list[str] = []
    overloaded: list[str] = []
    with loom_run(args, loom_env()) as url:
        for round_no in range(5):  # a burst overloads a bound of 16 at once; a few tries at most
            for clid, status, retry_after, body in asyncio.run(burst(url, round_no)):
                if status == 201:
                    accepted.append(clid)
                else:
                    assert status == 503, body
                    assert body["error"]["code"] == "OVERLOADED" and "overloaded" in body["error"]["message"]
                    assert retry_after is not None and int(retry_after) >= 1
                    overloaded.append(clid)
            if overloaded:
                break
        assert overloaded, "no burst was shed"
        assert accepted, "every order of the burst was refused"
        # The server stays up, ready, and accepts again once the queue has drained.
        with urllib.request.urlopen(f"{url}/readyz", timeout=WAIT) as resp:
            assert resp.status == 200
        clid, status, _, body = asyncio.run(_one(post, url, next(iter(KEYS)), "after"))
        assert status == 201, body
        accepted.append(clid)
        with urllib.request.urlopen(f"{url}/metrics", timeout=WAIT) as resp:
            text = resp.read().decode()
        counted = next(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith('loom_overload_refusals_total{protocol="rest"}')
        )
        assert counted == len(overloaded)
    journal = FileJournal(data_dir / "journal", read_only=True)
    try:
        journaled = [c.client_order_id for c in journal.read() if type(c) is NewOrder]
    finally:
        journal.close()
    assert sorted(journaled) == sorted(accepted)  # every 201, and none of the 503s
    assert not set(journaled) & set(overloaded)


async def _one(post, url, key, clid):
    import aiohttp

    async with aiohttp.ClientSession() as session:
        return await post(session, url, key, clid)


# -- the FIX gateway ----------------------------------------------------------------------


def test_fix_gateway_rejects_with_a_clear_text_when_overloaded(tmp_path):
    from test_fix_server import KEY, Peer

    from engine.core.order_store import OrderStore
    from engine.gateways.fix.server import start_fix_server, stop_fix_server
    from engine.gateways.fix.session import SessionConfig

    async def main():
        node = new_node(tmp_path)
        service = ExchangeService(node, max_queued_commands=2)  # not started: nothing drains yet
        orders, router = OrderStore(), ExecutionRouter()
        service.add_listener(orders.on_batch)
        service.add_listener(router.on_batch)
        server = await start_fix_server(
            service, router, orders, Accounts({KEY: "alice"}), "127.0.0.1", 0, tmp_path / "fix",
            config=SessionConfig(),
        )  # fmt: skip
        peer = await Peer.connect(server.sockets[0].getsockname()[1])
        try:
            await peer.logon()
            for i in range(2):  # another session's orders fill the queue
                service.enqueue([buy(f"q{i}", account="bob")], lambda results: None)
            await peer.send("D", [(11, "o1"), (55, BTC), (54, "1"), (38, 3), (40, "2"), (44, "100")])
            report = await peer.receive("8")
            assert (report[150], report[39], report[11]) == ("8", "8", "o1")  # rejected
            assert "overloaded" in report[58] and "retry" in report[58]
            assert service.overload_refusals == 1
            service.start()
            await peer.send("D", [(11, "o2"), (55, BTC), (54, "1"), (38, 3), (40, "2"), (44, "100")])
            report = await peer.receive("8")
            assert (report[150], report[11]) == ("0", "o2")  # admitted again once drained
        finally:
            peer.close()
            await stop_fix_server(server, timeout=2.0)
            await service.stop()
            node.close()
        assert journaled_clids(tmp_path) == ["q0", "q1", "o2"]

    asyncio.run(asyncio.wait_for(main(), 60))


def test_loom_run_answers_a_websocket_burst_with_overloaded_errors(tmp_path):
    import aiohttp
    from loomproc import loom_run

    args, data_dir = loom_args(tmp_path)
    key = next(iter(KEYS))

    async def burst(url):
        async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}/v1/ws") as ws:
            await ws.send_json({"op": "auth", "api_key": key})
            assert (await ws.receive_json(timeout=WAIT))["type"] == "authenticated"
            orders = [
                {"op": "order", "req_id": i, "symbol": BTC, "side": "buy", "qty": 1, "price": 100,
                 "client_order_id": f"w{i}"}
                for i in range(600)
            ]  # fmt: skip
            for o in orders:  # back to back: far more than 16 arrive within one batch's commit
                await ws.send_json(o)
            answers = {}
            while len(answers) < len(orders):
                msg = await ws.receive_json(timeout=WAIT)
                answers[msg["req_id"]] = msg
            return answers

    with loom_run(args, loom_env()) as url:
        answers = asyncio.run(burst(url))
    acked = {f"w{i}" for i, a in answers.items() if a["type"] == "ack"}
    shed = {f"w{i}" for i, a in answers.items() if a["type"] == "error"}
    assert acked and shed and len(acked) + len(shed) == 600
    for a in answers.values():
        if a["type"] == "error":
            assert a["code"] == "OVERLOADED" and a["retry_after_s"] >= 1, a
    journal = FileJournal(data_dir / "journal", read_only=True)
    try:
        assert {c.client_order_id for c in journal.read() if type(c) is NewOrder} == acked
    finally:
        journal.close()


def test_loom_run_sheds_a_fix_burst_on_one_session_with_overloaded_rejects(tmp_path):
    """One FIX session sending back to back used to be paused (the gateway awaited each
    read's batch) but never refused, so its orders waited in the socket buffers however long
    the backlog: the gateway now reads on while a batch commits and the node's overload rule
    refuses the excess at once, each with an ExecutionReport reject naming OVERLOADED."""
    from loomproc import loom_run_ports
    from test_fix_server import Peer

    args, data_dir = loom_args(tmp_path)
    args[args.index("--fix-port") + 1] = "0"
    key, account = next(iter(KEYS.items()))
    n = 2000

    async def burst(port):
        peer = await Peer.connect(port, comp_id="BURST1")
        try:
            await peer.send("A", [(98, 0), (108, 30), (553, account), (554, key)])
            await peer.receive("A")
            orders = [
                [(11, f"f{i}"), (55, BTC), (54, "1"), (38, 1), (40, "2"), (44, "100")] for i in range(n)
            ]
            peer.writer.write(b"".join(peer.encode("D", body) for body in orders))  # back to back
            await peer.writer.drain()
            answers = {}
            while len(answers) < n:
                report = await peer.receive("8")
                answers[report[11]] = report
            return answers
        finally:
            peer.close()

    with loom_run_ports(args, loom_env()) as ports:
        answers = asyncio.run(burst(ports["fix"]))
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/metrics", timeout=WAIT) as resp:
            text = resp.read().decode()
    acked = {clid for clid, r in answers.items() if r[150] == "0"}
    shed = {clid for clid, r in answers.items() if r[150] == "8"}
    assert acked and shed and len(acked) + len(shed) == n, (len(acked), len(shed))
    for clid in shed:
        r = answers[clid]
        assert r[39] == "8" and r[58].startswith("OVERLOADED: ") and "retry in 1 s" in r[58], r[58]
    counted = next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith('loom_overload_refusals_total{protocol="fix"}')
    )
    assert counted == len(shed)
    journal = FileJournal(data_dir / "journal", read_only=True)
    try:
        assert {c.client_order_id for c in journal.read() if type(c) is NewOrder} == acked
    finally:
        journal.close()
