"""The runtime signals of issue 12, each moved by its cause against a real `loom run`: a
paused process shows in the event-loop lag, a FIX logon in loom_fix_sessions, a WebSocket
book subscriber in loom_md_subscribers and the fan-out lag; loom_build_info names the
checkout. In-process, with the real components: GC pauses by generation, the commit
queue's oldest age, slow WebSocket consumers dropped and counted."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import time
import urllib.request

import aiohttp
import pytest
from loomproc import REPO, loom_run_process
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from test_fix_server import Peer
from test_http_gateway import BTC, KEY, LiveExchange
from waiting import wait_until

from engine.config import DEMO_KEYS
from engine.core.commands import NewOrder
from engine.core.domain import Instrument, OrderType, Side
from engine.exchange import ExchangeNode, NodeConfig
from engine.service import ExchangeService
from telemetry.collectors import ExchangeCollector
from telemetry.runtime import GcPauses

ALICE = next(key for key, name in DEMO_KEYS.items() if name == "alice")


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, ((label, value), ...)): value} of a Prometheus text page."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(base: str) -> dict[tuple, float]:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        return samples(resp.read().decode())


def wait_for(base: str, check, what: str, timeout: float = 15.0) -> dict[tuple, float]:
    """Scrape until `check(samples)` holds, and return those samples."""

    def matching() -> dict[tuple, float] | None:
        got = scrape(base)
        return got if check(got) else None

    return wait_until(what, matching, timeout=timeout, interval=0.05)


def slow_lags(got: dict, le: str = "0.25") -> float:
    """Probes of the main loop that ran more than `le` seconds late."""
    loop = ("loop", "main")
    total = got[("loom_event_loop_lag_seconds_bucket", (("le", "+Inf"), loop))]
    return total - got[("loom_event_loop_lag_seconds_bucket", (("le", le), loop))]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    data = tmp_path_factory.mktemp("signals") / "data"
    args = ["--demo", "--rate", "500", "--data-dir", str(data), "--http-port", "0", "--fix-port", "0"]
    args += ["--binary-port", "-1"]
    with loom_run_process(args, dict(os.environ)) as (proc, ports):
        yield f"http://127.0.0.1:{ports['http']}", ports, proc.pid


def test_build_info_names_the_version_and_the_checkouts_commit(node):
    base, _ports, _pid = node
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    info = [labels for (name, labels), v in scrape(base).items() if name == "loom_build_info" and v == 1]
    assert len(info) == 1, info
    labels = dict(info[0])
    assert labels["version"] == "0.1.0"
    assert labels["revision"].removesuffix("+dirty") == head


def test_a_paused_process_shows_in_the_event_loop_lag(node):
    base, _ports, pid = node
    probes = ("loom_event_loop_lag_seconds_count", (("loop", "main"),))
    before = wait_for(base, lambda got: got[probes] > 0, "the lag probe running")
    os.kill(pid, signal.SIGSTOP)  # as the chaos drill's pause: the loop runs nothing meanwhile
    try:
        time.sleep(0.4)
    finally:
        os.kill(pid, signal.SIGCONT)
    after = wait_for(base, lambda got: slow_lags(got) > slow_lags(before), "a lag past 0.25 s")
    assert slow_lags(after) - slow_lags(before) == 1  # one probe was late, by the pause
    late = after[("loom_event_loop_lag_seconds_sum", (("loop", "main"),))]
    assert late - before[("loom_event_loop_lag_seconds_sum", (("loop", "main"),))] >= 0.25


def test_gc_pauses_under_the_demo_flow(node):
    base, _ports, _pid = node
    gen0 = ("loom_gc_pause_seconds_count", (("generation", "0"),))
    first = scrape(base)[gen0]
    wait_for(base, lambda got: got[gen0] > first, "a generation-0 collection")


def test_a_fix_logon_moves_the_fix_sessions_gauge(node):
    base, ports, _pid = node

    def state(name: str):
        key = ("loom_fix_sessions", (("state", name),))
        return lambda n: lambda got: got.get(key) == n

    awaiting, logged_on = state("awaiting_logon"), state("logged_on")
    assert logged_on(0)(scrape(base))

    async def session():
        peer = await Peer.connect(ports["fix"], "SIGNALS1")
        try:
            await asyncio.to_thread(wait_for, base, awaiting(1), "a connection awaiting its Logon")
            await peer.send("A", [(98, 0), (108, 30), (553, "alice"), (554, ALICE)])
            assert (await peer.receive("A")).msg_type == "A"
            got = await asyncio.to_thread(wait_for, base, logged_on(1), "a logged-on FIX session")
            assert awaiting(0)(got)
        finally:
            peer.close()

    asyncio.run(session())
    wait_for(base, logged_on(0), "the session gone once disconnected")


def test_a_websocket_book_subscriber_and_its_fan_out_lag(node):
    base, _ports, _pid = node
    book = ("loom_md_subscribers", (("channel", "book"),))
    lag = ("loom_md_fanout_lag_seconds_count", ())
    before = scrape(base)
    assert before[book] == 0

    async def subscriber():
        async with aiohttp.ClientSession() as http, http.ws_connect(base + "/v1/ws") as ws:
            await ws.send_json({"op": "subscribe", "req_id": 1, "channel": "book", "symbol": BTC})
            got = await asyncio.to_thread(wait_for, base, lambda g: g[book] == 1, "one book subscriber")
            assert got[("loom_md_subscribers", (("channel", "trades"),))] == 0
            updates = 0
            while updates < 3:  # the demo flow moves the book: updates are pushed
                msg = json.loads((await ws.receive(timeout=15)).data)
                updates += msg["type"] == "l2update"
            return await asyncio.to_thread(scrape, base)

    during = asyncio.run(subscriber())
    assert during[lag] - before[lag] >= 1
    # Pushed within a second of being durable, on an idle loopback.
    assert during[("loom_md_fanout_lag_seconds_bucket", (("le", "1.0"),))] == during[lag]
    wait_for(base, lambda got: got[book] == 0, "no subscriber once the session ended")


# -- in-process: the real components, driven where a subprocess cannot be ------------------------


def test_gc_collect_is_timed_by_generation():
    pauses = GcPauses().install()
    registry = CollectorRegistry()
    registry.register(pauses)
    try:
        count = ("loom_gc_pause_seconds_count", (("generation", "2"),))
        total = ("loom_gc_pause_seconds_sum", (("generation", "2"),))
        before = samples(_text(registry))
        gc.collect()
        gc.collect(0)
        after = samples(_text(registry))
        assert after[count] == before[count] + 1
        assert after[total] > before[total]
        gen0 = ("loom_gc_pause_seconds_count", (("generation", "0"),))
        assert after[gen0] == before[gen0] + 1
        assert after[("loom_gc_pause_seconds_bucket", (("generation", "2"), ("le", "+Inf")))] == after[count]
    finally:
        pauses.remove()
    assert pauses not in gc.callbacks


def _text(registry: CollectorRegistry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


def test_commit_queue_oldest_age_follows_the_oldest_waiting_submission(tmp_path):
    async def main():
        node = ExchangeNode(
            NodeConfig(tmp_path / "n", (Instrument(BTC),), snapshot_every_commands=0, snapshot_every_s=0)
        )
        # Queued submissions older than the shedding age are refused: allow these to wait.
        service = ExchangeService(node, max_queue_delay_s=5.0)
        registry = CollectorRegistry()
        registry.register(ExchangeCollector(service, {}))
        age = ("loom_commit_queue_oldest_age_seconds", ())
        try:
            assert samples(_text(registry))[age] == 0.0
            answers = []

            def order(cid: str) -> NewOrder:
                return NewOrder("alice", cid, BTC, Side.BUY, OrderType.LIMIT, 100, 10)

            service.enqueue([order("q1")], answers.append)  # the commit loop is not running yet
            await asyncio.sleep(0.2)
            service.enqueue([order("q2")], answers.append)
            assert samples(_text(registry))[age] >= 0.2  # the first one's age, not the newest's
            service.start()
            while len(answers) < 2:
                await asyncio.sleep(0.01)
            assert samples(_text(registry))[age] == 0.0
        finally:
            await service.stop()
            node.close()

    asyncio.run(main())


def test_a_websocket_client_that_stops_reading_is_dropped_and_counted(tmp_path):
    # Small bounds ([market_data]) so the client is "too slow" after kilobytes rather than megabytes.
    server = LiveExchange(tmp_path / "ws", md_max_queued=64, md_send_buffer_bytes=1)
    try:
        registry = server.running.service.observer.metrics.registry

        def drops() -> float:
            return registry.get_sample_value("loom_md_slow_consumer_drops_total")

        async def flood() -> bool:
            """Pings, never reading the pongs, until the server closes the session."""
            async with server.http.ws_connect("/v1/ws", headers={"X-API-Key": KEY["alice"]}) as ws:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    try:
                        for i in range(500):
                            await ws.send_str(json.dumps({"op": "ping", "req_id": i}))
                    except (ConnectionError, aiohttp.ClientError):
                        return True
                    if drops():
                        return True
                    await asyncio.sleep(0)
                return False

        assert server.call(flood())
        assert drops() == 1
        assert scrape(server.base_url)[("loom_md_slow_consumer_drops_total", ())] == 1
    finally:
        server.close()
