"""Cheap pre-logon connections (issue 13): the loop's deadline wheel, and connections that
have sent nothing costing no task, stream or session until their first bytes.

A flood of 20,000 idle sockets stalled the event loop (ack p99 100-178x its quiet figure):
each FIX connection had a serve task, a stream and a task waking every 0.5 s, each HTTP one an
aiohttp handler, and every deadline its own timer, so a connect burst expired as one burst."""

from __future__ import annotations

import asyncio
import gc
import time
import types

from test_admission import (
    DEADLINES,
    KEY,
    _binary_frame,
    _connect,
    _frames,
    _get_metrics,
    _metric,
    _read_until_closed,
    _run,
)
from test_fix_server import Peer, start, stop

from engine.gateways.admission import LOGIN_TIMEOUT, Admission, _Gate
from engine.gateways.binary import protocol as p
from engine.gateways.deadlines import DeadlineWheel
from engine.gateways.fix.server import fix_gateway, refusal_logout, start_fix_server, stop_fix_server


def test_the_wheel_fires_each_deadline_once_in_time_and_spreads_a_wave_over_loop_turns():
    async def main():
        loop = asyncio.get_running_loop()
        wheel = DeadlineWheel(loop, resolution=0.05, batch=100)
        wave: list[int] = []
        fired: list[tuple[str, float, int]] = []  # (name, when, how much of the wave had run)
        now = loop.time()
        wheel.add(now + 0.4, lambda: fired.append(("late", loop.time(), len(wave))))
        wheel.add(now + 0.1, lambda: fired.append(("early", loop.time(), len(wave))))  # re-arms sooner
        for i in range(350):
            wheel.add(now + 0.2, lambda i=i: wave.append(i))
        seen_between: list[int] = []

        def probe() -> None:  # I/O's stand-in: how far the wave got when the loop turned
            if len(wave) < 350:
                seen_between.append(len(wave))
                loop.call_soon(probe)

        loop.call_at(now + 0.2, probe)
        await asyncio.sleep(0.7)
        # In deadline order: early before the wave, late after all of it; never before its
        # deadline (how late each one fires depends on this VM's load, so it is not asserted).
        assert [(name, ran) for name, _, ran in fired] == [("early", 0), ("late", 350)]
        (_, early, _), (_, late, _) = fired
        assert now + 0.1 <= early and now + 0.4 <= late
        assert wave == list(range(350))
        assert wheel.fired == 352 and len(wheel) == 0
        # 350 due at once ran in batches of 100 with the loop turning between them.
        assert any(0 < n < 350 for n in seen_between), seen_between

    asyncio.run(main())


def test_an_expiry_wave_is_paced_over_time_not_only_over_loop_turns():
    # Session 7: 10,000 connections a flood opened in one burst expired within ~0.2 s (a
    # batch per loop turn), and their reconnects came back as one accept storm: the ack p99
    # of the orders in those seconds rose 10-20x. A wave now runs `batch` per `pace`.
    async def main():
        loop = asyncio.get_running_loop()
        wheel = DeadlineWheel(loop, resolution=0.05, batch=100, pace=0.1)
        ran_at: list[float] = []
        due = loop.time() + 0.05
        for _ in range(300):
            wheel.add(due, lambda: ran_at.append(loop.time()))
        async with asyncio.timeout(5):
            while len(ran_at) < 300:
                await asyncio.sleep(0.02)
        # Three batches, a pace apart at least (a timer never fires early by more than the
        # loop's clock rounding, 1 ms): before, all 300 ran within a few loop turns.
        assert ran_at[99] - ran_at[0] < ran_at[100] - ran_at[99]
        assert ran_at[100] - ran_at[99] >= 0.099 and ran_at[200] - ran_at[199] >= 0.099
        assert wheel.fired == 300 and len(wheel) == 0

    asyncio.run(main())


def test_silent_binary_connections_cost_no_session_and_are_told_their_login_timed_out(tmp_path):
    with _run(tmp_path, DEADLINES) as (_proc, ports):
        silent = [_connect(ports["binary"], "127.0.0.2") for _ in range(20)]
        metrics = _get_metrics(ports["http"])
        deadline = time.monotonic() + 5
        while _metric(metrics, "loom_connections", protocol="binary") < 20:
            assert time.monotonic() < deadline, "the node never counted the 20 connections"
            metrics = _get_metrics(ports["http"])
        # Before: a BinarySession (decoder, token bucket, in-flight window, watch) each.
        assert _metric(metrics, "loom_sessions", protocol="binary") == 0
        # One that speaks gets its session then, and logs on as before.
        trader = _connect(ports["binary"])
        trader.sendall(p.encode_login(KEY))
        assert type(_binary_frame(trader)) is p.LoginAck
        assert _metric(_get_metrics(ports["http"]), "loom_sessions", protocol="binary") == 1
        # The silent ones are told their Login timed out, as a session would tell them.
        for sock in silent:
            data, _ = _read_until_closed(sock, 5)
            assert _frames(data) == [p.Error(p.ErrorCode.LOGIN_TIMEOUT, "no Login within 1 s")]
            sock.close()
        metrics = _get_metrics(ports["http"])
        assert (
            _metric(metrics, "loom_connection_timeouts_total", protocol="binary", reason="login_timeout")
            == 20
        )
        trader.close()


def test_silent_fix_connections_cost_no_task_and_meet_the_logon_deadline_from_connect(tmp_path):
    async def main():
        node, service, server, _port = await start(tmp_path, logon_timeout=1.0)
        gateway = fix_gateway(server)
        await stop_fix_server(server)
        # The same service behind a listener gated as `loom run` gates it.
        admission = Admission("fix", 200, 200, refusal_logout)
        server = await start_fix_server(
            service,
            gateway.router,
            gateway.order_store,
            gateway.accounts,
            "127.0.0.1",
            0,
            tmp_path / "fix2",
            config=gateway.config,
            timer_interval=0.05,
            admission=admission,
        )
        gateway = fix_gateway(server)
        port = server.sockets[0].getsockname()[1]
        try:
            tasks_before = len(asyncio.all_tasks())
            idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(50)]
            opened = time.monotonic()
            async with asyncio.timeout(5):
                while admission.open < 50:
                    await asyncio.sleep(0.01)
            # Before: a serve task and a timer task per connection (+100).
            assert len(asyncio.all_tasks()) - tasks_before < 5
            assert admission.silent == 50
            assert gateway.session_states()["awaiting_logon"] == 50
            # One speaks after 0.6 s, but never completes a Logon: the deadline still counts
            # from its connect (before the session was built lazily it would be 1.6 s).
            await asyncio.sleep(0.6)
            _reader, talker = idle[0]
            talker.write(b"8=FIX.4.4\x01")
            # Another logs on in time and trades as before.
            peer = await Peer.connect(port, "LATE1")
            assert (await peer.logon()).msg_type == "A"
            async with asyncio.timeout(5):
                data = await idle[0][0].read()
            closed_after = time.monotonic() - opened
            assert data == b"" and closed_after < 1.5, closed_after
            for reader, _writer in idle[1:]:
                async with asyncio.timeout(5):
                    assert await reader.read() == b""  # closed silently, as a session would be
            assert admission.timeouts[LOGIN_TIMEOUT] == 50
            assert admission.silent == 0 and gateway.session_states()["awaiting_logon"] == 0
            assert gateway.session_states()["logged_on"] == 1
            peer.close()
            for _reader, writer in idle:
                writer.close()
        finally:
            await stop(node, service, server)

    asyncio.run(main())


def test_a_silent_http_connection_is_closed_and_counted_and_a_speaking_one_is_served(tmp_path):
    with _run(tmp_path, DEADLINES) as (_proc, ports):
        silent = _connect(ports["http"])
        _read_until_closed(silent, 5)  # fails if the server has not closed it
        # A connection that speaks after a pause gets its handler then, and an answer.
        late = _connect(ports["http"])
        time.sleep(0.5)
        late.sendall(b"GET /healthz HTTP/1.1\r\nHost: loom\r\nConnection: close\r\n\r\n")
        late.settimeout(5)
        assert late.recv(4096).startswith(b"HTTP/1.1 200")
        late.close()
        metrics = _get_metrics(ports["http"])
        # Before: aiohttp's keep-alive timer closed it uncounted.
        assert _metric(metrics, "loom_connection_timeouts_total", protocol="http", reason="idle_timeout") == 1
        silent.close()


def test_a_refusal_is_built_at_most_once_a_second_per_reason():
    built: list[str] = []
    now = [100.0]

    def refusal(text: str) -> bytes:
        built.append(text)
        return f"refused {len(built)}: {text}".encode()

    admission = Admission("fix", 1, 1, refusal, clock=lambda: now[0])
    assert admission.admit("10.0.0.1") is None
    first = admission.refusal(admission.admit("10.0.0.2"))
    assert admission.refusal(admission.admit("10.0.0.3")) is first  # the same bytes, not rebuilt
    now[0] += 1.0
    again = admission.refusal(admission.admit("10.0.0.4"))
    assert again != first and again.startswith(b"refused 2: the fix listener is at its 1 connections")
    assert admission.refused["listener_full"] == 3 and len(built) == 2


def test_a_silent_connection_is_its_own_deadline_callback_and_still_meets_it():
    # Session 8: a full GC pass under a 20,000-connection flood walked ~6 objects per held
    # connection; one was the bound method the deadline wheel held for it. The gate is now
    # the wheel's callback itself. The deadline still closes it, with its farewell.
    async def main():
        loop = asyncio.get_running_loop()
        admission = Admission("binary", 100, 100, refusal_logout)
        factory = admission.lazy_gate(lambda _opened: asyncio.Protocol(), 0.3, farewell=b"bye")
        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        async with asyncio.timeout(5):
            while admission.silent < 20:
                await asyncio.sleep(0.01)
        gates = [o for o in gc.get_objects() if type(o) is _Gate and o._admission is admission]
        assert len(gates) == 20
        # (an event loop may cache a bound data_received of its protocol: not the wheel's)
        bound = [
            o
            for o in gc.get_objects()
            if type(o) is types.MethodType
            and type(o.__self__) is _Gate
            and o.__self__._admission is admission
            and o.__name__ != "data_received"
        ]
        assert bound == [], bound[:3]
        for reader, writer in clients:
            async with asyncio.timeout(5):
                assert await reader.read() == b"bye"  # told, then closed (EOF)
            writer.close()
        assert admission.timeouts[LOGIN_TIMEOUT] == 20 and admission.silent == 0
        server.close()

    asyncio.run(main())


def test_the_default_wheel_runs_a_wave_in_small_batches():
    # Session 8: 64 closes per 10 ms held the loop 0.3-0.5 ms a batch; the same rate in
    # batches of 16 every 2.5 ms keeps an order read during a wave behind fewer of them.
    async def main():
        loop = asyncio.get_running_loop()
        wheel = DeadlineWheel(loop)
        ran: list[int] = []
        due = loop.time() + 0.01
        for i in range(160):
            wheel.add(due, lambda i=i: ran.append(i))
        per_turn: list[int] = []
        seen = [0]

        def probe() -> None:  # once per loop turn: how many ran since the last turn
            per_turn.append(len(ran) - seen[0])
            seen[0] = len(ran)
            if len(ran) < 160:
                loop.call_soon(probe)

        probe()
        async with asyncio.timeout(5):
            while len(ran) < 160:
                await asyncio.sleep(0.01)
        assert ran == list(range(160))
        assert 0 < max(per_turn) <= 16, per_turn

    asyncio.run(main())
