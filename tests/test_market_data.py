"""Market data a trading client expects (issue 16), against a real `loom run` over WebSocket:
L2 snapshot + updates with sequence continuity, gap recovery (resync, or a REST snapshot and
the updates after it), conflation, the L3 feed, candles and the ticker over REST and
WebSocket (and after a restart, equal to before), and a slow consumer cut off with a message
while a fast one keeps receiving. Assertions are on what each client saw; no timings.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket

import aiohttp
import pytest
from aiohttp import WSMsgType
from loomproc import loom_run

SYMBOL = "BTC-USD"
ALICE, BOB = "alice-key-0123456789abcdef", "bob-key-0123456789abcdef00"
CONFIG = """
credit_checks = false
rate_limit = 0.0
[[instruments]]
symbol = "BTC-USD"
tick_size = 1
lot_size = 1
min_qty = 1
max_qty = 1000000
[[accounts]]
name = "alice"
api_key = "alice-key-0123456789abcdef"
[[accounts]]
name = "bob"
api_key = "bob-key-0123456789abcdef00"
[market_data]
"""


def start(tmp_path, extra: str = ""):
    path = tmp_path / "loom.toml"
    path.write_text(CONFIG + extra)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    args = ["--config", str(path), "--data-dir", str(tmp_path / "data"), "--http-port", "0"]
    return loom_run([*args, "--fix-port", "-1", "--binary-port", "-1"], env)


class Client:
    """One WebSocket session; `seen` keeps every message received, in order."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.seen: list[dict] = []
        self.ids = 0

    async def request(self, op: str, **fields) -> dict:
        self.ids += 1
        rid = self.ids
        await self.ws.send_json({"op": op, "req_id": rid, **fields})
        while True:
            msg = await self.next()
            if msg.get("req_id") == rid:
                return msg

    async def next(self, timeout: float = 20) -> dict:
        raw = await self.ws.receive(timeout=timeout)
        assert raw.type == WSMsgType.TEXT, raw
        msg = json.loads(raw.data)
        self.seen.append(msg)
        return msg

    async def until(self, done, timeout: float = 20) -> None:
        while not done():
            await self.next(timeout)

    def of(self, kind: str) -> list[dict]:
        return [m for m in self.seen if m.get("type") == kind]


async def trade_flow(trader: Client, n: int, base: int = 10_000, one_by_one: bool = True) -> None:
    """n resting orders at new prices, then crossing orders that trade some of them; one by
    one (each its own batch, so its own book update) or all sent at once."""
    orders = [
        {"symbol": SYMBOL, "side": "buy" if i % 2 else "sell", "qty": 5, "price": base + 100 + i}
        if i % 2 == 0
        else {"symbol": SYMBOL, "side": "buy", "qty": 5, "price": base - 100 - i}
        for i in range(n)
    ]
    orders += [{"symbol": SYMBOL, "side": "buy", "qty": 3, "price": base + 1_000, "stp": "none"}] * (n // 4)
    for order in orders:
        if one_by_one:
            assert (await trader.request("order", **order))["type"] == "ack"
        else:
            await trader.ws.send_json({"op": "order", **order})
    await trader.request("ping")  # every order above is answered before the pong


def book_of(answer: dict) -> dict:
    """GET /v1/book's levels as a client's book."""
    return l2_book({"bids": [lv[:2] for lv in answer["bids"]], "asks": [lv[:2] for lv in answer["asks"]]})


def l3_book(snapshot: dict) -> dict:
    return {o: ("bid", p, q) for o, p, q in snapshot["bids"]} | {
        o: ("ask", p, q) for o, p, q in snapshot["asks"]
    }


def apply_l2(book: dict, changes: list) -> None:
    for side, price, qty in changes:
        if qty:
            book[(side, price)] = qty
        else:
            book.pop((side, price), None)


def l2_book(snapshot: dict) -> dict:
    book = {("bid", p): q for p, q in snapshot["bids"]}
    book.update({("ask", p): q for p, q in snapshot["asks"]})
    return book


def replay_l2(msgs: list[dict]) -> tuple[dict, int]:
    """Apply a book channel's messages as a client must: an update applies when prev_seq <=
    the client's seq < seq; a gap (prev_seq beyond it) fails the test."""
    book, seq = None, None
    for m in msgs:
        if m["type"] == "l2snapshot":
            book, seq = l2_book(m), m["seq"]
        elif m["type"] == "l2update" and book is not None:
            if m["seq"] <= seq:
                continue
            assert m["prev_seq"] <= seq, f"gap: held seq {seq}, update covers {m['prev_seq']}..{m['seq']}"
            apply_l2(book, m["changes"])
            seq = m["seq"]
    return book, seq


async def rest(http: aiohttp.ClientSession, path: str) -> dict:
    async with http.get(path) as r:
        assert r.status == 200, await r.text()
        return await r.json()


def test_book_updates_are_sequenced_conflated_recoverable_and_l3_names_no_account(tmp_path):
    async def main(base: str) -> None:
        async with aiohttp.ClientSession(base) as http:
            ws = [await http.ws_connect("/v1/ws") for _ in range(5)]
            full, slow, gappy, l3, trader = (Client(w) for w in ws)
            assert (await full.request("subscribe", channel="book", symbol=SYMBOL))["max_rate"] == 0
            answer = await slow.request("subscribe", channel="book", symbol=SYMBOL, max_rate=2)
            assert answer["type"] == "subscribed" and answer["max_rate"] == 2
            await gappy.request("subscribe", channel="book", symbol=SYMBOL)
            await l3.request("subscribe", channel="l3", symbol=SYMBOL)
            # A REST snapshot with its seq, then the updates after it: the other recovery path.
            await trader.request("auth", api_key=ALICE)
            await trade_flow(trader, 60)
            rest_snap = await rest(http, f"/v1/book/{SYMBOL}?depth=50")
            await trade_flow(trader, 40, base=20_000)
            final = await rest(http, f"/v1/book/{SYMBOL}?depth=50")
            last = final["md_seq"]
            assert last > 50
            for c in (full, slow, gappy):
                await c.until(lambda c=c: any(m.get("seq") == last for m in c.of("l2update")))
            truth = l2_book(
                {"bids": [lv[:2] for lv in final["bids"]], "asks": [lv[:2] for lv in final["asks"]]}
            )

            # Every update, contiguous: each one's prev_seq is the seq before it.
            updates = full.of("l2update")
            assert [u["prev_seq"] for u in updates] == [u["seq"] - 1 for u in updates]
            assert [u["seq"] for u in updates] == list(range(full.of("l2snapshot")[0]["seq"] + 1, last + 1))
            assert replay_l2(full.seen) == (truth, last)

            # Conflated: fewer messages, the same book, and no gap by the prev_seq rule.
            folded = slow.of("l2update")
            assert 0 < len(folded) < len(updates)
            assert replay_l2(slow.seen) == (truth, last)

            # The REST snapshot and the WebSocket updates after its md_seq give the same book.
            book = l2_book(
                {"bids": [lv[:2] for lv in rest_snap["bids"]], "asks": [lv[:2] for lv in rest_snap["asks"]]}
            )
            for u in updates:
                if u["seq"] > rest_snap["md_seq"]:
                    apply_l2(book, u["changes"])
            assert book == truth

            # A lost message: the client sees prev_seq beyond its seq, resyncs, and is whole.
            seen = gappy.seen
            i = next(i for i, m in enumerate(seen) if m["type"] == "l2update")
            lost = [*seen[:i], *seen[i + 1 :]]
            with pytest.raises(AssertionError, match="gap"):
                replay_l2(lost)
            gappy.seen = []
            fresh = await gappy.request("resync", channel="book", symbol=SYMBOL)
            assert fresh["type"] == "l2snapshot"  # the answer is the snapshot itself
            await trade_flow(trader, 4, base=10_000)
            after = await rest(http, f"/v1/book/{SYMBOL}?depth=50")
            assert after["md_seq"] > fresh["seq"]
            await gappy.until(lambda: any(m.get("seq") == after["md_seq"] for m in gappy.of("l2update")))
            truth = l2_book(
                {"bids": [lv[:2] for lv in after["bids"]], "asks": [lv[:2] for lv in after["asks"]]}
            )
            assert replay_l2(gappy.seen) == (truth, after["md_seq"])
            err = await gappy.request("resync", channel="l3", symbol=SYMBOL)
            assert err["code"] == "NOT_SUBSCRIBED"

            # L3: the snapshot plus the updates equal a fresh snapshot; order ids, no accounts.
            await l3.request("ping")
            orders: dict[int, tuple] = {}
            for m in l3.seen:
                if m["type"] == "l3snapshot":
                    orders = {o: ("bid", p, q) for o, p, q in m["bids"]} | {
                        o: ("ask", p, q) for o, p, q in m["asks"]
                    }
                elif m["type"] == "l3update":
                    for oid, side, price, leaves in m["orders"]:
                        if leaves:
                            orders[oid] = (side, price, leaves)
                        else:
                            orders.pop(oid, None)
            l3_updates = l3.of("l3update")
            assert l3_updates and [u["prev_seq"] for u in l3_updates] == [u["seq"] - 1 for u in l3_updates]
            check = Client(await http.ws_connect("/v1/ws"))
            await check.request("subscribe", channel="l3", symbol=SYMBOL)
            await check.until(lambda: bool(check.of("l3snapshot")))
            snap = check.of("l3snapshot")[0]
            assert orders == l3_book(snap)
            text = json.dumps(l3.seen)
            assert "alice" not in text and "account" not in text

            async with http.get("/metrics") as r:
                metrics = await r.text()
            conflated = float(re.search(r"^loom_md_conflated_updates_total (\S+)$", metrics, re.M).group(1))
            assert conflated > 0
            assert re.search(r'^loom_md_gap_recoveries_total\{channel="book"\} 1\.0$', metrics, re.M)
            encoded = float(re.search(r"^loom_md_messages_encoded_total (\S+)$", metrics, re.M).group(1))
            delivered = float(re.search(r"^loom_md_deliveries_total (\S+)$", metrics, re.M).group(1))
            assert delivered > encoded > 0  # one encoding, several subscribers
            for w in [*ws, check.ws]:
                await w.close()

    with start(tmp_path) as base:
        asyncio.run(main(base))


async def read_back(http: aiohttp.ClientSession) -> dict:
    """The 1m candles once those from before the node's start are read back (`partial` false)."""
    got = await rest(http, f"/v1/candles/{SYMBOL}?interval=1m")
    while got["partial"]:
        await asyncio.sleep(0.1)
        got = await rest(http, f"/v1/candles/{SYMBOL}?interval=1m")
    return got


async def candles_and_ticker(http: aiohttp.ClientSession) -> dict:
    state = {
        i: (await rest(http, f"/v1/candles/{SYMBOL}?interval={i}"))["candles"] for i in ("1m", "5m", "1h")
    }
    ticker = await rest(http, f"/v1/ticker/{SYMBOL}")
    state["ticker"] = {k: ticker[k] for k in ("last", "volume_24h", "high_24h", "low_24h", "trades_24h")}
    return state


def test_candles_and_ticker_over_rest_and_websocket_survive_a_restart(tmp_path):
    async def before(base: str) -> dict:
        async with aiohttp.ClientSession(base) as http:
            watcher = Client(await http.ws_connect("/v1/ws"))
            trader = Client(await http.ws_connect("/v1/ws"))
            await watcher.request("subscribe", channel="trades", symbol=SYMBOL)
            await watcher.request("subscribe", channel="candles", symbol=SYMBOL, interval="1m")
            await watcher.request("subscribe", channel="ticker", symbol=SYMBOL)
            bad = await watcher.request("subscribe", channel="candles", symbol=SYMBOL, interval="2m")
            assert bad["code"] == "INVALID_REQUEST" and "1m, 5m, 1h" in bad["message"]
            await trader.request("auth", api_key=ALICE)
            await trade_flow(trader, 40)
            await watcher.request("ping")
            trades = watcher.of("trade")
            assert len(trades) >= 10
            got = await read_back(http)
            # The 1m candles are the trades bucketed by their own ts.
            expected: dict[int, list] = {}
            for t in trades:
                start = t["ts"] - t["ts"] % 60_000_000_000
                b = expected.setdefault(start, [t["price"], t["price"], t["price"], t["price"], 0, 0])
                b[1], b[2], b[3] = max(b[1], t["price"]), min(b[2], t["price"]), t["price"]
                b[4] += t["qty"]
                b[5] += 1
            assert {
                c["start"]: [c["open"], c["high"], c["low"], c["close"], c["volume"], c["trades"]]
                for c in got["candles"]
            } == expected
            # The WebSocket channel's latest candle is the REST one.
            latest = watcher.of("candle")[-1]
            assert {k: v for k, v in latest.items() if k != "type"} == got["candles"][-1]
            ticker = await rest(http, f"/v1/ticker/{SYMBOL}")
            assert ticker["last"] == trades[-1]["price"]
            assert ticker["volume_24h"] == sum(t["qty"] for t in trades)
            assert ticker["trades_24h"] == len(trades)
            assert (ticker["low_24h"], ticker["high_24h"]) == (
                min(t["price"] for t in trades),
                max(t["price"] for t in trades),
            )
            pushed = watcher.of("ticker")[-1]
            assert pushed["volume_24h"] == ticker["volume_24h"] and pushed["bid"] == ticker["bid"]
            first, final = got["candles"][0]["start"], got["candles"][-1]["start"]
            minute = 60_000_000_000
            ranged = await rest(http, f"/v1/candles/{SYMBOL}?interval=1m&start={first}&end={first + minute}")
            assert ranged["candles"] == got["candles"][:1]
            later = await rest(http, f"/v1/candles/{SYMBOL}?interval=1m&start={final + minute}")
            assert later["candles"] == []
            async with http.get(f"/v1/candles/{SYMBOL}?interval=7m") as r:
                assert (
                    r.status == 400
                    and "interval must be one of 1m, 5m, 1h" in (await r.json())["error"]["message"]
                )
            state = {
                i: (await rest(http, f"/v1/candles/{SYMBOL}?interval={i}"))["candles"]
                for i in ("1m", "5m", "1h")
            }
            state["ticker"] = {
                k: ticker[k] for k in ("last", "volume_24h", "high_24h", "low_24h", "trades_24h")
            }
            await watcher.ws.close()
            await trader.ws.close()
            return state

    async def after(base: str) -> dict:
        async with aiohttp.ClientSession(base) as http:
            await read_back(http)
            state = {
                i: (await rest(http, f"/v1/candles/{SYMBOL}?interval={i}"))["candles"]
                for i in ("1m", "5m", "1h")
            }
            ticker = await rest(http, f"/v1/ticker/{SYMBOL}")
            state["ticker"] = {
                k: ticker[k] for k in ("last", "volume_24h", "high_24h", "low_24h", "trades_24h")
            }
            return state

    with start(tmp_path) as base:
        first = asyncio.run(before(base))
    assert first["1m"] and first["1h"]
    with start(tmp_path) as base:
        assert asyncio.run(after(base)) == first


class RawWs:
    """A WebSocket client on a plain socket whose receive buffer is set small before it
    connects, so a client that stops reading backs up at once (an aiohttp client reads on
    into its own queue, and the kernel's default buffers hold megabytes)."""

    def __init__(self, base: str, path: str = "/v1/ws") -> None:
        host, port = base.removeprefix("http://").split(":")
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.buf = b""

    def send(self, message: dict) -> None:
        payload = json.dumps(message).encode()
        mask = os.urandom(4)
        assert len(payload) < 126
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes((0x81, 0x80 | len(payload))) + mask + masked)

    def read_all(self) -> tuple[list[dict], int | None]:
        """Every text message until the server's close frame: (messages, close code)."""
        self.sock.settimeout(30)
        messages = []
        while True:
            while len(self.buf) < 2 or len(self.buf) < self._frame_len():
                chunk = self.sock.recv(65536)
                if not chunk:
                    return messages, None
                self.buf += chunk
            n = self._frame_len()
            frame, self.buf = self.buf[:n], self.buf[n:]
            op, length, at = frame[0] & 0x0F, frame[1] & 0x7F, 2
            if length == 126:
                at = 4
            elif length == 127:
                at = 10
            if op == 0x8:
                return messages, int.from_bytes(frame[at : at + 2], "big")
            messages.append(json.loads(frame[at:]))

    def _frame_len(self) -> int:
        b = self.buf
        length = b[1] & 0x7F
        if length == 126:
            return 4 + int.from_bytes(b[2:4], "big") if len(b) >= 4 else 1 << 62
        if length == 127:
            return 10 + int.from_bytes(b[2:10], "big") if len(b) >= 10 else 1 << 62
        return 2 + length

    def close(self) -> None:
        self.sock.close()


def test_a_subscriber_that_stops_reading_is_cut_off_while_a_fast_one_gets_everything(tmp_path):
    async def main(base: str) -> None:
        async with aiohttp.ClientSession(base) as http:
            fast = Client(await http.ws_connect("/v1/ws"))
            trader = Client(await http.ws_connect("/v1/ws"))
            await fast.request("subscribe", channel="book", symbol=SYMBOL)
            slow = RawWs(base)  # subscribes, then never reads until the end
            slow.send({"op": "subscribe", "channel": "book", "symbol": SYMBOL})
            slow.send({"op": "subscribe", "channel": "l3", "symbol": SYMBOL})
            await trader.request("auth", api_key=BOB)
            reading = asyncio.create_task(fast.until(lambda: False, timeout=60))  # reads all along
            for _round in range(100):
                for i in range(50):  # each order, its own batch, adds to one of the top 40 bids
                    order = {"symbol": SYMBOL, "side": "buy", "qty": 1, "price": 9_000 + i % 40}
                    assert (await trader.request("order", **order))["type"] == "ack"
                async with http.get("/metrics") as r:
                    if re.search(r"^loom_md_slow_consumer_drops_total 1\.0$", await r.text(), re.M):
                        break
            else:
                raise AssertionError("the slow subscriber was never cut off")
            await trade_flow(trader, 20, base=5_000)  # and the fast one goes on receiving
            last = (await rest(http, f"/v1/book/{SYMBOL}?depth=50"))["md_seq"]
            while not any(m.get("seq") == last for m in fast.of("l2update")):
                assert not reading.done(), reading
                await asyncio.sleep(0.05)
            reading.cancel()
            updates = fast.of("l2update")
            assert [u["seq"] for u in updates] == list(range(fast.of("l2snapshot")[0]["seq"] + 1, last + 1))
            # The slow one, reading at last: what was written, then the reason, then the close.
            seen, code = await asyncio.to_thread(slow.read_all)
            slow.close()
            assert seen[-1]["type"] == "error" and seen[-1]["code"] == "SLOW_CONSUMER", seen[-1]
            assert "max_queued" in seen[-1]["message"] and code == 1008
            got = [m["seq"] for m in seen if m["type"] == "l2update"]
            assert got and got[-1] < last  # it fell behind and was cut off; the fast one was not
            await fast.ws.close()
            await trader.ws.close()

    with start(tmp_path, "max_queued = 50\nsend_buffer_bytes = 1\n") as base:
        asyncio.run(main(base))
