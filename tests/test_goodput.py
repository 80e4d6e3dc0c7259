"""Shedding under overload (engine.overload): a client flooding ONE connection of any protocol
gets OVERLOADED answers or backpressure, never a silent drop, and the node stays responsive;
pipelined REST is shed; the binary gateway refuses orders without decoding them.

The floods use the load generator's own drivers against a real `loom run` subprocess, with a
thread polling /healthz meanwhile. No fixed sleeps: the drivers wait for every answer."""

from __future__ import annotations

import asyncio
import threading
import urllib.request

import pytest
from waiting import wait_until_async

from engine.auth import Accounts
from engine.core.commands import NewOrder
from engine.core.domain import Instrument, OrderType, Side
from engine.exchange import ExchangeNode, NodeConfig
from engine.gateways.binary import protocol as p
from engine.gateways.binary.client import BinaryClient
from engine.gateways.binary.server import BinarySession, start_binary_server, stop_binary_server
from engine.load.cli import _driver
from engine.load.runner import LoadRun, run_open_loop
from engine.load.spawn import LOAD_ACCOUNTS, spawned_exchange
from engine.overload import InFlight, orders_refused
from engine.routing import ExecutionRouter
from engine.service import ExchangeService

BTC = "BTC-USD"
KEY = "goodput-alice-key-0123456789"
WAIT = 10.0


# -- the rule ----------------------------------------------------------------------------------


def test_the_queue_refuses_new_orders_past_its_count_or_its_age():
    assert not orders_refused(0, 50_000, 10, waited=9.0, max_wait=0.05)  # empty: always admitted
    assert orders_refused(8, 3, 10)
    assert not orders_refused(8, 2, 10)
    assert orders_refused(1, 1, 10, waited=0.06, max_wait=0.05)  # the oldest waited too long
    assert not orders_refused(1, 1, 10, waited=0.04, max_wait=0.05)
    assert not orders_refused(1, 1, 10, waited=9.0, max_wait=0)  # 0: no time bound


def test_in_flight_stops_reading_at_the_bound_and_resumes_at_half():
    flight = InFlight(4)
    assert [flight.add() for _ in range(4)] == [False, False, False, True]
    assert flight.paused and flight.pauses == 1
    assert not flight.add()  # already paused: said once
    assert [flight.done() for _ in range(3)] == [False, False, True]  # 5 -> 2 (= low)
    assert not flight.paused and flight.count == 2
    with pytest.raises(ValueError):
        InFlight(0)


# -- binary: refused before decoding -------------------------------------------------------------


def test_binary_refuses_orders_before_building_them_when_the_queue_is_full(tmp_path, monkeypatch):
    built = []
    original = BinarySession._b_new_order

    def counting(self, *fields):
        built.append(fields[0])
        return original(self, *fields)

    monkeypatch.setattr(BinarySession, "_b_new_order", counting)

    async def main():
        node = ExchangeNode(
            NodeConfig(tmp_path / "data", (Instrument(BTC),), snapshot_every_commands=0, snapshot_every_s=0)
        )
        service = ExchangeService(node, max_queued_commands=4)  # not started: nothing drains yet
        router = ExecutionRouter()
        service.add_listener(router.on_batch)
        server = await start_binary_server(service, router, Accounts({KEY: "alice"}), "127.0.0.1", 0, rate=0)
        client = await BinaryClient.connect("127.0.0.1", server.sockets[0].getsockname()[1], KEY)
        try:
            for i in range(4):  # another session's orders fill the queue to its bound
                service.enqueue(
                    [NewOrder("bob", f"q{i}", BTC, int(Side.BUY), int(OrderType.LIMIT), 100, 1)], print
                )
            refs = range(1, 501)
            client.send_many(p.new_order_frame(r, BTC, Side.BUY, 100, 1) for r in refs)
            client.cancel(order_id=999)  # a cancel in the same flood still gets in
            answers = [await client.recv(WAIT) for _ in refs]
            assert {(type(a), a.reason, a.seq) for a in answers} == {
                (p.Rejected, int(p.GatewayRejectReason.OVERLOADED), 0)
            }
            assert sorted(a.client_ref for a in answers) == list(refs)  # each order answered
            assert built == []  # no NewOrder was built for any refused frame
            await wait_until_async("the cancel to be queued", lambda: service.queued == 5, timeout=WAIT)
            assert service.overload_refusals == 500
            service.start()  # drained: orders are decoded and admitted again
            client.new_order(777, BTC, Side.BUY, price=100, qty=1)
            frame = await client.recv(WAIT)
            while type(frame) is not p.Accepted:
                frame = await client.recv(WAIT)
            assert frame.client_ref == 777 and built == [777]
        finally:
            await client.aclose()
            await stop_binary_server(server)
            await service.stop()
            node.close()

    asyncio.run(asyncio.wait_for(main(), 60))


# -- one connection flooded, on every protocol, against a real node -------------------------------


class HealthPoller(threading.Thread):
    """Polls /healthz until stopped: every answer must be 200 within a few seconds."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop, self.answers, self.failures = url, threading.Event(), 0, []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:
                    self.answers += resp.status == 200
            except OSError as exc:
                self.failures.append(repr(exc))
            self.stop.wait(0.05)


@pytest.fixture(scope="module")
def node():
    with spawned_exchange() as info:
        yield info


# (protocol, offered orders/s for 1 s on one connection): several times what one connection
# of each gets through on this machine.
FLOODS = [("binary", 150_000), ("ws", 40_000), ("rest", 8_000), ("fix", 8_000)]


@pytest.mark.parametrize(("protocol", "rate"), FLOODS, ids=[f[0] for f in FLOODS])
def test_a_flooded_connection_gets_every_order_answered_and_the_node_stays_responsive(node, protocol, rate):
    host = node["host"]
    poller = HealthPoller(f"http://{host}:{node['http']}/healthz")
    poller.start()
    run = LoadRun.new()
    driver = _driver(protocol, host, node, next(iter(LOAD_ACCOUNTS)), 1, run)
    try:
        report = asyncio.run(run_open_loop(driver, protocol, rate, 1.0, run, 30.0))
    finally:
        poller.stop.set()
        poller.join()
    answered = report["acked"] + report["rejected"] + report["overloaded"]
    assert report["errors"] == 0 and answered == report["sent"] == rate, report
    assert report["acked"] > 0, report
    assert poller.answers > 0 and not poller.failures, poller.failures
    if protocol == "rest":  # one connection pipelining: the excess is refused, not queued
        assert report["overloaded"] > 0, report


# -- the load generator's own latency budget (loom load --hold --max-in-flight) ------------------


def test_room_holds_everything_while_pushed_back_and_keeps_in_flight_within_the_bound():
    from engine.load.backpressure import room

    class Transport:
        def __init__(self, unsent: int) -> None:
            self.unsent = unsent

        def get_write_buffer_size(self) -> int:
            return self.unsent

    free, full = Transport(0), Transport(1)
    assert room(False, full, 10**6, 4, 50) == 50  # no hold: everything is sent
    assert room(True, full, 0, 0, 50) == 0  # pushed back: nothing
    assert room(True, free, 0, 0, 50) == 50  # no bound
    assert room(True, free, 3, 8, 50) == 5  # up to the bound
    assert room(True, free, 9, 8, 50) == 0  # past it (answers still to come): nothing, never negative
    assert room(True, free, 0, 8, 2) == 2


def test_the_bench_budget_is_capacity_times_budget_over_the_connections():
    from engine.bench.overload_bench import in_flight_per_connection

    assert in_flight_per_connection("rest", 5_000, 100) == 16  # 500 over 32 connections
    assert in_flight_per_connection("binary", 70_000, 100) == 7_000
    assert in_flight_per_connection("fix", 1, 100) == 1  # never 0: 0 means no bound
    assert in_flight_per_connection("ws", 16_000, 0) == 0


def _in_flight(driver) -> list[int]:
    """Orders each of a driver's connections has sent and not yet had answered."""
    if hasattr(driver, "in_flight"):  # WebSocket
        return list(driver.in_flight)
    if hasattr(driver, "pending"):  # binary
        return [len(p) for p in driver.pending]
    return [len(getattr(c, "pending", getattr(c, "inflight", ()))) for c in driver.conns]


@pytest.mark.parametrize(("protocol", "rate"), FLOODS, ids=[f[0] for f in FLOODS])
def test_a_client_with_an_in_flight_bound_never_exceeds_it_and_holds_the_rest(node, protocol, rate):
    bound = 8
    run = LoadRun.new()
    driver = _driver(protocol, node["host"], node, next(iter(LOAD_ACCOUNTS)), 2, run, True, bound)
    seen: list[int] = []
    send = driver.send

    def watched(orders):
        held = send(orders)
        seen.extend(_in_flight(driver))
        return held

    driver.send = watched
    report = asyncio.run(run_open_loop(driver, protocol, rate, 1.0, run, 30.0))
    assert seen and max(seen) <= bound, max(seen)
    assert report["held"] > 0, report  # offered far beyond what 2 x 8 in flight can carry
    answered = report["acked"] + report["rejected"] + report["overloaded"]
    assert report["errors"] == 0 and answered + report["held"] == report["sent"] == rate, report
    assert report["acked"] > 0, report
    assert _in_flight(driver) == [0, 0]  # every order sent was answered, once


def test_loom_load_refuses_an_in_flight_bound_without_hold():
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "load",
            "--protocol",
            "binary",
            "--port",
            "1",
            "--max-in-flight",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "--max-in-flight" in proc.stderr and "--hold" in proc.stderr, proc.stderr


def test_the_capacity_search_halves_below_a_failed_start_instead_of_reporting_0():
    from engine.bench.overload_bench import find_capacity

    def report(rate: float, ok: bool) -> dict:
        p99_us = 10_000 if ok else 900_000
        return dict(
            sent=int(rate),
            overloaded=0,
            held=0,
            errors=0,
            p99_us=p99_us,
            offered_rate=rate,
            achieved_rate=rate,
        )

    tried: list[float] = []

    def busy_machine(rate: float) -> dict:  # sustains 700/s, far below the start
        tried.append(rate)
        return report(rate, rate <= 700)

    capacity, steps = find_capacity(busy_machine, 10_000, 640_000, lambda line: None)
    assert capacity == 625 and tried[:5] == [10_000, 5_000, 2_500, 1_250, 625], tried
    assert len(steps) == len(tried) == 7  # then two bisections between 625 and 1,250
    capacity, _ = find_capacity(lambda rate: report(rate, False), 10_000, 640_000, lambda line: None)
    assert capacity == 0  # nothing passes down to the floor (start / 32 and two halvings below)
