"""Plain new orders refused from their raw bytes, before aiohttp's parser
(engine.gateways.http_raw, QuietRequestHandler._read): framed exactly as llhttp frames them,
answered with the very bytes the parsed path writes, in request order however the stream
is split into reads; anything outside the strict grammar goes to the parser as before.

The framer is checked against aiohttp's own parser (llhttp). The connection handling runs
in-process on a real aiohttp listener with the real QuietRequestHandler and PipelineShed (over
a real ExchangeService): the test hands the connection's reads to the handler itself, split
where it chooses, which a socket cannot promise; the answers come back over the socket. The
unusual requests are sent to a real `loom run`."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import socket

import pytest
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpRequestParser

from engine.core.commands import NewOrder
from engine.core.domain import Instrument
from engine.exchange import ExchangeNode, NodeConfig
from engine.gateways.http_auth import api_key_in
from engine.gateways.http_context import trace_id_in
from engine.gateways.http_errors import QuietAppRunner
from engine.gateways.http_pipeline import HELD_BYTES
from engine.gateways.http_raw import DOUBT, INCOMPLETE, Framer, frame
from engine.gateways.http_shed import IN_FLIGHT_TEXT, MAX_ORDERS_IN_FLIGHT, ORDERS_PATH, PipelineShed
from engine.load.spawn import LOAD_ACCOUNTS, spawned_exchange
from engine.service import ExchangeService

KEY = next(iter(LOAD_ACCOUNTS))
WAIT = 30.0
INSTRUMENTS = (Instrument("LOAD-USD"),)
OFFERED = 24 << 20  # bytes of orders a client that does not read offers (HELD_BYTES: 64 KiB)
STALL_S = 2.0  # a send making no progress this long: the node has stopped reading


def order(k: int, *, key: str | None = KEY, trace: bool = True, names=None, extra=(), body=None) -> bytes:
    """POST /v1/orders; `names` renames headers (their case), `extra` adds header lines."""
    names = names or {}
    if body is None:
        body = json.dumps(
            {"symbol": "LOAD-USD", "side": "buy", "price": 100, "qty": 1, "tif": "gtc"}
        ).encode()
        body = body[:-1] + b',"client_order_id":"r%d"}' % k
    head = [
        "POST /v1/orders HTTP/1.1",
        f"{names.get('host', 'Host')}: loom",
        f"{names.get('type', 'Content-Type')}: application/json",
        f"{names.get('length', 'Content-Length')}: {len(body)}",
    ]
    if trace:
        head.append(f"{names.get('trace', 'traceparent')}: 00-{k + 1:032x}-00000000000000aa-01")
    if key:
        head.append(f"{names.get('key', 'X-API-Key')}: {key}")
    head.extend(extra)
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def ping(note: bytes = b"plain") -> bytes:
    return b"GET /ping HTTP/1.1\r\nHost: loom\r\nX-Note: " + note + b"\r\n\r\n"


# -- the framer against llhttp ------------------------------------------------------------

IN_GRAMMAR = [
    order(1),
    order(2, names={"key": "x-api-key", "trace": "TRACEPARENT", "length": "content-length"}),
    order(3, trace=False, key=None, extra=["Authorization: Bearer " + KEY, "Connection: keep-alive"]),
    order(4, body=b""),
    order(5, trace=False).replace(KEY.encode(), KEY.encode() + b" \t"),  # blanks after the key
    ping(),
    b"DELETE /v1/orders/7?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
]
OUTSIDE = {
    "chunked": b"POST /v1/orders HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "two lengths": order(5, extra=["Content-Length: 3"]),
    "expect": order(6, extra=["Expect: 100-continue"]),
    "close": order(7, extra=["Connection: close"]),
    "upgrade": b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    "bare LF": order(8).replace(b"\r\n", b"\n", 1),
    "obs-fold": b"GET / HTTP/1.1\r\nX-A: 1\r\n b\r\n\r\n",
    "HTTP/1.0": b"GET / HTTP/1.0\r\n\r\n",
    "not ASCII": ping("café".encode()),
    "space before colon": b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    "length not digits": b"POST /v1/orders HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc",
    "absolute target": b"GET http://a/ HTTP/1.1\r\n\r\n",
    "leading CRLF": b"\r\nGET / HTTP/1.1\r\n\r\n",
}


def llhttp(data: bytes) -> list:
    """The messages aiohttp's parser (llhttp, with the listener's limits) frames `data` into."""

    async def run() -> list:
        loop = asyncio.get_running_loop()
        parser = HttpRequestParser(BaseProtocol(loop), loop, 2**16, max_line_size=8190, max_field_size=8190)
        messages, _, _ = parser.feed_data(data)
        return [(m, p.is_eof()) for m, p in messages]

    return asyncio.run(run())


@pytest.mark.parametrize("request_bytes", IN_GRAMMAR)
def test_a_framed_request_is_exactly_one_request_to_llhttp(request_bytes):
    after = ping()
    end, headers = frame(request_bytes + after, 0)
    assert end == len(request_bytes)
    messages = llhttp(request_bytes + after)
    assert len(messages) == 2 and messages[0][1], messages  # the whole body, then the next request
    assert messages[1][0].path == "/ping"
    assert (headers is not None) == request_bytes.startswith(b"POST /v1/orders ")
    if headers is not None:  # what a refusal reads, as the parsed headers give it
        parsed = messages[0][0].headers
        assert api_key_in(headers) == api_key_in(parsed)
        assert headers.get("traceparent") == parsed.get("traceparent")
    for cut in range(1, len(request_bytes)):  # every prefix: its head to come, or its body
        end, _ = frame(request_bytes[:cut], 0)
        assert end == INCOMPLETE or end == len(request_bytes), (cut, end)
        assert (end == INCOMPLETE) == (request_bytes.find(b"\r\n\r\n") + 4 > cut), cut


@pytest.mark.parametrize("name", sorted(OUTSIDE))
def test_a_request_outside_the_grammar_is_left_to_the_parser(name):
    assert frame(OUTSIDE[name] + ping(), 0) == (DOUBT, None)


def test_an_order_with_headers_the_parser_has_a_rule_for_is_framed_but_left_to_it():
    odd = [
        order(9, extra=["X-API-Key: other"]),
        order(9, extra=["Host: again"]),
        order(9).replace(b"Host: loom\r\n", b""),
        order(9, extra=["Content-Encoding: gzip"]),
        order(9, extra=["Sec-WebSocket-Key1: 1"]),
    ]
    for request_bytes in odd:
        end, headers = frame(request_bytes, 0)
        assert end == len(request_bytes) and headers is None, request_bytes


def llhttp_or_error(data: bytes) -> list | Exception:
    try:
        return llhttp(data)
    except Exception as exc:  # aiohttp's BadHttpMessage and kin: the parser refuses it
        return exc


def test_mutated_requests_are_framed_as_llhttp_frames_them_or_left_to_it():
    """Seeded mutations (a byte inserted, removed or replaced by one that matters to HTTP
    framing) of requests in the grammar: whatever the framer frames, llhttp frames the same
    way (one whole request, then the next one); what it would refuse from its raw bytes,
    llhttp also reads as a keyed plain new order with the same key and trace id. A
    connection's Framer, which learned an order's head, frames each the same."""
    rng = random.Random(2026)
    alphabet = b"\r\n \t:,;0123456789aAzZ-\x00\x7f\x80\xff"
    framed = refusable = 0
    for _ in range(3000):
        data = bytearray(rng.choice(IN_GRAMMAR))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data))
            what = rng.randrange(3)
            if what == 0:
                data.insert(at, rng.choice(alphabet))
            elif what == 1:
                del data[at]
            else:
                data[at] = rng.choice(alphabet)
        buf = bytes(data) + ping()
        end, headers = frame(buf, 0)
        framer = Framer()  # the same from a connection's framer that learned an order's head
        framer.frame(order(1), 0)
        assert _same(framer.frame(buf, 0), (end, headers)), buf
        if end < 0 or end >= len(buf):
            continue
        framed += 1
        parsed = llhttp_or_error(buf[:end] + ping())
        if isinstance(parsed, Exception):
            assert headers is None, (bytes(data), parsed)  # refused raw, never parsed: a 400 lost
            continue
        assert len(parsed) == 2 and parsed[0][1] and parsed[1][0].path == "/ping", bytes(data)
        if headers is not None:
            refusable += 1
            message = parsed[0][0]
            assert message.method == "POST" and message.path == ORDERS_PATH and not message.should_close
            assert api_key_in(headers) == api_key_in(message.headers), bytes(data)
            assert headers.get("traceparent") == message.headers.get("traceparent"), bytes(data)
    assert framed > 500 and refusable > 100, (framed, refusable)


def _same(a: tuple, b: tuple) -> bool:
    (end_a, headers_a), (end_b, headers_b) = a, b
    fields = lambda h: None if h is None else {k: h.get(k.decode()) for k in h.fields}  # noqa: E731
    return end_a == end_b and fields(headers_a) == fields(headers_b)


def test_a_connection_s_framer_frames_as_the_full_framing_does():
    """Framer frames a request with its connection's last order head but for its
    Content-Length and traceparent values without the full framing: for the same answer."""
    rng = random.Random(10)
    framer = Framer()
    learned = order(1)
    assert _same(framer.frame(learned, 0), frame(learned, 0)) and framer.first
    others = [
        order(2),
        order(123456, body=b"x" * 1234),
        order(3, trace=False),
        order(4, key="other-key"),
        order(5, extra=["X-More: 1"]),
        order(6).replace(b"traceparent: 00", b"traceparent:   00"),
        order(7).replace(b"-01\r\n", b"-01  \r\n"),  # trailing blanks after the trace id
        order(8).replace(b"-01\r\n", b"-0\n1\r\n"),  # a bare LF inside the value
        order(9).replace(b"-01\r\n", b"-0\x001\r\n"),
        order(10).replace(b"Content-Length: ", b"Content-Length: +"),
        order(11).replace(b"Content-Length: ", b"Content-Length: 0"),
        order(12).replace(b"-00000000000000aa-01", b"-aa-01" + b"0" * 200),
        order(13).replace(b"Host: loom", b"host: loom"),
        *[order(100 + k)[:cut] for k, cut in enumerate(rng.sample(range(1, 300), 40))],
    ]
    for request_bytes in others:
        data = request_bytes + ping()
        assert _same(framer.frame(data, 0), frame(data, 0)), request_bytes
        framer.frame(learned, 0)  # learned again (an order framed in full teaches its head)


# -- the connection, in-process -----------------------------------------------------------


async def place(request: web.Request) -> web.Response:
    body = await request.read()
    trace = {"X-Trace-Id": trace_id_in(request.headers)}
    if not api_key_in(request.headers):
        return web.json_response({"error": {"code": "UNAUTHENTICATED"}}, status=401, headers=trace)
    return web.json_response({"order": json.loads(body)}, status=201, headers=trace)


async def pong(request: web.Request) -> web.Response:
    return web.json_response({"pong": True})


class Listener:
    """A real aiohttp listener with the REST gateway's connection handler and shed."""

    def __init__(self, runner: web.AppRunner, port: int, service: ExchangeService) -> None:
        self.runner, self.port, self.service = runner, port, service
        self.seen: set = set()

    async def handler(self):
        """The handler of the connection just opened (built on connection_made)."""
        while not (fresh := [h for h in self.runner.server.connections if h not in self.seen]):
            await asyncio.sleep(0.001)
        self.seen.add(fresh[0])
        return fresh[0]

    async def answers(self, chunks: list[bytes], n: int) -> tuple[list[bytes], int]:
        """The n answers to `chunks`, each handed to the connection's handler as one read,
        and how many requests aiohttp's parser produced."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            handler = await self.handler()
            for chunk in chunks:  # one read each, back to back: the same loop turn
                handler.data_received(chunk)
            out = []
            for _ in range(n):
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
                size = int(re.search(rb"Content-Length: (\d+)", head).group(1))
                out.append(head + await asyncio.wait_for(reader.readexactly(size), WAIT))
            return out, handler._request_count
        finally:
            writer.close()


@pytest.fixture
def listener(tmp_path):
    """Runs a test coroutine against a fresh Listener."""

    def run(test, keepalive_timeout: float = 75.0, max_queued_commands: int | None = None) -> None:
        async def main() -> None:
            node = ExchangeNode(
                NodeConfig(
                    tmp_path / "data",
                    (Instrument("LOAD-USD"),),
                    snapshot_every_commands=0,
                    snapshot_every_s=0,
                )
            )
            # Not started: its commit queue takes orders (and keeps them: with a bound, the
            # test can fill it, and the queue's own rule refuses what follows).
            bound = {} if max_queued_commands is None else {"max_queued_commands": max_queued_commands}
            service = ExchangeService(node, **bound)
            app = web.Application()
            app.router.add_post(ORDERS_PATH, place)
            app.router.add_get("/ping", pong)
            runner = QuietAppRunner(
                app, shed=PipelineShed(service), access_log=None, keepalive_timeout=keepalive_timeout
            )
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]
            try:
                await asyncio.wait_for(test(Listener(runner, port, service)), 120)
            finally:
                await runner.cleanup()
                node.close()

        asyncio.run(main())

    return run


def _masked(answer: bytes, fresh_trace: bool) -> bytes:
    answer = re.sub(rb"Date: [^\r]*\r\n", b"", answer)
    return re.sub(rb"X-Trace-Id: [0-9a-f]{32}", b"X-Trace-Id: *", answer) if fresh_trace else answer


VARIANTS = [  # refused past the bound: (request, whether its trace id is fresh)
    (order(100), False),
    (order(101, names={"key": "x-api-key", "trace": "TRACEPARENT", "length": "CONTENT-LENGTH"}), False),
    (order(102, trace=False), True),
    (order(103, key=None, extra=["Authorization: Bearer " + KEY]), False),
    (order(104, key=None), False),  # no key: the ordinary way (here the app's 401)
    (order(105, trace=False, key=None), True),
]


def test_raw_refusals_are_byte_identical_to_parsed_ones_and_skip_the_parser(listener):
    admitted = [order(k) for k in range(MAX_ORDERS_IN_FLIGHT)]
    variants = [r for r, _ in VARIANTS]
    n = 1 + len(admitted) + len(variants)

    async def test(node: Listener) -> None:
        # The same stream twice, one read each: after a request in the grammar (framed, so
        # refused raw), and after one outside it (its framing ends: the parsed path).
        raw, raw_parsed = await node.answers([b"".join([ping(), *admitted, *variants])], n)
        parsed, all_parsed = await node.answers([b"".join([ping("café".encode()), *admitted, *variants])], n)
        tails = zip([f for _, f in VARIANTS], raw[-len(variants) :], parsed[-len(variants) :], strict=True)
        for k, (fresh, a, b) in enumerate(tails):
            assert _masked(a, fresh) == _masked(b, fresh), (k, a, b)
        statuses = [int(a.split()[1]) for a in raw]
        assert statuses == [200] + [201] * MAX_ORDERS_IN_FLIGHT + [503] * 4 + [401] * 2, statuses
        assert IN_FLIGHT_TEXT.encode() in raw[-3]
        assert all_parsed == n
        assert raw_parsed == n - 4, "the refused orders were parsed"

    listener(test)


def test_a_stream_split_into_reads_anywhere_is_answered_as_one_read(listener):
    """A read may end anywhere: inside a head (kept for the next read), at a boundary, or
    inside a body. Outside bodies the answers are those of one read, byte for byte. A read
    ending inside an order's body gave that order to the parser without its body, as it
    always did (it keeps its turn: not admitted ahead, not refused as read), so there only
    the order of the answers is asserted."""
    stream = [ping(), *[order(k) for k in range(MAX_ORDERS_IN_FLIGHT + 3)], *[r for r, _ in VARIANTS]]
    stream += [ping(), order(200), b"DELETE /v1/orders/1 HTTP/1.1\r\nHost: a\r\n\r\n", order(201)]
    data = b"".join(stream)
    fresh = [False] * len(stream)
    for k, (_, f) in enumerate(VARIANTS):
        fresh[1 + MAX_ORDERS_IN_FLIGHT + 3 + k] = f
    bodies, start = set(), 0
    for r in stream:
        bodies.update(range(start + r.index(b"\r\n\r\n") + 4, start + len(r)))
        start += len(r)
    outside = [c for c in range(1, len(data)) if c not in bodies]
    rng = random.Random(13)
    exact = [[c] for c in outside[: 3 * len(stream[1])]]  # every offset through the first orders
    exact += [sorted(rng.sample(outside, rng.randint(2, 12))) for _ in range(150)]
    loose = [sorted(rng.sample(range(1, len(data)), rng.randint(1, 12))) for _ in range(100)]

    async def test(node: Listener) -> None:
        one, _ = await node.answers([data], len(stream))
        expected = [_masked(a, f) for a, f in zip(one, fresh, strict=True)]
        statuses = [int(a.split()[1]) for a in one]
        assert statuses.count(503) >= 8 and statuses[-2] == 404, statuses  # DELETE: no such route here
        for points in exact + loose:
            bounds = [0, *points, len(data)]
            got, _ = await node.answers([data[a:b] for a, b in itertools.pairwise(bounds)], len(stream))
            if points in exact:
                assert [_masked(a, f) for a, f in zip(got, fresh, strict=True)] == expected, points
            else:  # each answer is its request's, in order
                assert [_trace(a) for a in got] == [_trace(a) for a in one] or any(fresh), points
                assert [_trace(a) for a, f in zip(got, fresh, strict=True) if not f] == [
                    _trace(a) for a, f in zip(one, fresh, strict=True) if not f
                ], points

    listener(test)


def _trace(answer: bytes) -> bytes | None:
    found = re.search(rb"X-Trace-Id: (\w+)", answer)
    return found.group(1) if found else None


def test_a_client_that_does_not_read_its_answers_is_not_read_past_the_refusals_held(listener):
    """Refusals wait behind the answer before them; a client that never reads its answers
    leaves that answer unwritten (once the kernel's buffers are full), so its refusals pile
    up. Past HELD_BYTES of them the connection is no longer read: the client's sends block
    (TCP) rather than the node holding refusals for all it sends. Once the client reads,
    every complete request it sent is answered, in order."""
    size = len(order(100_000))
    requests = b"".join(order(k) for k in range(100_000, 100_000 + OFFERED // size))
    refusal = len(PipelineShed(None).refusal_for({"X-API-Key": KEY, "traceparent": ""}))
    # One read (asyncio reads at most 256 KiB) may refuse all it holds before reading stops.
    bound = HELD_BYTES + ((256 << 10) // size + 1) * refusal

    async def test(node: Listener) -> None:
        loop = asyncio.get_running_loop()
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # no room for answers
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", node.port))
            handler = await node.handler()
            sent, stalled = 0, loop.time()
            # Send until the node has read nothing for STALL_S (its buffers and ours full).
            while sent < len(requests) and loop.time() - stalled < STALL_S:
                try:
                    sent += sock.send(requests[sent : sent + (1 << 16)])
                    stalled = loop.time()
                except BlockingIOError:
                    await asyncio.sleep(0.01)
            held = handler.pipeline.held_bytes
            assert sent < len(requests), "the node read all that was sent"
            assert 0 < held <= bound, f"{held} bytes of refusals held (at most {bound})"
            answers: list[tuple[int, str | None]] = []
            buf = b""
            while len(answers) < sent // size:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), WAIT)
                assert chunk, f"closed after {len(answers)} answers"
                got, buf = _parse(buf + chunk)
                answers += got
        assert len(answers) == sent // size and answers[0] == (201, None)
        assert {status for status, _ in answers} == {201, 503}

    listener(test)


IDLE_S = 0.5  # the keep-alive deadline (http_idle_s) in the next test


def test_a_client_whose_every_order_is_refused_is_not_closed_as_idle(listener):
    """aiohttp pushes a connection's keep-alive deadline back only as its loop answers a
    request, and a refusal never passes through that loop: while the commit queue refused,
    a client sending an order every IDLE_S / 4 was closed as idle after IDLE_S."""

    async def test(node: Listener) -> None:
        loop = asyncio.get_running_loop()
        first = NewOrder("x", "c1", "LOAD-USD", 1, 1, 100, 1)
        waiting = asyncio.ensure_future(node.service.submit_one(first))
        while not node.service.refuses_orders(1):  # the queue at its bound of 1, never committed
            await asyncio.sleep(0.001)
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        try:
            started, k = loop.time(), 0
            while loop.time() - started < 4 * IDLE_S:
                writer.write(order(300_000 + k))
                k += 1
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
                assert head.startswith(b"HTTP/1.1 503"), (k, head)
                await reader.readexactly(int(re.search(rb"Content-Length: (\d+)", head).group(1)))
                await asyncio.sleep(IDLE_S / 4)  # the client's pace: the time under test
            writer.write(ping())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
            assert head.startswith(b"HTTP/1.1 200"), head
        finally:
            writer.close()
            waiting.cancel()

    listener(test, keepalive_timeout=IDLE_S, max_queued_commands=1)


# -- unusual requests, on a real node ------------------------------------------------------


@pytest.fixture(scope="module")
def node():
    with spawned_exchange() as info:
        yield info


def _parse(buf: bytes) -> tuple[list[tuple[int, str | None]], bytes]:
    """The whole answers at the front of buf (status, error code; 100 Continue skipped)."""
    out = []
    while (end := buf.find(b"\r\n\r\n")) >= 0:
        head = buf[:end]
        size = re.search(rb"content-length: (\d+)", head, re.I)
        total = end + 4 + (int(size.group(1)) if size else 0)
        if len(buf) < total:
            break
        code = re.search(rb'"code":\s*"(\w+)"', buf[end:total])
        if not head.startswith(b"HTTP/1.1 100 "):
            out.append((int(head[9:12]), code and code.group(1).decode()))
        buf = buf[total:]
    return out, buf


def _exchange(node, parts: list[bytes], n: int) -> list[tuple[int, str | None]]:
    """(status, error code) of the answers to `parts`, each sent once every answer to the
    parts before it has come: n answers in all, or as many as come before the node closes
    the connection."""
    answers: list[tuple[int, str | None]] = []
    with socket.create_connection((node["host"], node["http"]), timeout=WAIT) as sock:
        buf = b""
        for k, part in enumerate(parts):
            sock.sendall(part)
            want = n if k == len(parts) - 1 else len(answers) + 1 + MAX_ORDERS_IN_FLIGHT
            while len(answers) < want and (chunk := sock.recv(1 << 16)):
                got, buf = _parse(buf + chunk)
                answers += got
    return answers


MALFORMED = {  # llhttp refuses them, and so the whole read they came in (aiohttp's rule)
    "two lengths": lambda k: order(k, extra=["Content-Length: 3"]),
    "bare LF": lambda k: order(k).replace(b"\r\n", b"\n", 1),
    "data after close": lambda k: order(k, extra=["Connection: close"]) + order(k + 1),
}
UNUSUAL = {  # answered as any request: the parser's framing and the pipeline's rule
    "chunked": lambda k: (
        order(k, body=b"").replace(b"Content-Length: 0", b"Transfer-Encoding: chunked")
        + b"2\r\n{}\r\n0\r\n\r\n"
    ),
    "expect": lambda k: order(k, extra=["Expect: 100-continue"]),
    "close": lambda k: order(k, extra=["Connection: close"]),
    **MALFORMED,
}


@pytest.mark.parametrize("name", sorted(UNUSUAL))
def test_unusual_requests_get_their_usual_answers(node, name):
    """Each behind a request in the grammar (framed) and behind one outside it (its
    connection's framing ended first: the parsed path, as before raw refusals), with
    MAX_ORDERS_IN_FLIGHT orders and an order behind it: the same answers. Framed, the
    requests before a malformed one were handed to the parser in reads of their own, so
    those answered before the 400 are more than none: the last answers are compared."""
    base = 10_000 * (1 + sorted(UNUSUAL).index(name))

    def stream(first: bytes, k: int) -> list[bytes]:
        admitted = [order(k + j) for j in range(MAX_ORDERS_IN_FLIGHT)]
        after = [] if name == "close" else [order(k + 70)]  # data after close: malformed
        return [b"".join([first, *admitted, UNUSUAL[name](k + 50), *after])]

    n = 1 + MAX_ORDERS_IN_FLIGHT + 1 + (name != "close")
    framed = _exchange(node, stream(ping(), base), n)
    parsed = _exchange(node, stream(ping("café".encode()), base + 5_000), n)
    if name in MALFORMED:
        assert parsed == [(400, "MALFORMED_REQUEST")], parsed
        assert framed[-1] == parsed[-1] and framed[:-1] == [(404, "NOT_FOUND")] + [(201, None)] * (
            len(framed) - 2
        ), framed
    else:
        assert framed == parsed and len(framed) >= n - 1, (framed, parsed)
        assert framed[1 : 1 + MAX_ORDERS_IN_FLIGHT] == [(201, None)] * MAX_ORDERS_IN_FLIGHT, framed


def test_an_order_whose_body_comes_in_a_later_read_keeps_its_turn(node):
    """Its head and part of its body in one read, the rest in the next: the parser has its
    head (a request not read whole is neither admitted ahead nor refused as read), and
    framing goes on after it, as in the parsed path."""

    def stream(first: bytes, k: int) -> list[bytes]:
        admitted = [order(k + j) for j in range(MAX_ORDERS_IN_FLIGHT)]
        split = order(k + 50)
        return [b"".join([first, *admitted, split[:-10]]), split[-10:] + order(k + 60) + order(k + 61)]

    n = 1 + MAX_ORDERS_IN_FLIGHT + 3
    framed = _exchange(node, stream(ping(), 90_000), n)
    parsed = _exchange(node, stream(ping("café".encode()), 95_000), n)
    assert framed == parsed and len(framed) == n, (framed, parsed)
