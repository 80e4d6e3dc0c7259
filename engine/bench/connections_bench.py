"""`loom bench connections --idle N`: a connection flood against a real `loom run`.

The flood (in `--processes` processes of its own, each raising its RLIMIT_NOFILE): N idle
unauthenticated connections spread over the binary, FIX and HTTP listeners, a quarter of
the HTTP ones slowloris (a request head trickled one header line every few seconds), from
the source addresses 127.0.0.2-17 (so per-address caps apply to the flood, not to the
legitimate client on 127.0.0.1). A connection the node closes or refuses is reopened after
a pause, as an attacker would. Meanwhile a legitimate binary session places orders at
`--rate` a second and a kept-alive HTTP connection polls /healthz every 100 ms; the ack p99
is measured before and during the flood. `--nofile` starts the node under that
RLIMIT_NOFILE (`ulimit -n`): admission must refuse before the journal and snapshots lack
descriptors (an order acked and a snapshot written during the flood say so).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import resource
import time

from engine.bench.stats import percentile_us, process_cpu_s
from engine.load.spawn import LOAD_ACCOUNTS, LOAD_ADMIN_KEY, spawned_exchange

SOURCES = [f"127.0.0.{n}" for n in range(2, 18)]
SYMBOL = "LOAD-USD"
RECONNECT_S = 2.0  # an attacker's pause after the node closed or refused its connection
SLOW_HEADER_EVERY_S = 5.0
CONNECTING_AT_ONCE = 256  # per flood process
OWN_CONNECTIONS = 3  # the node's connections that are not the flood's: trader, health checker, bench


# -- the flood (its own processes) ---------------------------------------------------------


def _raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and need > hard:
        try:  # root (CAP_SYS_RESOURCE) may raise the hard limit too, up to fs.nr_open
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return
        except (ValueError, OSError):
            pass
    want = min(hard, max(soft, need)) if hard != resource.RLIM_INFINITY else max(soft, need)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def _one(kind: str, host: str, port: int, source: str, until: float, stats: dict, gate) -> None:
    """One attacker socket: connect, sit idle (or trickle a head), reconnect when dropped."""
    while time.monotonic() < until:
        try:
            async with gate:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port, local_addr=(source, 0)), 10
                )
        except (OSError, TimeoutError):
            stats["connect_errors"] += 1
            await asyncio.sleep(RECONNECT_S)
            continue
        opened = time.monotonic()
        stats["held"] += 1
        try:
            if kind == "slowloris":
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: loom\r\n")
            while time.monotonic() < until:
                try:
                    data = await asyncio.wait_for(reader.read(4096), SLOW_HEADER_EVERY_S)
                except TimeoutError:
                    if kind == "slowloris":
                        writer.write(b"X-Slow: 1\r\n")
                    continue
                # An answer at once is a refusal; later, a deadline's (then the close).
                refused = bool(data) and time.monotonic() - opened < 0.5
                stats["refused_seen" if refused else "closed_seen"] += 1
                break
        except OSError:
            stats["closed_seen"] += 1
        finally:
            stats["held"] -= 1
            writer.close()
        await asyncio.sleep(RECONNECT_S)


# -- idle AUTHENTICATED sessions (--authenticated) ---------------------------------------------

IDLE_KEY = list(LOAD_ACCOUNTS)[1]  # not the trader's account: no copy of its reports reaches them
KEEPALIVE_S = 20.0  # under the node's session_idle_s (60 s): a heartbeat / {"op": "ping"}


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame (masked, as RFC 6455 requires; a zero mask leaves the payload as is)."""
    return bytes((0x80 | opcode, 0x80 | len(payload))) + b"\0\0\0\0" + payload


async def _session(kind: str, host: str, port: int, source: str, until: float, stats: dict, gate) -> None:
    """One idle logged-on session: a binary Login or a WebSocket upgrade with the API key,
    then silence but for a keep-alive (and a pong to the node's pings); reopened if dropped."""
    from engine.gateways.binary import protocol as p

    while time.monotonic() < until:
        try:
            async with gate:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port, local_addr=(source, 0)), 10
                )
                if kind == "binary":
                    writer.write(p.encode_login(IDLE_KEY))
                    answer = await asyncio.wait_for(reader.read(4096), 10)
                    ok = len(answer) >= 3 and answer[2] == p.FrameType.LOGIN_ACK
                else:
                    writer.write(
                        f"GET /v1/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                        f"Sec-WebSocket-Version: 13\r\nX-API-Key: {IDLE_KEY}\r\n\r\n".encode()
                    )
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                    ok = head.startswith(b"HTTP/1.1 101")
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            stats["connect_errors"] += 1
            await asyncio.sleep(RECONNECT_S)
            continue
        if not ok:
            stats["refused_seen"] += 1
            writer.close()
            await asyncio.sleep(RECONNECT_S)
            continue
        stats["held"] += 1
        try:
            while time.monotonic() < until:
                try:
                    data = await asyncio.wait_for(reader.read(4096), KEEPALIVE_S)
                except TimeoutError:
                    writer.write(p.encode_heartbeat() if kind == "binary" else _ws_frame(1, b'{"op":"ping"}'))
                    continue
                if not data:
                    stats["closed_seen"] += 1
                    break
                if kind == "ws" and data[0] & 0x0F == 0x9 and len(data) >= 2:  # the node's ping
                    writer.write(_ws_frame(0xA, data[2 : 2 + (data[1] & 0x7F)]))
        except OSError:
            stats["closed_seen"] += 1
        finally:
            stats["held"] -= 1
            writer.close()
        await asyncio.sleep(RECONNECT_S)


async def _flood(
    host: str, ports: dict, count: int, offset: int, seconds: float, authenticated: bool = False, stop=None
) -> dict:
    stats = {"held": 0, "refused_seen": 0, "closed_seen": 0, "connect_errors": 0, "held_samples": []}
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
    until = time.monotonic() + seconds
    plan = ("binary", "fix", "http", "binary", "fix", "http", "binary", "fix", "http", "slowloris", "http")
    tasks = []
    for i in range(count):
        n = offset + i
        if authenticated:  # all logged on: a third binary, two thirds WebSocket (the node's caps)
            kind = "binary" if n % 3 == 0 else "ws"
            port = ports["binary" if kind == "binary" else "http"]
            source = SOURCES[(n // 3) % len(SOURCES)]
            tasks.append(asyncio.create_task(_session(kind, host, port, source, until, stats, gate)))
            continue
        kind = plan[n % len(plan)]
        port = ports["http" if kind == "slowloris" else kind]
        source = SOURCES[(n // len(plan)) % len(SOURCES)]
        tasks.append(asyncio.create_task(_one(kind, host, port, source, until, stats, gate)))
    while time.monotonic() < until and not (stop is not None and stop.is_set()):
        await asyncio.sleep(0.5)
        stats["held_samples"].append(stats["held"])
    if stop is not None and stop.is_set():  # the measurement is over before the longest ramp
        for task in tasks:
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return stats


def _flood_process(
    host: str,
    ports: dict,
    count: int,
    offset: int,
    seconds: float,
    out,
    nice: int = 0,
    auth: bool = False,
    stop=None,
) -> None:
    _raise_nofile(count + 256)
    if nice:  # the attacker's processes yield the shared cores, as one on another machine would
        os.nice(nice)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    stats = runner(_flood(host, ports, count, offset, seconds, auth, stop))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    stats["cpu_s"] = usage.ru_utime + usage.ru_stime
    out.put(stats)


# -- the legitimate client (this process) ----------------------------------------------------


class _Trader:
    """A binary session placing orders at a steady rate; latency from send to Accepted."""

    def __init__(self) -> None:
        self.sent: dict[int, int] = {}
        self.latencies: list[int] = []
        self.acked_at: list[int] = []  # perf_counter_ns of each latency's send, for the timeline
        self.rejected = 0
        self.next_ref = 1
        self.client = None

    async def connect(self, host: str, port: int, key: str) -> None:
        from engine.gateways.binary import protocol as p
        from engine.gateways.binary.client import BinaryClient

        accepted, rejected = p.Accepted, p.Rejected

        def on_frames(frames: list) -> None:
            now = time.perf_counter_ns()
            for f in frames:
                if type(f) is accepted:
                    sent = self.sent.pop(f.client_ref, None)
                    if sent is not None:
                        self.latencies.append(now - sent)
                        self.acked_at.append(sent)
                elif type(f) is rejected:
                    self.sent.pop(f.client_ref, None)
                    self.rejected += 1

        self.client = await BinaryClient.connect(host, port, key, on_frames=on_frames)

    async def trade(self, rate: int, seconds: float, tick: float = 0.01) -> list[int]:
        from engine.gateways.binary import protocol as p

        start = self.phase_start = len(self.latencies)
        self.phase_began_ns = time.perf_counter_ns()
        per_tick = max(1, int(rate * tick))
        began = time.perf_counter()
        ticks = int(seconds / tick)
        for n in range(ticks):
            frames = []
            for _ in range(per_tick):
                ref = self.next_ref
                self.next_ref += 1
                side, price = (1, 100) if ref % 2 else (2, 200)  # never crossing: no trades
                self.sent[ref] = time.perf_counter_ns()
                frames.append(p.encode_new_order(ref, SYMBOL, side, 2, 1, False, 1, price, 1))
            self.client.send_many(frames)
            await asyncio.sleep(max(0.0, began + (n + 1) * tick - time.perf_counter()))
        await asyncio.sleep(0.5)  # the last acks
        return self.latencies[start:]

    def timeline(self) -> list[float]:
        """The last phase's ack p99 (ms) per second of sending: when in the phase it is lost
        (the flood's connect, deadline-expiry and reconnect waves come at known times)."""
        by_second: dict[int, list[int]] = {}
        for sent, latency in zip(
            self.acked_at[self.phase_start :], self.latencies[self.phase_start :], strict=True
        ):
            by_second.setdefault(int((sent - self.phase_began_ns) / 1e9), []).append(latency)
        return [round(percentile_us(sorted(by_second[s]), 99) / 1000, 1) for s in sorted(by_second)]

    def split(self, at_ns: int) -> tuple[list[int], list[int]]:
        """The last phase's latencies of orders sent before `at_ns` (perf_counter_ns) and after."""
        early: list[int] = []
        late: list[int] = []
        for sent, latency in zip(
            self.acked_at[self.phase_start :], self.latencies[self.phase_start :], strict=True
        ):
            (early if sent < at_ns else late).append(latency)
        return sorted(early), sorted(late)


def _first_deadline_s() -> float:
    """The soonest an idle connection is closed by the default `[admission]` (the node's)."""
    from engine.gateways.admission import AdmissionSettings

    defaults = AdmissionSettings()
    return min(defaults.login_timeout_s, defaults.http_idle_s)


HEALTHZ_TIMEOUT_S = 2.0  # a health check's patience: a poll unanswered this long failed


async def _poll_healthz(session, base: str, stop: asyncio.Event, results: list[bool], failures: list) -> None:
    while not stop.is_set():
        try:
            async with session.get(f"{base}/healthz", timeout=HEALTHZ_TIMEOUT_S) as resp:
                results.append(resp.status == 200)
                if resp.status != 200:
                    failures.append(f"{resp.status} {(await resp.text())[:80]}")
        except Exception as exc:
            results.append(False)
            failures.append(repr(exc)[:120])
        await asyncio.sleep(0.1)


KEEP_ALIVE_S = 5.0  # well inside the node's keep-alive idle timeout ([admission] http_idle_s, 15 s)


async def _keep_alive(session, base: str, stop: asyncio.Event) -> None:
    """Keep the bench's own connection in use: left idle through the trading before the
    flood and the ramp (over 15 s), the node closed it, and the bench's next scrape or
    snapshot request opened a new one into a full listener: a 503, read as 0 refused and a
    failed snapshot (session 9)."""
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), KEEP_ALIVE_S)
        if not stop.is_set():
            # A failure shows in the scrapes that follow; this one only keeps the connection.
            with contextlib.suppress(Exception):
                async with session.get(f"{base}/healthz") as resp:
                    await resp.read()


async def _metric_sum(session, base: str, name: str) -> float:
    async with session.get(f"{base}/metrics") as resp:
        text = await resp.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


async def _full_collections(session, base: str) -> tuple[float, float]:
    """The node's full (generation 2) garbage collections so far: (count, seconds paused).
    Session 8: during a flood such a pass walks every held connection's objects (30-345 ms
    on a loaded VM): the during phase's share says whether a run's slow second was one."""
    async with session.get(f"{base}/metrics") as resp:
        text = await resp.text()
    found = {}
    for line in text.splitlines():
        for part in ("count", "sum"):
            if line.startswith(f'loom_gc_pause_seconds_{part}{{generation="2"}}'):
                found[part] = float(line.rsplit(" ", 1)[1])
    return found.get("count", 0.0), found.get("sum", 0.0)


CPU_WINDOW_S = 0.25


async def _sample_cpu(pid: int, shares: list[float]) -> None:
    """The node's CPU share (of one core) per CPU_WINDOW_S, appended until cancelled: how
    bunched its work is (an expiry or accept wave) whatever else the machine runs."""
    last_cpu, last_wall = process_cpu_s(pid), time.monotonic()
    while True:
        await asyncio.sleep(CPU_WINDOW_S)
        cpu, wall = process_cpu_s(pid), time.monotonic()
        shares.append((cpu - last_cpu) / (wall - last_wall))
        last_cpu, last_wall = cpu, wall


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


async def _measure(
    info: dict,
    idle: int,
    rate: int,
    seconds: float,
    processes: int,
    flood_nice: int = 0,
    authenticated: bool = False,
) -> dict:
    import aiohttp

    host = info["host"]
    ports = {name: info[name] for name in ("http", "binary", "fix")}
    base = f"http://{host}:{ports['http']}"
    key = next(iter(LOAD_ACCOUNTS))
    trader = _Trader()
    await trader.connect(host, ports["binary"], key)
    # Two kept-alive connections, opened before the flood (a full listener refuses new ones):
    # the health checker's, and this bench's own for its scrapes and the snapshot request.
    # They once shared one: a poll queued behind the snapshot request (answered once the
    # snapshot is written: seconds on a loaded machine) and its 2 s timeout, which counts the
    # wait for the connection, failed healthz on a node that answered it at once.
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as checker,
    ):
        await _metric_sum(session, base, "loom_connections")  # opens the bench's connection
        healthz: list[bool] = []
        failures: list[str] = []
        stop = asyncio.Event()
        poller = asyncio.create_task(_poll_healthz(checker, base, stop, healthz, failures))
        keeper = asyncio.create_task(_keep_alive(session, base, stop))
        cpu_start = process_cpu_s(info["pid"])
        before = await trader.trade(rate, seconds)
        cpu_before = process_cpu_s(info["pid"]) - cpu_start
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        stop_flood = ctx.Event()
        rss_before = _rss_mb(info["pid"])
        # Logged-on sessions take longer to open (a login each): up to this long, until the
        # node holds them all.
        ramp = 30.0 + idle / 400 if authenticated else 5.0
        share = -(-idle // processes)
        procs = [
            ctx.Process(
                target=_flood_process,
                args=(
                    host,
                    ports,
                    min(share, idle - i * share),
                    i * share,
                    ramp + seconds + 3,
                    out,
                    flood_nice,
                    authenticated,
                    stop_flood,
                ),
            )
            for i in range(processes)
        ]
        for proc in procs:
            proc.start()
        ramp_started = time.monotonic()
        # No idle connection can have met a deadline before this: the churn (expiry waves, and
        # the flood reconnecting after them) starts here; before it the node only holds them.
        first_expiry_ns = time.perf_counter_ns() + int(_first_deadline_s() * 1e9)
        if authenticated:
            while time.monotonic() - ramp_started < ramp:
                if await _metric_sum(session, base, "loom_connections") - OWN_CONNECTIONS >= 0.99 * idle:
                    break
                await asyncio.sleep(1.0)
            await asyncio.sleep(2.0)  # the last logins settle
        else:
            await asyncio.sleep(ramp)  # the flood connects
        ramp_s = time.monotonic() - ramp_started
        rss_during = _rss_mb(info["pid"])
        # Sessions logged on (binary) or open (WebSocket), less the trader's.
        logged_on = int(await _metric_sum(session, base, "loom_sessions")) - 1
        gc_start = await _full_collections(session, base)
        cpu_start = process_cpu_s(info["pid"])
        shares: list[float] = []
        sampler = asyncio.create_task(_sample_cpu(info["pid"], shares))
        during = await trader.trade(rate, seconds)
        sampler.cancel()
        cpu_during = process_cpu_s(info["pid"]) - cpu_start
        timeline = trader.timeline()
        # (logged-on sessions have no login deadline: no split)
        held_phase, churn_phase = ([], []) if authenticated else trader.split(first_expiry_ns)
        gc_end = await _full_collections(session, base)
        held_by_node = await _metric_sum(session, base, "loom_connections")
        async with session.post(f"{base}/v1/admin/snapshot", headers={"X-API-Key": LOAD_ADMIN_KEY}) as resp:
            snapshot_ok = resp.status == 200
        refused = await _metric_sum(session, base, "loom_connections_refused_total")
        timeouts = await _metric_sum(session, base, "loom_connection_timeouts_total")
        if authenticated:
            stop_flood.set()
        floods = [await asyncio.to_thread(out.get, True, 120) for _ in procs]
        for proc in procs:
            proc.join()
        stop.set()
        await poller
        await keeper
    trader.client.close()
    before.sort()
    during.sort()
    p99_before = percentile_us(before, 99) / 1000
    p99_during = percentile_us(during, 99) / 1000
    samples = [sum(s) for s in zip(*(f["held_samples"] for f in floods), strict=False)]
    sessions_held = int(held_by_node) - OWN_CONNECTIONS
    return {
        "authenticated": authenticated,
        "ramp_s": round(ramp_s, 1),
        "rss_mb_before": round(rss_before, 1),
        "rss_mb_during": round(rss_during, 1),
        "rss_mb_per_1k_sessions": round((rss_during - rss_before) / (sessions_held / 1000), 2)
        if sessions_held > 0
        else 0.0,
        "sessions_logged_on": logged_on,
        "idle_requested": idle,
        "idle_held": max(samples[len(samples) // 2 :] or [0]),
        "idle_held_by_node": sessions_held,  # less this bench's own connections
        "refused": int(refused),
        "closed_by_deadlines": int(timeouts),
        "flood_connect_errors": sum(f["connect_errors"] for f in floods),
        "p99_ms_before": round(p99_before, 3),
        "p99_ms_during": round(p99_during, 3),
        "p99_ratio": round(p99_during / p99_before, 2) if p99_before else 0.0,
        "p99_ms_by_second_during": timeline,
        # The during phase split where the first idle connection may meet its deadline: before
        # it the node holds N idle connections; after it they expire and the flood reconnects.
        "p99_ms_during_held": round(percentile_us(held_phase, 99) / 1000, 3) if held_phase else None,
        "p99_ms_during_churn": round(percentile_us(churn_phase, 99) / 1000, 3) if churn_phase else None,
        "orders_during_held": len(held_phase),
        "node_cpu_s_before": round(cpu_before, 2),  # over the phase (seconds + 0.5 s drain)
        "node_cpu_s_during": round(cpu_during, 2),
        # its busiest CPU_WINDOW_S of the during phase, in share of a core (1.0: a whole core)
        "node_cpu_share_max_during": round(max(shares, default=0.0), 2),
        # full collections in the during phase (and their pause): the node's own stall, at
        # whatever second it comes, walking the live heap (the held connections, mostly)
        "gc_full_collections_during": int(gc_end[0] - gc_start[0]),
        "gc_full_pause_ms_during": round((gc_end[1] - gc_start[1]) * 1000, 1),
        "flood_cpu_s": round(
            sum(f.get("cpu_s", 0.0) for f in floods), 2
        ),  # over its whole run  # the flood started ramp_s before this phase
        "orders_acked_before": len(before),
        "orders_acked_during": len(during),
        "orders_unanswered": len(trader.sent),
        "snapshot_during_flood_ok": snapshot_ok,
        "healthz_ok": bool(healthz) and all(healthz),
        "healthz_polls": len(healthz),
        "healthz_failures": failures[:5],
        "rate": rate,
        "seconds": seconds,
    }


def run_connections_bench(
    idle: int = 20_000,
    rate: int = 1_000,
    seconds: float = 10.0,
    processes: int = 4,
    nofile: int | None = None,
    flood_nice: int = 0,
    authenticated: bool = False,
) -> dict:
    """`authenticated`: the idle connections are logged-on binary and WebSocket sessions (of
    another account than the trader's) instead of an unauthenticated flood."""
    with spawned_exchange(nofile=nofile) as info:
        result = asyncio.run(_measure(info, idle, rate, seconds, processes, flood_nice, authenticated))
        result["flood_nice"] = flood_nice
        result["node_nofile"] = nofile or resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        result["node_log_refusal_lines"] = sum("listener refus" in line for line in info["log"])
        result["node_log_lines"] = len(info["log"])
        return result


def format_connections(r: dict) -> str:
    target = 1.5 if r["authenticated"] else 2  # issue 16's target for logged-on sessions
    verdict = "within" if r["p99_ratio"] <= target else "ABOVE"
    kind = "idle logged-on binary/WebSocket sessions" if r["authenticated"] else "idle connections"
    return (
        f"{kind}: node RSS {r['rss_mb_before']} MB before, {r['rss_mb_during']} MB holding them "
        f"({r['rss_mb_per_1k_sessions']} MB per 1,000; opened in {r['ramp_s']} s)\n"
        f"{r['idle_requested']:,} requested, {r['idle_held']:,} held "
        f"(node: {r['idle_held_by_node']:,}), {r['refused']:,} refused, {r['closed_by_deadlines']:,} "
        f"closed by deadlines; order ack p99 {r['p99_ms_before']} ms before, {r['p99_ms_during']} ms "
        f"during (x{r['p99_ratio']}, {verdict} the {target}x target; {r['p99_ms_during_held']} ms while "
        f"only held, {r['p99_ms_during_churn']} ms once deadlines close them and the flood reconnects); "
        f"{r['orders_acked_during']:,} orders "
        f"acked during, {r['orders_unanswered']} unanswered; healthz ok {r['healthz_ok']} "
        f"({r['healthz_polls']} polls); snapshot during the flood ok {r['snapshot_during_flood_ok']}; "
        f"node RLIMIT_NOFILE {r['node_nofile']}, {r['node_log_refusal_lines']} refusal log lines; "
        f"{r['gc_full_collections_during']} full GC passes during ({r['gc_full_pause_ms_during']} ms)"
    )
