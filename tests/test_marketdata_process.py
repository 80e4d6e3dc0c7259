"""`loom marketdata --cluster`: a separate process serving the market-data API from what the
cluster leader publishes to NATS. Real nats-server, a real cluster node, a real marketdata
process: a subscriber on each sees the same L2 sequence and trades; REST answers alike; a
gap in what NATS delivers sends the process back to the leader's state (resync)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import msgspec
import nats
from natsproc import unique_stream
from serverproc import stop
from test_market_data import Client, trade_flow

from engine.cluster.drill import SYMBOL, TRADER_KEY, NodeProcess, http, wait_for
from engine.marketdata_nats import update_subject

REPO = Path(__file__).resolve().parent.parent
READY = re.compile(r"loom: ready on \S+ \(http (\d+)\)")


def start_marketdata(urls: list[str], stream: str, log: Path) -> tuple[subprocess.Popen, str]:
    argv = [sys.executable, "-m", "engine.cli", "marketdata", "--cluster", ",".join(urls)]
    argv += ["--stream", stream, "--http-port", "0"]
    out = open(log, "w")  # noqa: SIM115 (the child writes it for its whole life)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")} | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    out.close()

    def ready() -> str | None:
        assert proc.poll() is None, log.read_text()
        m = READY.search(log.read_text())
        return f"http://127.0.0.1:{m.group(1)}" if m else None

    return proc, wait_for("loom marketdata to listen", ready, timeout=60)


def metric(base: str, name: str, labels: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + labels))


async def subscribe(http_session: aiohttp.ClientSession, base: str) -> Client:
    client = Client(await http_session.ws_connect(base.replace("http", "ws") + "/v1/ws"))
    for channel in ("book", "trades"):
        answer = await client.request("subscribe", channel=channel, symbol=SYMBOL, max_rate=0)
        assert answer["type"] == "subscribed", answer
    await client.until(lambda: client.of("l2snapshot"))
    return client


def updates(client: Client, after: int) -> list[tuple]:
    return [(m["seq"], m["prev_seq"], m["changes"]) for m in client.of("l2update") if m["seq"] > after]


def test_a_marketdata_process_serves_the_leaders_sequence_trades_and_rest_and_resyncs_on_a_gap(
    nats_cluster, tmp_path
):
    stream, _prefix = unique_stream()
    node = NodeProcess("a", nats_cluster.urls, tmp_path, stream)
    md_proc = None
    try:
        node.start()
        wait_for("a to lead", lambda: node.status().get("role") == "leader")
        md_proc, md_base = start_marketdata(nats_cluster.urls, stream, tmp_path / "marketdata.log")
        wait_for("marketdata in sync", lambda: http("GET", md_base + "/readyz")[0] == 200, timeout=60)

        async def main() -> None:
            async with aiohttp.ClientSession() as s:
                on_node = await subscribe(s, node.base)
                on_md = await subscribe(s, md_base)
                start_node, start_md = on_node.of("l2snapshot")[0], on_md.of("l2snapshot")[0]
                assert start_md["bids"] == start_node["bids"] and start_md["asks"] == start_node["asks"]
                trader = Client(await s.ws_connect(node.base.replace("http", "ws") + "/v1/ws"))
                assert (await trader.request("auth", api_key=TRADER_KEY))["type"] == "authenticated"
                await trade_flow(trader, 24)
                last = (await (await s.get(f"{node.base}/v1/book/{SYMBOL}")).json())["md_seq"]
                for c in (on_node, on_md):
                    await c.until(lambda c=c: any(m["seq"] == last for m in c.of("l2update")))
                since = max(start_node["seq"], start_md["seq"])
                seen = updates(on_md, since)
                assert seen == updates(on_node, since) and len(seen) >= 24, seen
                trades = [(m["trade_id"], m["price"], m["qty"]) for m in on_node.of("trade")]
                assert trades and [(m["trade_id"], m["price"], m["qty"]) for m in on_md.of("trade")] == trades
                for path in (f"/v1/book/{SYMBOL}?depth=50", f"/v1/trades/{SYMBOL}", f"/v1/ticker/{SYMBOL}"):
                    a = await (await s.get(node.base + path)).json()
                    b = await (await s.get(md_base + path)).json()
                    for key in ("seq", "partial"):
                        a.pop(key, None), b.pop(key, None)
                    for side in ("bids", "asks"):  # [price, qty, orders]: the order count stays on the node
                        if side in a:
                            a[side], b[side] = [lv[:2] for lv in a[side]], [lv[:2] for lv in b[side]]
                    assert a == b, path
                path = f"/v1/candles/{SYMBOL}?interval=1m"
                a = await (await s.get(node.base + path)).json()
                assert (
                    a["candles"] and a["candles"] == (await (await s.get(md_base + path)).json())["candles"]
                )
                answer = await on_md.request("subscribe", channel="l3", symbol=SYMBOL)
                assert answer["code"] == "NOT_AVAILABLE", answer
                answer = await on_md.request("order", symbol=SYMBOL, side="buy", qty=1, price=1)
                assert answer["code"] == "UNAUTHENTICATED", answer

                # A gap in what NATS delivers: an update claiming to follow a later seq.
                epoch = (await (await s.get(md_base + "/readyz")).json())["epoch"]
                nc = await nats.connect(nats_cluster.urls)
                bogus = {"epoch": epoch, "symbol": SYMBOL, "seq": last + 6, "prev_seq": last + 5}
                bogus |= {"changes": [["bid", 1, 999]], "ts": 0, "last_seq": 0}
                await nc.publish(update_subject(stream, SYMBOL), msgspec.json.encode(bogus))
                await nc.flush()
                await nc.close()
                wait = time.monotonic() + 20
                while metric(md_base, "loom_md_feed_resyncs_total", '{reason="gap"}') < 1:
                    assert time.monotonic() < wait, "the marketdata process never saw the gap"
                    await asyncio.sleep(0.05)
                await trade_flow(trader, 8, base=20_000)
                last = (await (await s.get(f"{node.base}/v1/book/{SYMBOL}")).json())["md_seq"]
                for c in (on_node, on_md):
                    await c.until(lambda c=c: any(m["seq"] == last for m in c.of("l2update")))
                assert updates(on_md, since) == updates(on_node, since)  # the bogus level never showed
                snap = await on_md.request("resync", channel="book", symbol=SYMBOL)
                book = await (await s.get(f"{node.base}/v1/book/{SYMBOL}?depth=50")).json()
                assert snap["seq"] == book["md_seq"] and snap["bids"] == [lv[:2] for lv in book["bids"]], snap

        asyncio.run(main())
    finally:
        if md_proc is not None:
            stop(md_proc)
        node.stop()


def test_a_marketdata_process_follows_a_new_leader_with_its_subscribers_seqs_still_increasing(
    nats_cluster, tmp_path
):
    """The new leader counts its own seqs: the process resyncs from it (reason "leader") and
    offsets them, so a subscriber that stays connected sees no step back, and no gap it could
    not apply: its book then equals the new leader's."""
    stream, _prefix = unique_stream()
    a = NodeProcess("a", nats_cluster.urls, tmp_path, stream)
    b = NodeProcess("b", nats_cluster.urls, tmp_path, stream)
    md_proc = None
    try:
        a.start()
        wait_for("a to lead", lambda: a.status().get("role") == "leader")
        md_proc, md_base = start_marketdata(nats_cluster.urls, stream, tmp_path / "marketdata.log")
        wait_for("marketdata in sync", lambda: http("GET", md_base + "/readyz")[0] == 200, timeout=60)

        async def orders(base: str, n: int, price: int) -> None:
            async with aiohttp.ClientSession() as s:
                trader = Client(await s.ws_connect(base.replace("http", "ws") + "/v1/ws"))
                assert (await trader.request("auth", api_key=TRADER_KEY))["type"] == "authenticated"
                await trade_flow(trader, n, base=price)

        async def main() -> None:
            async with aiohttp.ClientSession() as s:
                on_md = await subscribe(s, md_base)
                await orders(a.base, 12, 10_000)
                last = (await (await s.get(f"{a.base}/v1/book/{SYMBOL}")).json())["md_seq"]
                await on_md.until(lambda: any(m["seq"] == last for m in on_md.of("l2update")))
                # b starts now: it recovers this book from the stream, its seqs counting from 0.
                await asyncio.to_thread(b.start)
                await asyncio.to_thread(wait_for, "b to follow", lambda: b.status().get("role") == "standby")
                a.kill()
                wait_for("b to lead", lambda: b.status().get("role") == "leader", timeout=60)
                await orders(b.base, 12, 20_000)
                wanted = await (await s.get(f"{b.base}/v1/book/{SYMBOL}?depth=50")).json()
                wanted = {side: [lv[:2] for lv in wanted[side]] for side in ("bids", "asks")}
                snapshot = on_md.of("l2snapshot")[0]
                book = {
                    "bid": {p: q for p, q in snapshot["bids"]},
                    "ask": {p: q for p, q in snapshot["asks"]},
                }
                seq = snapshot["seq"]

                def caught_up() -> bool:
                    nonlocal seq
                    for m in on_md.of("l2update"):
                        if m["seq"] <= seq:
                            continue
                        assert m["prev_seq"] <= seq, (m, seq)  # never a gap this subscriber must resync
                        for side, price, qty in m["changes"]:
                            if qty:
                                book[side][price] = qty
                            else:
                                book[side].pop(price, None)
                        seq = m["seq"]
                    bids = sorted(([p, q] for p, q in book["bid"].items()), reverse=True)
                    return (
                        bids == wanted["bids"]
                        and sorted([p, q] for p, q in book["ask"].items()) == wanted["asks"]
                    )

                deadline = time.monotonic() + 30
                while not caught_up():
                    assert time.monotonic() < deadline, (seq, book, wanted)
                    await on_md.next()
                assert seq > last, (seq, last)
                assert metric(md_base, "loom_md_feed_resyncs_total", '{reason="leader"}') >= 1

        asyncio.run(main())
    finally:
        if md_proc is not None:
            stop(md_proc)
        b.stop()
        a.stop()


def test_loom_marketdata_refuses_bad_input_in_one_line(nats_cluster):
    """Not a NATS URL, no NATS server, the HTTP port taken: one line naming what is wrong and a
    non-zero exit, never a traceback."""
    import socket

    def run(*args: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "engine.cli", "marketdata", *args]
        done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=60)
        assert "Traceback" not in done.stderr + done.stdout, done
        return done

    done = run("--cluster", "localhost:4222")
    assert done.returncode == 2 and "--cluster needs nats:// URLs, not 'localhost:4222'" in done.stderr, done
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: nothing answers there
        done = run("--cluster", f"nats://127.0.0.1:{port}", "--http-port", "0")
    assert done.returncode == 1 and f"no NATS server answered at nats://127.0.0.1:{port}" in done.stderr, done
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run("--cluster", nats_cluster.urls[0], "--http-port", str(port))
    assert done.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in done.stderr, done
