"""A WebSocket session's orders of one read are one submission (engine/gateways/ws_batch.py),
against a real `loom run`: every order is answered in the order sent, a cancel sent behind
its order in the same write still finds it, and the node counts far fewer submissions
(`loom_order_to_ack_seconds_count{protocol="websocket"}`, one per submission) than orders.
Before: one submission per order, so the count equalled the orders (300 here)."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request

from test_overload import BTC, KEYS, WAIT, loom_args, loom_env
from wsframes import client_frame, server_frames, upgrade

ORDERS = 300


async def _one_write(port: int, key: str) -> list[dict]:
    """Upgrade, then ORDERS orders and a cancel of the first in one write; every answer."""
    reader, writer = await upgrade(port, key, WAIT)
    frames = []
    for i in range(ORDERS):
        order = {"op": "order", "req_id": i, "symbol": BTC, "side": "buy", "qty": 1, "price": 100 + i % 7}
        frames.append(client_frame(json.dumps(order | {"client_order_id": f"b{i}"}).encode()))
    cancel = {"op": "cancel", "req_id": "cancel", "client_order_id": "b0"}
    frames.append(client_frame(json.dumps(cancel).encode()))
    writer.write(b"".join(frames))
    buf, answers = bytearray(), []
    while len(answers) < ORDERS + 1:
        buf += await asyncio.wait_for(reader.read(65536), WAIT)
        got, used = server_frames(buf)
        del buf[:used]
        answers += [json.loads(payload) for opcode, payload in got if opcode == 1]
    writer.close()
    return answers


def _submissions(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=WAIT) as resp:
        text = resp.read().decode()
    m = re.search(r'^loom_order_to_ack_seconds_count\{protocol="websocket"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_a_writes_orders_are_submitted_together_answered_in_order_and_a_cancel_behind_them_finds_its_order(
    tmp_path,
):
    from loomproc import loom_run

    args, _data_dir = loom_args(tmp_path, bound=10_000)
    with loom_run(args, loom_env()) as url:
        port = int(url.rsplit(":", 1)[1])
        answers = asyncio.run(_one_write(port, next(iter(KEYS))))
        submissions = _submissions(url)
    assert [a["req_id"] for a in answers] == [*range(ORDERS), "cancel"]
    assert all(a["type"] == "ack" for a in answers), [a for a in answers if a["type"] != "ack"][:3]
    assert [e["type"] for e in answers[-1]["events"]] == ["cancelled"]
    assert answers[-1]["events"][0]["order_id"] == answers[0]["events"][0]["order_id"]
    # One per read of the socket (a 300-order write arrives in a few), plus the cancel's.
    assert 2 <= submissions <= ORDERS // 10, submissions
