"""CPU per WebSocket order refused for overload, the gateway's share: the ordinary path (the
whole message decoded, an OrderRequest and a NewOrder built, Overloaded raised with its text
and caught, an error dict encoded into a frame) against the cheap one (engine/gateways/
ws_shed.py: op and req_id decoded, a pre-encoded frame with the req_id spliced in). The
queue's text comes from the same formatter the service uses. Not measured here: aiohttp's
reading of the frame, which both paths pay.

    PYTHONPATH=. python scripts/ws_refusal_cost.py [N]
"""

from __future__ import annotations

import sys
import time

import msgspec

from engine.gateways.http_requests import OrderRequest, new_order_command
from engine.gateways.ws_frames import json_frame
from engine.gateways.ws_shed import OverloadedFrames, shed_req_id
from engine.overload import overloaded_text
from engine.service import Overloaded

RAW = (
    '{"op":"order","req_id":123456,"symbol":"LOAD-USD","side":"buy","qty":5,"price":100,'
    '"tif":"gtc","client_order_id":"L-123456"}'
)


class _Queue:
    queued = 5000

    def overload_text(self) -> str:
        return overloaded_text(self.queued, 10_000, 0.051)


def ordinary(queue: _Queue) -> bytes:
    msg = msgspec.json.decode(RAW)
    req_id = msg.pop("req_id", None)
    msg.pop("op", None)
    msg.pop("traceparent", "")
    cmd = new_order_command("load-a", msgspec.convert(msg, OrderRequest))
    try:
        raise Overloaded(queue.overload_text(), queue.queued)
    except Overloaded as exc:
        del cmd
        message = {"type": "error", "req_id": req_id, "code": "OVERLOADED", "message": str(exc)}
        return json_frame(message | {"retry_after_s": exc.retry_after_s})


def cheap(queue: _Queue, frames: OverloadedFrames) -> bytes:
    return frames.frame(shed_req_id(RAW), queue)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    queue, frames = _Queue(), OverloadedFrames()
    assert msgspec.json.decode(ordinary(queue)[4:]) == msgspec.json.decode(cheap(queue, frames)[4:])
    for name, call in (("ordinary", lambda: ordinary(queue)), ("cheap", lambda: cheap(queue, frames))):
        best = min(_time(call, n) for _ in range(3))
        print(f"{name}: {best * 1e6:.2f} µs per refusal (best of 3 x {n:,})")


def _time(call, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - start) / n


if __name__ == "__main__":
    main()
