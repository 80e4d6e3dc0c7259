"""The cheap WebSocket refusal (engine/gateways/ws_shed.py): while the commit queue refuses
new orders, an order or amend is refused from its op and req_id alone, with a pre-encoded
OVERLOADED frame. Unit cases for the head decode and the frame; one real `loom run` flooded
over one session: every message answered once, matched by its req_id whatever its JSON
type, refusals in the ordinary error format, only the acknowledged orders journaled."""

from __future__ import annotations

import asyncio
import json

import msgspec
from test_overload import BTC, KEYS, WAIT, loom_args, loom_env

from engine.core.commands import NewOrder
from engine.gateways.ws_shed import OverloadedFrames, shed_req_id
from engine.journal.segments import FileJournal

ERROR_KEYS = ["type", "req_id", "code", "message", "retry_after_s"]  # the ordinary path's order


def test_only_orders_and_amends_are_shed_and_their_req_id_is_kept_as_written():
    assert shed_req_id('{"op":"order","req_id":7,"symbol":"X"}') == b"7"
    assert shed_req_id(b'{"symbol":"X","req_id":"a\\"b","op":"amend"}') == b'"a\\"b"'
    assert shed_req_id('{"op":"order","nested":{"req_id":1}}') == b"null"  # no req_id of its own
    for other in ('{"op":"cancel","req_id":1}', '{"op":"ping"}', '{"req_id":1}', "[1]", '{"op":1}', "{"):
        assert shed_req_id(other) is None, other


class _Queue:
    """What OverloadedFrames reads of the service: its queue count and refusal text."""

    def __init__(self) -> None:
        self.queued = 20
        self.texts = 0

    def overload_text(self) -> str:
        self.texts += 1
        return f"the exchange is overloaded ({self.queued} commands queued)"


def test_the_frame_is_the_ordinary_error_with_the_req_id_spliced_in():
    queue, frames = _Queue(), OverloadedFrames()
    frame = frames.frame(b'"r-1"', queue)
    # One final text frame; this payload (over 125 bytes) has the 16-bit length.
    assert frame[:2] == bytes((0x81, 126)) and int.from_bytes(frame[2:4], "big") == len(frame) - 4
    pairs = json.loads(frame[4:], object_pairs_hook=list)
    assert [k for k, _ in pairs] == ERROR_KEYS
    assert dict(pairs) == {
        "type": "error",
        "req_id": "r-1",
        "code": "OVERLOADED",
        "message": "the exchange is overloaded (20 commands queued)",
        "retry_after_s": 1,
    }
    frames.frame(b"2", queue)
    assert queue.texts == 1  # the text is encoded again only when the queue's count changes
    queue.queued = 21
    assert b"(21 commands" in frames.frame(b"3", queue) and queue.texts == 2


def test_loom_run_refuses_a_websocket_flood_cheaply_and_answers_every_req_id(tmp_path):
    import aiohttp
    from loomproc import loom_run

    args, data_dir = loom_args(tmp_path)
    key = next(iter(KEYS))
    # req_ids of every JSON type a client may use; each names its order's client_order_id.
    req_ids = [i if i % 3 else f'w"{i}\u00e9' for i in range(1, 801)]

    def order(i: int, req_id) -> str:
        body = {"op": "order", "req_id": req_id, "symbol": BTC, "side": "buy", "qty": 1, "price": 100}
        body["client_order_id"] = f"w{i}"
        if i % 10 == 0:
            body["bogus"] = 1  # invalid: INVALID_REQUEST when decoded, OVERLOADED when shed
        return json.dumps(body)

    async def flood(url):
        async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}/v1/ws") as ws:
            await ws.send_json({"op": "auth", "api_key": key})
            assert (await ws.receive_json(timeout=WAIT))["type"] == "authenticated"
            for i, req_id in enumerate(req_ids, 1):  # back to back: far more than the bound of 16
                await ws.send_str(order(i, req_id))
            await ws.send_str('{"op":"ping","req_id":"last"}')
            answers: dict = {}
            while "last" not in answers or len(answers) < len(req_ids) + 1:
                msg = await ws.receive(timeout=WAIT)
                pairs = json.loads(msg.data, object_pairs_hook=list)
                answer = dict(pairs)
                assert answer["req_id"] not in answers, answer  # answered once
                answers[answer["req_id"]] = (answer, [k for k, _ in pairs])
            return answers

    with loom_run(args, loom_env()) as url:
        answers = asyncio.run(flood(url))
    assert answers.pop("last")[0]["type"] == "pong"
    assert set(answers) == set(req_ids)
    acked, shed, invalid = set(), set(), set()
    for i, req_id in enumerate(req_ids, 1):
        answer, keys = answers[req_id]
        if answer["type"] == "ack":
            assert i % 10, answer
            acked.add(f"w{i}")
        elif answer["code"] == "OVERLOADED":
            assert keys == ERROR_KEYS and answer["retry_after_s"] == 1, answer
            assert answer["message"].startswith("the exchange is overloaded ("), answer
            shed.add(i)
        else:
            assert answer["code"] == "INVALID_REQUEST" and i % 10 == 0, answer
            invalid.add(i)
    assert acked and shed
    # Shed before the full decode: some invalid orders were refused as overloaded (decoded,
    # as before this path, every one of them was answered INVALID_REQUEST).
    assert any(i % 10 == 0 for i in shed)
    journal = FileJournal(data_dir / "journal", read_only=True)
    try:
        assert {c.client_order_id for c in journal.read() if type(c) is NewOrder} == acked
    finally:
        journal.close()


def test_the_head_decoder_ignores_what_the_ordinary_path_validates():
    # A message too deep for msgspec never reaches it: WsSession.handle checks depth first.
    assert shed_req_id(msgspec.json.encode({"op": "order", "req_id": [1, {"a": None}], "x": "y"})) == (
        b'[1,{"a":null}]'
    )
