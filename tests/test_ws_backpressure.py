"""A WebSocket session at its in-flight bound stops reading its socket at once (engine/gateways/
http_shed.py HeldSocket), so what its client sends next waits in the kernel's small buffers and
then in the client (TCP backpressure), and every order is still answered once the bound lifts.

Before: the session only stopped taking messages from aiohttp's queue; aiohttp read the socket
on until its queue passed its own bound (512 KiB counted, ~1,800 orders at 4C), and each of those orders
waited behind the bound's, unseen by any rule: part of the WebSocket acked p99 of 200-260 ms at
4C (BENCHMARKS.md "Session 8: WebSocket p99 at 4C").

A real node in-process (start_exchange) whose journal's fdatasync is held (tests/test_overload.py
_SlowDisk), so nothing is answered while the client floods; a raw client writes the orders."""

from __future__ import annotations

import asyncio
import json

from test_overload import WAIT, _held_write, _SlowDisk
from waiting import wait_until_async
from wsframes import client_frame, server_frames, upgrade

from engine.app import start_exchange
from engine.config import Config
from engine.core.domain import Instrument
from engine.gateways.http_context import SESSIONS
from engine.journal import segments as segments_mod
from engine.load.backpressure import limit_send_buffer
from engine.overload import WS_MAX_IN_FLIGHT

KEY = "alice-key-0123456789abcdef"
ORDERS = 4 * WS_MAX_IN_FLIGHT  # far more than the bound, the kernel's and aiohttp's buffers hold


async def _flood_while_the_disk_is_held(data_dir, disk: _SlowDisk) -> dict:
    config = Config(
        data_dir=data_dir,
        http_port=0,
        fix_port=-1,
        binary_port=-1,
        rate_limit=0,
        instruments=[Instrument("BTC-USD", tick_size=1, lot_size=1, min_qty=1, max_qty=1000)],
        api_keys={KEY: "alice"},
        admin_key="admin-key-0123456789abcdef",
    )
    running = await start_exchange(config)
    seen: dict = {}
    try:
        held = await _held_write(running.service, disk, "held")  # nothing commits until released
        port = running.ports["http"]
        reader, writer = await upgrade(port, KEY, WAIT)
        (session,) = running.http_runner.app[SESSIONS]
        limit_send_buffer(writer.transport)  # as `loom load` does: the kernel keeps 128 KiB, not megabytes
        frames = []
        for i in range(ORDERS):
            order = {"op": "order", "req_id": i, "symbol": "BTC-USD", "side": "buy", "price": 100, "qty": 1}
            frames.append(client_frame(json.dumps(order | {"client_order_id": f"o{i}"}).encode()))
        writer.write(b"".join(frames))  # what the kernel does not take waits in this transport
        await wait_until_async(
            "the session at its bound and the client pushed back",
            lambda: session.flight.paused and writer.transport.get_write_buffer_size() > 0,
            timeout=WAIT,
        )
        queue = session.ws._reader  # aiohttp's message queue (no public view of its size)
        seen["paused_at"] = session.flight.count
        seen["queued_bytes"], seen["queue_limit"] = queue._size, queue._limit
        seen["socket_reading"] = session.transport.is_reading()
        disk.release()
        await held
        answers: dict = {}
        buf = bytearray()
        while len(answers) < ORDERS:
            buf += await asyncio.wait_for(reader.read(65536), WAIT)
            got, used = server_frames(buf)
            del buf[:used]
            for _opcode, payload in got:
                answer = json.loads(payload)
                answers.setdefault(answer["req_id"], []).append(answer["type"])
        seen["answers"] = answers
        writer.close()
    finally:
        await running.stop()
    return seen


def test_a_session_at_its_bound_stops_reading_its_socket_and_answers_every_order(tmp_path, monkeypatch):
    disk = _SlowDisk()
    monkeypatch.setattr(segments_mod, "os", disk)
    seen = asyncio.run(asyncio.wait_for(_flood_while_the_disk_is_held(tmp_path / "data", disk), 60))
    assert seen["paused_at"] >= WS_MAX_IN_FLIGHT
    assert not seen["socket_reading"]
    # Held by the session, not by aiohttp's queue filling up: at most the rest of the read that
    # reached the bound is queued (before: past aiohttp's limit, the only thing that paused it).
    assert seen["queued_bytes"] < seen["queue_limit"], seen
    # Nothing dropped: every order answered exactly once, in full (acked: no risk limit here).
    assert sorted(seen["answers"]) == list(range(ORDERS))
    assert all(kinds == ["ack"] for kinds in seen["answers"].values()), [
        (r, k) for r, k in seen["answers"].items() if k != ["ack"]
    ][:3]
