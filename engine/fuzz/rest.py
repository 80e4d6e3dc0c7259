"""REST cases: whole HTTP/1.1 requests as bytes, from well formed to garbage, each on its
own connection. An answer is every status the server sent before closing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random

from engine.fuzz.mutate import garbage, mutate, nested_json, odd_value
from engine.fuzz.node import ADMIN_KEY, ALICE_KEY, BOB_KEY, SYMBOL

PATHS = (
    "/v1/orders",
    "/v1/orders/{id}",
    "/v1/orders/{id}/trace",
    "/v1/orders/by-client-id/{text}",
    "/v1/book/{symbol}",
    "/v1/trades/{symbol}",
    "/v1/instruments",
    "/v1/admin/stats",
    "/v1/admin/snapshot",
    "/v1/admin/cluster",
    "/v1/ws",
    "/healthz",
    "/metrics",
    "/v1/openapi.json",
    "/{text}",
)
METHODS = ("GET", "POST", "DELETE", "PATCH", "PUT", "HEAD", "OPTIONS", "TRACE", "CONNECT", "G\x00T")
ANSWER_WAIT_S = 0.5  # then the write side is closed: a complete request is answered well before
ORDER = {"symbol": SYMBOL, "side": "buy", "qty": 1, "price": 100}


def _path(rng: random.Random) -> str:
    path = rng.choice(PATHS)
    ident = rng.choice((str(rng.randint(1, 50)), str(2**64), "-1", "0", "abc", "1e3", "%20", "١٢"))
    text = rng.choice(("x", "a" * 2000, "%ff%00", "..%2f..", "é", "trace"))
    path = path.format(id=ident, text=text, symbol=rng.choice((SYMBOL, "NOPE", "", "%00")))
    if rng.random() < 0.2:
        path += rng.choice(("?depth=", "?depth=99999", "?limit=-1", "?symbol=", "?account=alice", "?a=%ff"))
    return path


def _body(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return b""
    if kind == 1:  # a valid order with one field odd, dropped or added
        order = dict(ORDER)
        field = rng.choice([*ORDER, "tif", "stp", "post_only", "client_order_id", "type", "extra"])
        if rng.random() < 0.2:
            order.pop(field, None)
        else:
            order[field] = odd_value(rng)
        return json.dumps(order).encode()
    if kind == 2:
        return mutate(rng, json.dumps(ORDER).encode())
    if kind == 3:
        return nested_json(rng, rng.randint(10, 5000)).encode()
    if kind == 4:  # big: up to ~1 MB here; the 10 MB bodies are rare (they cost time)
        size = rng.choice((70_000, 300_000, 1_000_000, 10_000_000)) if rng.random() < 0.05 else 70_000
        return b'{"symbol": "' + b"A" * size + b'"}'
    return garbage(rng)


def case(rng: random.Random) -> bytes:
    """One request (or something meant to look like one)."""
    shape = rng.randrange(10)
    if shape == 0:
        return garbage(rng, 1, 2048)
    method = rng.choice(METHODS) if rng.random() < 0.3 else rng.choice(("GET", "POST", "DELETE", "PATCH"))
    body = _body(rng)
    headers = ["Host: 127.0.0.1"]
    key = rng.choice((ALICE_KEY, ALICE_KEY, BOB_KEY, ADMIN_KEY, "", "short", "é" * 20, "x" * 9000))
    if key:
        headers.append(rng.choice(("X-API-Key: {}", "Authorization: Bearer {}", "X-Api-Key: {}")).format(key))
    if rng.random() < 0.7:
        headers.append(
            rng.choice(("Content-Type: application/json", "Content-Type: text/plain", "Content-Type: "))
        )
    framing = rng.randrange(6)
    if framing == 0:
        headers.append(f"Content-Length: {len(body)}")
    elif framing == 1:
        headers.append(f"Content-Length: {rng.choice((len(body) + rng.randint(1, 100), 0, -1, 2**64))}")
    elif framing == 2:
        headers.append("Transfer-Encoding: chunked")
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if rng.random() < 0.6 else mutate(rng, body)
    elif framing == 3:
        headers += ["Content-Length: 5", "Transfer-Encoding: chunked"]
    elif framing == 4:
        headers.append(f"Content-Length: {len(body)}")
        headers.append("Connection: keep-alive")
        body += b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"  # pipelined
    else:
        headers.append(f"Content-Length: {len(body)}")
    if rng.random() < 0.15:
        headers.append(
            rng.choice(("Bad Header", "X: \x00", "X-Long: " + "a" * 9000, ": empty", "Upgrade: websocket"))
        )
    version = rng.choice(("HTTP/1.1",) * 8 + ("HTTP/1.0", "HTTP/2.0", "HTTP/9", "FOO"))
    head = f"{method} {_path(rng)} {version}\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"
    request = head.encode("utf-8", "surrogateescape") + body
    return mutate(rng, request) if shape == 1 else request


async def send(port: int, data: bytes, timeout: float) -> tuple[list[int], bool]:
    """(the statuses answered, hung): a hang is a connection neither answered nor closed
    within `timeout` after the request was sent and then the write side closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = bytearray()
    hung = False
    try:
        writer.write(data)
        with contextlib.suppress(ConnectionError, TimeoutError):  # closed on an oversized body
            await asyncio.wait_for(writer.drain(), timeout)
        answered = True
        try:
            received += await asyncio.wait_for(reader.read(65536), ANSWER_WAIT_S)
        except TimeoutError:
            pass  # the server waits for more (a short body, or slow): close our side below
        except (ConnectionError, OSError):
            answered = False
        if answered and (not received or not reader.at_eof()):
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                writer.write_eof()  # one exchange per case: the server must now finish and close
            try:
                while chunk := await asyncio.wait_for(reader.read(65536), timeout):
                    received += chunk
            except TimeoutError:
                hung = True
            except (ConnectionError, OSError):
                pass
    finally:
        writer.close()
    return _statuses(bytes(received)), hung


def _statuses(data: bytes) -> list[int]:
    out = []
    for line in data.split(b"\r\n"):
        if line.startswith(b"HTTP/1.") and len(line) >= 12 and line[9:12].isdigit():
            out.append(int(line[9:12]))
    return out
