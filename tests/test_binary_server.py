"""The binary gateway against a real ExchangeNode (journal with fdatasync) + ExchangeService
+ ExecutionRouter, on 127.0.0.1 with an OS-chosen port, driven by the package's client.

No fixed sleeps: every wait is on a frame (with a timeout) or on the connection closing."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from contextlib import asynccontextmanager

import pytest

from engine.auth import Accounts
from engine.core.domain import CancelReason, Instrument, RejectReason, RequestKind, SelfTradePrevention, Side
from engine.exchange import ExchangeNode, NodeConfig
from engine.gateways.binary import protocol as p
from engine.gateways.binary.client import BinaryClient, ConnectionClosed, LoginRefused
from engine.gateways.binary.protocol import ErrorCode, FrameType
from engine.gateways.binary.server import binary_sessions, start_binary_server, stop_binary_server
from engine.journal.segments import FileJournal
from engine.routing import ExecutionRouter
from engine.service import ExchangeService

ALICE_KEY = "alice-secret-key-0123456789abcd"
BOB_KEY = "bob-secret-key-0123456789abcdef"
KEYS = {ALICE_KEY: "alice", BOB_KEY: "bob"}
BTC = "BTC-USD"
INSTRUMENTS = (Instrument(BTC, tick_size=1, lot_size=1), Instrument("ETH-USD"))
BUY, SELL = int(Side.BUY), int(Side.SELL)
WAIT = 10.0  # seconds: the longest any single frame may take


class Harness:
    def __init__(self, node: ExchangeNode, service: ExchangeService, server) -> None:
        self.node = node
        self.service = service
        self.server = server
        self.port = server.sockets[0].getsockname()[1]
        self.clients: list[BinaryClient] = []
        self.expect_crash = False  # the commit loop is made to fail on purpose

    @property
    def last_seq(self) -> int:
        return self.node.journal.last_seq

    async def connect(self, key: str | None = ALICE_KEY, **kw) -> BinaryClient:
        client = await BinaryClient.connect("127.0.0.1", self.port, key, **kw)
        self.clients.append(client)
        return client


@asynccontextmanager
async def running(tmp_path, **server_kw):
    node = ExchangeNode(
        NodeConfig(tmp_path / "data", INSTRUMENTS, snapshot_every_commands=0, snapshot_every_s=0)
    )
    service = server = harness = None
    try:
        service = ExchangeService(node)
        router = ExecutionRouter()
        service.add_listener(router.on_batch)
        service.start()
        server = await start_binary_server(service, router, Accounts(KEYS), "127.0.0.1", 0, **server_kw)
        harness = Harness(node, service, server)
        yield harness
    finally:
        if harness is not None:
            for client in harness.clients:
                await client.aclose()
        if server is not None:
            await stop_binary_server(server)
        if service is not None:
            try:
                await service.stop()
            except RuntimeError:
                if harness is None or not harness.expect_crash:
                    raise
        node.close()


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))


async def take(client: BinaryClient, n: int) -> list:
    return [await client.recv(WAIT) for _ in range(n)]


async def take_until(client: BinaryClient, done) -> list:
    """Frames up to and including the first one for which done(frame) is true."""
    frames = []
    while True:
        frame = await client.recv(WAIT)
        frames.append(frame)
        if done(frame):
            return frames


async def assert_closed_by_server(client: BinaryClient) -> list:
    """Read to the end of the stream (the server must close it); the frames before the end."""
    frames = []
    with pytest.raises(ConnectionClosed):
        while True:
            frames.append(await client.recv(WAIT))
    await client.wait_closed(WAIT)
    return frames


def order(ref: int, side: int = BUY, price: int = 100, qty: int = 10, **kw) -> bytes:
    fields = dict(symbol=BTC, side=side, order_type=2, tif=1, post_only=False, stp=1, price=price, qty=qty)
    fields.update(kw)
    return p.encode_new_order(ref, **fields)


# -- login ---------------------------------------------------------------------------------


def test_login_success_names_the_account_and_the_limits(tmp_path):
    async def main():
        async with running(tmp_path, rate=100, burst=50) as h:
            alice = await h.connect(ALICE_KEY)
            assert alice.login_ack == p.LoginAck(p.PROTOCOL_VERSION, 100, 50, "alice")
            assert alice.account == "alice"
            alice.heartbeat(0xDEADBEEF)
            assert await alice.recv(WAIT) == p.Heartbeat(0xDEADBEEF)
            (session,) = binary_sessions(h.server)
            assert session.account == "alice"

    run(main())


def test_wrong_key_is_refused_and_the_connection_closed(tmp_path):
    async def main():
        async with running(tmp_path) as h:
            with pytest.raises(LoginRefused) as refused:
                await h.connect("not-a-valid-key-at-all-0000")
            assert refused.value.reason == p.LoginRejectReason.BAD_CREDENTIALS

            # by hand: orders pipelined behind a refused login are never executed
            raw = await h.connect(None)
            before = h.last_seq
            # (nor may a second login in the same write get past the refusal)
            raw.send(p.encode_login("not-a-valid-key-at-all-0000") + p.encode_login(ALICE_KEY) + order(1))
            frames = await assert_closed_by_server(raw)
            assert frames == [p.LoginReject(p.LoginRejectReason.BAD_CREDENTIALS, p.PROTOCOL_VERSION)]
            assert h.last_seq == before

    run(main())


def test_unsupported_version_is_refused(tmp_path):
    async def main():
        async with running(tmp_path) as h:
            with pytest.raises(LoginRefused) as refused:
                await h.connect(ALICE_KEY, version=p.PROTOCOL_VERSION + 1)
            assert refused.value.reason == p.LoginRejectReason.UNSUPPORTED_VERSION
            assert refused.value.version == p.PROTOCOL_VERSION

    run(main())


def test_requests_before_login_are_refused_without_touching_the_journal(tmp_path):
    async def main():
        async with running(tmp_path) as h:
            raw = await h.connect(None)
            before = h.last_seq
            raw.send(order(1) + p.encode_cancel(5) + p.encode_heartbeat(7))
            err1, err2, err3 = await take(raw, 3)
            # Issue 13: a Heartbeat before Login is refused like the rest (it was echoed,
            # which let a connection that never logs on look alive).
            assert err1 == err2 == err3 == p.Error(ErrorCode.NOT_LOGGED_IN, "log in first")
            raw.send(p.encode_login(ALICE_KEY) + order(2) + p.encode_login(ALICE_KEY))
            ack, err, accepted = await take(raw, 3)
            assert type(ack) is p.LoginAck and ack.account == "alice"
            assert err.code == ErrorCode.ALREADY_LOGGED_IN  # immediate; the order's ack is later
            assert type(accepted) is p.Accepted and accepted.client_ref == 2
            assert h.last_seq == before + 1

    run(main())


# -- orders --------------------------------------------------------------------------------


def test_order_is_journaled_and_synced_before_its_accepted_frame(tmp_path, monkeypatch):
    syncs = []
    real_fdatasync = os.fdatasync

    def counting_fdatasync(fd):
        real_fdatasync(fd)
        syncs.append(fd)

    monkeypatch.setattr(os, "fdatasync", counting_fdatasync)

    async def main():
        async with running(tmp_path) as h:
            seen: asyncio.Queue = asyncio.Queue()

            def on_frames(frames):  # runs the moment the frames are decoded
                for frame in frames:
                    seen.put_nowait((frame, h.last_seq, len(syncs)))

            alice = await h.connect(ALICE_KEY, on_frames=on_frames)
            syncs_before = len(syncs)
            alice.new_order(41, BTC, SELL, price=105, qty=7)
            frame, durable_seq, syncs_then = await asyncio.wait_for(seen.get(), WAIT)
            assert type(frame) is p.Accepted
            assert frame.seq > 0 and frame.seq <= durable_seq, "acknowledged before the journal held it"
            assert syncs_then > syncs_before, "acknowledged before any fdatasync"
            assert (frame.client_ref, frame.symbol, frame.side, frame.price, frame.qty) == (
                41,
                BTC,
                SELL,
                105,
                7,
            )

            # and the record is on disk: a separate read-only journal over the same files
            journal = FileJournal(tmp_path / "data" / "journal", read_only=True)
            try:
                (cmd,) = [c for c in journal.read(frame.seq) if c.seq == frame.seq]
            finally:
                journal.close()
            assert (cmd.account, cmd.client_order_id, cmd.price, cmd.qty) == ("alice", "41", 105, 7)

    run(main())


def test_a_fill_between_two_accounts_reaches_both_sessions(tmp_path):
    async def main():
        async with running(tmp_path) as h:
            alice = await h.connect(ALICE_KEY)
            bob = await h.connect(BOB_KEY)
            alice.new_order(1, BTC, SELL, price=100, qty=5)
            (resting,) = await take(alice, 1)
            assert type(resting) is p.Accepted
            bob.new_order(2, BTC, BUY, price=100, qty=3)
            accepted, taker_fill, done = await take(bob, 3)
            assert type(accepted) is p.Accepted and accepted.client_ref == 2
            (maker_fill,) = await take(alice, 1)
            assert taker_fill == p.Fill(
                accepted.seq,
                accepted.ts,
                taker_fill.trade_id,
                accepted.order_id,
                BUY,
                p.Liquidity.TAKER,
                100,
                3,
                0,
            )
            assert maker_fill == p.Fill(
                accepted.seq,
                accepted.ts,
                taker_fill.trade_id,
                resting.order_id,
                SELL,
                p.Liquidity.MAKER,
                100,
                3,
                2,
            )
            assert done == p.Done(accepted.seq, accepted.ts, accepted.order_id, 3)

    run(main())


def test_a_self_trade_gives_the_account_both_fills(tmp_path):
    async def main():
        async with running(tmp_path) as h:
            alice = await h.connect(ALICE_KEY)
            none = int(SelfTradePrevention.NONE)
            alice.send(order(1, SELL, 100, 2, stp=none) + order(2, BUY, 100, 2, stp=none))
            frames = await take_until(alice, lambda f: type(f) is p.Done and f.filled_qty == 2)
            frames += await take_until(alice, lambda f: type(f) is p.Done)
            fills = [f for f in frames if type(f) is p.Fill]
            assert {(f.liquidity, f.side) for f in fills} == {
                (p.Liquidity.MAKER, SELL),
                (p.Liquidity.TAKER, BUY),
            }
            assert len({f.trade_id for f in fills}) == 1

    run(main())


def test_cancel_amend_and_cancel_all(tmp_path):
    async def main():
        async with running(tmp_path) as h:
            alice = await h.connect(ALICE_KEY)
            alice.send(order(10, BUY, 100, 10) + order(11, BUY, 99, 5))
            a10, a11 = await take(alice, 2)
            assert (a10.client_ref, a11.client_ref) == (10, 11)

            alice.amend(client_ref=10, new_qty=6)  # down in size: keeps its place
            (amended,) = await take(alice, 1)
            assert amended[2:] == (a10.order_id, 10, 100, 6, 6, True)
            alice.amend(order_id=a10.order_id, new_price=101, new_client_ref=12)
            (amended,) = await take(alice, 1)
            assert amended[2:] == (a10.order_id, 12, 101, 6, 6, False)

            alice.cancel(client_ref=11)
            (cancelled,) = await take(alice, 1)
            assert cancelled[2:] == (a11.order_id, CancelReason.USER, 5, 0)
            alice.cancel(order_id=a11.order_id)
            (rejected,) = await take(alice, 1)
            assert type(rejected) is p.Rejected and rejected.seq > 0
            assert (rejected.request, rejected.reason) == (RequestKind.CANCEL, RejectReason.UNKNOWN_ORDER)
            assert rejected.order_id == a11.order_id
            alice.amend(order_id=999_999, new_qty=1)
            (rejected,) = await take(alice, 1)
            assert (rejected.request, rejected.reason, rejected.order_id) == (
                RequestKind.AMEND,
                RejectReason.UNKNOWN_ORDER,
                999_999,
            )

            alice.cancel_all()
            cancelled, mass = await take(alice, 2)
            assert (cancelled.order_id, cancelled.reason, cancelled.cancelled_qty) == (
                a10.order_id,
                CancelReason.CANCEL_ALL,
                6,
            )
            assert mass == p.MassCancelled(cancelled.seq, cancelled.ts, 1)
            alice.cancel_all(BTC)
            (mass,) = await take(alice, 1)
            assert type(mass) is p.MassCancelled and mass.count == 0
            alice.cancel_all("NOPE-USD")
            (rejected,) = await take(alice, 1)
            assert (rejected.request, rejected.reason) == (
                RequestKind.CANCEL_ALL,
                RejectReason.UNKNOWN_SYMBOL,
            )

    run(main())


def test_many_orders_in_one_write_are_acknowledged_in_order(tmp_path):
    async def main():
        async with running(tmp_path, rate=0) as h:
            alice = await h.connect(ALICE_KEY)
            n = 2000
            batches_before, seq_before = h.service.batches, h.last_seq
            # buys below 100 and sells above it: nothing crosses, one Accepted each
            alice.send(
                b"".join(order(i, BUY if i % 2 else SELL, 90 + 20 * (i % 2 == 0), 1) for i in range(1, n + 1))
            )
            acks = await take(alice, n)
            assert [type(a) for a in acks] == [p.Accepted] * n
            assert [a.client_ref for a in acks] == list(range(1, n + 1))
            assert [a.seq for a in acks] == list(range(seq_before + 1, seq_before + n + 1))
            assert h.last_seq == seq_before + n
            # one submission per read, not per order: the group commits are large
            assert h.service.batches - batches_before <= n // 20

    run(main())


def test_backpressure_pauses_reading_and_loses_nothing(tmp_path):
    async def main():
        async with running(tmp_path, rate=0, max_in_flight=1) as h:
            alice = await h.connect(ALICE_KEY)
            n = 1500
            for start in range(1, n + 1, 100):
                alice.send(b"".join(order(i, BUY, 90, 1) for i in range(start, start + 100)))
            acks = await take(alice, n)
            assert [a.client_ref for a in acks] == list(range(1, n + 1))
            (session,) = binary_sessions(h.server)
            assert session.read_pauses >= 1
            assert session.requests == n

    run(main())


# -- bad input -----------------------------------------------------------------------------


def test_garbage_and_malformed_frames_get_errors_and_the_session_keeps_working(tmp_path):
    async def main():
        async with running(tmp_path) as h:
            alice = await h.connect(ALICE_KEY)
            before = h.last_seq
            garbage = (
                bytes.fromhex("2000c7") + bytes.fromhex("5e1f00a3b2ff0d0a" * 4)[:31]
            )  # length 32, type 0xC7
            wrong_length = b"\x06\x00\x02hello"  # a NewOrder of length 6
            bad_symbol = p.FRAME[FrameType.NEW_ORDER].pack(46, 2, 1, "BTC€".encode(), 1, 2, 1, 0, 1, 100, 1)
            bad_side = p.FRAME[FrameType.NEW_ORDER].pack(46, 2, 1, BTC.encode(), 9, 2, 1, 0, 1, 100, 1)
            bad_flags = p.FRAME[FrameType.NEW_ORDER].pack(46, 2, 1, BTC.encode(), 1, 2, 1, 0x40, 1, 100, 1)
            server_frame = p.encode_done(1, 1, 1, 1)  # a server->client type sent to the server
            alice.send(garbage + wrong_length + bad_symbol + bad_side + bad_flags + server_frame)
            errors = await take(alice, 6)
            assert [type(e) for e in errors] == [p.Error] * 6
            assert [e.code for e in errors] == [
                ErrorCode.UNKNOWN_TYPE,
                ErrorCode.BAD_LENGTH,
                ErrorCode.BAD_SYMBOL,
                ErrorCode.BAD_ENUM,
                ErrorCode.BAD_FIELD,
                ErrorCode.UNKNOWN_TYPE,
            ]
            assert "0xc7" in errors[0].text and "side 9" in errors[3].text
            assert h.last_seq == before  # nothing malformed reached the journal

            alice.send(order(5, BUY, 95, 1) + p.encode_heartbeat(1))
            hb, accepted = await take(alice, 2)  # the echo is immediate, the ack after the commit
            assert hb == p.Heartbeat(1)
            assert type(accepted) is p.Accepted and accepted.client_ref == 5
            assert h.last_seq == before + 1

    run(main())


def test_an_impossible_length_closes_only_that_connection(tmp_path):
    async def main():
        async with running(tmp_path) as h:
            alice = await h.connect(ALICE_KEY)
            bob = await h.connect(BOB_KEY)
            before = h.last_seq
            # a valid order, then a length no frame can have, then what would be an order
            alice.send(order(1, BUY, 95, 1) + b"\xff\x7f\x02" + order(2, BUY, 95, 1))
            frames = await assert_closed_by_server(alice)
            assert frames[0] == p.Error(ErrorCode.FRAME_TOO_LARGE, "impossible frame length 32767")
            # the request before the bad bytes was answered before the close; the rest ignored
            assert [(type(f), f.client_ref) for f in frames[1:]] == [(p.Accepted, 1)]
            assert h.last_seq == before + 1

            bob.new_order(3, BTC, SELL, price=105, qty=1)
            (accepted,) = await take(bob, 1)
            assert type(accepted) is p.Accepted and accepted.client_ref == 3
            again = await h.connect(ALICE_KEY)  # and alice may come back
            again.new_order(4, BTC, BUY, price=95, qty=1)
            (accepted,) = await take(again, 1)
            assert accepted.client_ref == 4

    run(main())


def test_unknown_symbol_is_an_engine_rejection(tmp_path):
    async def main():
        async with running(tmp_path) as h:
            alice = await h.connect(ALICE_KEY)
            alice.new_order(9, "DOGE-USD", BUY, price=1, qty=1)
            (rejected,) = await take(alice, 1)
            assert (rejected.request, rejected.reason, rejected.client_ref) == (
                RequestKind.NEW,
                RejectReason.UNKNOWN_SYMBOL,
                9,
            )
            assert rejected.seq == h.last_seq  # sequenced like any command

    run(main())


# -- limits and failures -------------------------------------------------------------------


def test_rate_limit_refuses_the_excess_without_journaling_it(tmp_path):
    now = [1000.0]

    async def main():
        async with running(tmp_path, rate=8, burst=5, clock=lambda: now[0]) as h:
            alice = await h.connect(ALICE_KEY)
            assert (alice.login_ack.rate, alice.login_ack.burst) == (8, 5)
            before = h.last_seq
            alice.send(b"".join(order(i, BUY, 90, 1) for i in range(1, 9)))
            frames = await take(alice, 8)
            accepted = sorted(f.client_ref for f in frames if type(f) is p.Accepted)
            limited = [f for f in frames if type(f) is p.Rejected]
            assert accepted == [1, 2, 3, 4, 5]
            assert sorted(f.client_ref for f in limited) == [6, 7, 8]
            for f in limited:
                assert (f.seq, f.request, f.reason) == (
                    0,
                    RequestKind.NEW,
                    p.GatewayRejectReason.RATE_LIMITED,
                )
            assert h.last_seq == before + 5

            now[0] += 0.375  # three more tokens (exactly, in binary floating point)
            alice.send(p.encode_cancel(client_ref=1) + b"".join(order(i, BUY, 90, 1) for i in range(9, 12)))
            frames = await take(alice, 4)
            (limited,) = [f for f in frames if type(f) is p.Rejected]
            assert (limited.client_ref, limited.reason) == (11, p.GatewayRejectReason.RATE_LIMITED)
            assert sorted(type(f).__name__ for f in frames) == [
                "Accepted",
                "Accepted",
                "Cancelled",
                "Rejected",
            ]
            assert h.last_seq == before + 8

    run(main())


def test_an_unknown_outcome_is_reason_503_and_a_resend_is_taken_once_settled(tmp_path):
    async def main():
        async with running(tmp_path) as h:
            alice = await h.connect(ALICE_KEY)
            h.node.journal.fail_writes(errno.EIO, at="fsync")
            h.node.journal.fail_cuts(errno.EIO)
            alice.new_order(1, BTC, BUY, price=90, qty=1)
            (unknown,) = await take(alice, 1)
            assert (unknown.seq, unknown.reason, unknown.client_ref) == (0, RejectReason.OUTCOME_UNKNOWN, 1)
            assert RejectReason.OUTCOME_UNKNOWN == 503
            h.node.journal.fail_writes(None)
            h.node.journal.fail_cuts(None)
            alice.new_order(1, BTC, BUY, price=90, qty=1)  # the same client_ref
            (accepted,) = await take(alice, 1)
            assert type(accepted) is p.Accepted and accepted.client_ref == 1

    run(main())


def test_a_batch_the_journal_cannot_write_is_rejected(tmp_path):
    async def main():
        async with running(tmp_path) as h:
            alice = await h.connect(ALICE_KEY)
            h.node.journal.fail_writes(errno.ENOSPC)
            alice.new_order(1, BTC, BUY, price=90, qty=1)
            (rejected,) = await take(alice, 1)
            assert (rejected.seq, rejected.request, rejected.reason, rejected.client_ref) == (
                0,
                RequestKind.NEW,
                RejectReason.JOURNAL_WRITE_FAILED,
                1,
            )
            h.node.journal.fail_writes(None)
            alice.new_order(1, BTC, BUY, price=90, qty=1)  # safe to retry with the same ref
            (accepted,) = await take(alice, 1)
            assert type(accepted) is p.Accepted and accepted.client_ref == 1

    run(main())


def test_orders_after_shutdown_began_are_refused_as_unavailable(tmp_path):
    async def main():
        async with running(tmp_path) as h:
            alice = await h.connect(ALICE_KEY)
            await h.service.stop()
            before = h.last_seq
            alice.send(order(1) + p.encode_cancel(order_id=77))
            first, second = await take(alice, 2)
            reason = p.GatewayRejectReason.SERVICE_UNAVAILABLE
            assert (first.request, first.reason, first.client_ref) == (RequestKind.NEW, reason, 1)
            assert (second.request, second.reason, second.order_id) == (RequestKind.CANCEL, reason, 77)
            assert h.last_seq == before

    run(main())


def test_stopping_the_server_closes_its_sessions(tmp_path):
    async def main():
        async with running(tmp_path) as h:
            alice = await h.connect(ALICE_KEY)
            alice.new_order(1, BTC, BUY, price=90, qty=1)
            (accepted,) = await take(alice, 1)
            assert type(accepted) is p.Accepted
            await stop_binary_server(h.server)
            assert await assert_closed_by_server(alice) == []
            assert binary_sessions(h.server) == set()
            with pytest.raises(OSError):
                await BinaryClient.connect("127.0.0.1", h.port, ALICE_KEY, timeout=WAIT)

    run(main())


def test_a_client_that_does_not_read_is_dropped_as_a_slow_consumer(tmp_path):
    async def main():
        async with running(tmp_path, rate=0, max_output=4096) as h:
            alice = await h.connect(ALICE_KEY)
            bob = await h.connect(BOB_KEY)
            session = next(s for s in binary_sessions(h.server) if s.account == "alice")
            lost = asyncio.get_running_loop().create_future()
            real_connection_lost = session.connection_lost

            def spy(exc):
                real_connection_lost(exc)
                lost.set_result(exc)

            session.connection_lost = spy  # the transport calls it on the instance
            session._transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            alice._transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            alice._transport.pause_reading()  # alice stops reading her reports
            alice.send(b"".join(order(i, BUY, 90, 1) for i in range(1, 5001)))
            await asyncio.wait_for(lost, WAIT)
            assert session not in binary_sessions(h.server)

            alice._transport.resume_reading()
            frames = await assert_closed_by_server(alice)
            assert len(frames) < 5000  # dropped, not buffered without bound
            bob.new_order(1, BTC, SELL, price=110, qty=1)  # the server carries on
            (accepted,) = await take(bob, 1)
            assert type(accepted) is p.Accepted

    run(main())


def test_a_failed_commit_loop_ends_the_session_with_an_error(tmp_path):
    async def main():
        async with running(tmp_path) as h:
            alice = await h.connect(ALICE_KEY)
            bob = await h.connect(BOB_KEY)

            def broken(*_args):
                raise RuntimeError("a broken invariant")

            h.node.finish = broken  # where the engine applies a durable batch
            h.expect_crash = True
            alice.new_order(1, BTC, BUY, price=90, qty=1)
            frames = await assert_closed_by_server(alice)
            assert frames == [p.Error(ErrorCode.SERVICE_UNAVAILABLE, "exchange failed; reconnect")]
            # the service now refuses work: later requests are answered, not left hanging
            bob.new_order(2, BTC, SELL, price=110, qty=1)
            (rejected,) = await take(bob, 1)
            assert (rejected.seq, rejected.reason, rejected.client_ref) == (
                0,
                p.GatewayRejectReason.SERVICE_UNAVAILABLE,
                2,
            )

    run(main())
