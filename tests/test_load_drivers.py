"""The load generator's cheap FIX report reader (engine/load/fix_driver.py), the raw WebSocket
framing the tests use (tests/wsframes.py), and the figures `loom load` and `loom bench
overload` report on which of node and generator set the pace (node CPU, generator lateness).

The readers find only what an answer needs; these tests hold them to what the full decoders
(the project's FIX codec, msgspec, aiohttp's WebSocket reader) read from the same bytes."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import msgspec
import pytest
from wsframes import client_frame, server_frames

from engine.bench.overload_bench import format_overload, process_cpu_s, targets_met
from engine.gateways.fix.codec import FixParser, encode_message, utc_timestamp
from engine.gateways.ws_frames import json_frame
from engine.load.fix_driver import framed, report_fields

TS = utc_timestamp(1_700_000_000.0)


def _report(seq: int, clid: str, exec_type: str, text: str = "", order_id: str = "0") -> bytes:
    body: list[tuple[int, object]] = [(37, order_id), (11, clid), (17, f"E{seq}"), (150, exec_type)]
    body += [(39, exec_type), (55, "LOAD-USD"), (54, "1"), (151, 5), (14, 0), (6, 0)]
    if text:
        body.append((58, text))
    return encode_message("8", "LOOM", "LOAD0", seq, TS, body)


def test_fix_reports_are_read_by_byte_search_as_the_codec_reads_them():
    messages = [
        _report(2, "L7-0", "0", order_id="1234"),
        _report(3, "L7-1", "8", "OVERLOADED: the exchange is overloaded (1 commands queued)"),
        _report(4, "L7-2", "8", "DUPLICATE_CLIENT_ORDER_ID: taken"),
        _report(5, "L7-3", "F", order_id="99"),
        encode_message("A", "LOOM", "LOAD0", 1, TS, [(98, 0), (108, 30)]),
        encode_message("1", "LOOM", "LOAD0", 6, TS, [(112, "TEST-1")]),
    ]
    stream = b"".join(messages)
    parsed = _parse_all(stream)
    # Any cut of the stream into reads frames the same messages, none split or lost.
    for cut in (1, 7, 100, len(messages[0]), len(stream) - 3):
        buf = bytearray(stream[:cut])
        first, used = framed(buf)
        del buf[:used]
        buf += stream[cut:]
        rest, used_rest = framed(buf)
        assert first + rest == messages and used_rest == len(buf), cut
    for raw, msg in zip(messages, parsed, strict=True):
        fields = report_fields(raw)
        if msg.msg_type != "8":
            assert fields is None
            continue
        exec_type, clid, text, order_id = fields
        assert exec_type.decode() == msg.get(150)
        assert clid == msg.get(11)
        assert text.decode() == msg.get(58, "")
        assert order_id.decode() == msg.get(37)


def _parse_all(stream: bytes):
    parser = FixParser()
    parser.receive_data(stream)
    return list(parser.events())


def test_a_partial_fix_message_waits_for_its_trailer():
    raw = _report(2, "L7-0", "0")
    for cut in (len(raw) - 1, len(raw) - 8, 20):
        assert framed(bytearray(raw[:cut])) == ([], 0)


def test_client_frames_are_masked_and_read_back_by_aiohttps_reader():
    """aiohttp's own frame reader (the server's) unmasks what the generator writes."""
    from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader
    from aiohttp.base_protocol import BaseProtocol

    payloads = [b'{"op":"order","req_id":1}', b"x" * 125, b"y" * 126, b"z" * 70_000]

    async def read_back() -> list[bytes]:
        loop = asyncio.get_running_loop()
        queue = WebSocketDataQueue(BaseProtocol(loop), 2**24, loop=loop)
        reader = WebSocketReader(queue, 2**20, compress=False, decode_text=False)
        frames = [client_frame(p) for p in payloads]
        assert all(f[1] & 0x80 for f in frames)  # the mask bit: the node closes 1002 without it
        assert all(p not in f for p, f in zip(payloads, frames, strict=True) if len(p) > 8)
        reader.feed_data(b"".join(frames))
        return [bytes((await queue.read()).data) for _ in payloads]

    assert asyncio.run(read_back()) == payloads


def test_server_frames_split_at_any_cut_as_written():
    messages = [
        {"type": "ack", "req_id": i, "events": [{"order_id": i, "pad": "p" * (60 * i)}]} for i in range(5)
    ]
    stream = b"".join(json_frame(m) for m in messages)  # 126+ and <126 byte payloads
    for cut in range(0, len(stream), 37):
        buf = bytearray(stream[:cut])
        first, used = server_frames(buf)
        del buf[:used]
        buf += stream[cut:]
        rest, used_rest = server_frames(buf)
        assert used_rest == len(buf)
        assert [msgspec.json.decode(p) for op, p in first + rest] == messages
        assert {op for op, _ in first + rest} == {1}


def test_process_cpu_counts_this_process_busy():
    before = process_cpu_s(os.getpid())
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    assert process_cpu_s(os.getpid()) - before >= 0.2


def test_the_bench_text_names_the_nodes_cpu_and_the_generators_lateness():
    r = {
        "protocol": "ws",
        "capacity": 1000,
        "goodput_2x": 950,
        "goodput_4x": 900,
        "acked_p99_ms_2x": 10.0,
        "acked_p99_ms_4x": 20.0,
        "refused_2x": 0,
        "refused_4x": 5,
        "held_2x": 0,
        "held_4x": 7,
        "node_busy_2x": 0.97,
        "node_busy_4x": 1.01,
        "client_late_p99_ms_2x": 0.41,
        "client_late_p99_ms_4x": 12.5,
        "client_errors": 0,
        "client_budget_ms": 0,
        "client_max_in_flight": 0,
        "generator_nice": 0,
        "load_average": 1.0,
    }
    r["targets_met"] = targets_met(r)
    text = format_overload(r)
    assert "node CPU (cores) 2C 0.97, 4C 1.01; generator sent late by p99 0.41 / 12.5 ms" in text


@pytest.mark.parametrize("protocol", ["ws", "fix"])
def test_loom_load_reports_the_generators_cpu_and_lateness(protocol):
    from engine.load.cli import _driver
    from engine.load.runner import LoadRun, run_open_loop
    from engine.load.spawn import LOAD_ACCOUNTS, spawned_exchange

    with spawned_exchange() as info:
        run = LoadRun.new()
        driver = _driver(protocol, info["host"], info, next(iter(LOAD_ACCOUNTS)), 2, run)
        report = asyncio.run(run_open_loop(driver, protocol, 300, 1.0, run, 20.0))
    assert report["acked"] == 300 and report["errors"] == 0, report
    assert report["client_cpu_s"] > 0 and report["client_wall_s"] >= 0.9, report
    assert 0 <= report["client_late_p99_ms"] <= report["client_late_max_ms"], report


class _SlowDriver:
    """A generator whose every send takes 20 ms of its loop (as a saturated one's do) and
    whose orders are answered at once."""

    hold = False

    async def connect(self, on_ack) -> None:
        self.on_ack = on_ack

    def send(self, orders) -> int:
        time.sleep(0.02)
        for o in orders:
            self.on_ack(o.index, True)
        return 0

    async def close(self) -> None:
        pass


def test_a_generator_that_cannot_keep_up_reports_its_sends_late():
    from engine.load.runner import LoadRun, run_open_loop

    report = asyncio.run(run_open_loop(_SlowDriver(), "ws", 1000, 0.5, LoadRun.new(), 5.0))
    assert report["acked"] == 500, report
    assert report["client_late_p99_ms"] >= 15, report  # each send waited for the one before


class _StoreWatchingDriver:
    """Answers every even order at once and, at each send, notes the generator's answer
    store (its identity and allocated size): what the suites keep to check every answer
    against the journal."""

    hold = False

    async def connect(self, on_ack) -> None:
        self.on_ack, self.stats = on_ack, on_ack.__self__
        self.stores: set[tuple[int, int]] = set()

    def send(self, orders) -> int:
        for o in orders:
            if o.index % 2 == 0:
                self.on_ack(o.index, True, order_id=o.index + 1)
            self.stores.add((id(self.stats.answers), sys.getsizeof(self.stats.answers)))
        return 0

    async def close(self) -> None:
        pass


def test_the_kept_answers_are_stored_in_room_made_before_the_first_send():
    """Issue 16's last window (session 10): the answers the suites keep grew in a dict,
    rebuilt whole on the generator's event loop each time it doubled (81 ms at 2.8M answers,
    156 ms at 5.6M): a client stall that every answer then due waited out, and the soak's
    last window's ack p99 (43.9 ms against 10-15 in the other windows at 30,000/s). The
    store is now made for the run's every order before the first send and never regrown;
    an unanswered order's entry stays None (the history's "never answered")."""
    from engine.load.runner import LoadRun, LoadStats, run_open_loop

    rate, seconds = 4_000, 0.5
    stats = LoadStats("ws", rate, seconds)
    stats.keep_answers = True
    driver = _StoreWatchingDriver()
    report = asyncio.run(run_open_loop(driver, "ws", rate, seconds, LoadRun.new(), 0.05, stats=stats))
    assert report["sent"] == 2_000 and report["acked"] == 1_000, report
    assert len(driver.stores) == 1, sorted(driver.stores)  # one store, one size, all run long
    assert stats.answers == [(True, False, None, i + 1) if i % 2 == 0 else None for i in range(2_000)]
    stats.on_ack(2_000, True)  # not one of this run's orders: not stored
    assert len(stats.answers) == 2_000
