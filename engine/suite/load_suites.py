"""`loom suite concurrency`, `stress` and `soak`: each against its own `loom run`
(engine.load.spawn), with the mixed-protocol sessions of engine.suite.mixed; every answer is
checked against the node's journal afterwards (the chaos history checker)."""

from __future__ import annotations

import gc
import os
import threading
import time
import urllib.request
from contextlib import contextmanager

from engine.bench.overload_bench import FLOOR_DIVISOR, find_capacity, keeps_up
from engine.bench.stats import percentile_us, process_cpu_s
from engine.chaos.history import OK, History
from engine.load.runner import MID, RUN_REFS, LoadOrder
from engine.load.spawn import LOAD_ADMIN_KEY
from engine.suite.mixed import (
    check_against_journal,
    client_accounts,
    client_sessions,
    run_mixed,
    run_sync,
    spawned_suite_node,
    split_sessions,
)


def _latency(report: dict) -> dict:
    return {k: report[k] for k in ("p50_us", "p99_us", "p999_us", "max_us")}


def _accounted(report: dict, checked: dict, probe: dict | None = None) -> dict:
    """Every order sent is answered (acked, rejected by the venue or refused by admission
    control) and no answer is contradicted by the journal. `probe`: an earlier run on the
    same node (the soak's), whose orders the journal check covers too."""
    c = checked["counts"]
    answered = report["acked"] + report["rejected"] + report["overloaded"]
    if probe is not None:
        report = {k: report[k] + probe[k] for k in ("sent", "acked", "rejected", "overloaded")}
        answered += probe["acked"] + probe["rejected"] + probe["overloaded"]
    return {
        "sent": report["sent"],
        "acked": report["acked"],
        "rejected": report["rejected"],
        "refused_overloaded": report["overloaded"],
        "unanswered": report["sent"] - answered,
        "journal_checked": {k: c[k] for k in ("ops", "ok", "failed", "unknown", "journal_orders")},
        "contradictions": checked["contradictions"],
        "contradiction_examples": checked["contradiction_examples"],
        "all_accounted": report["sent"] - answered == 0 and checked["contradictions"] == 0,
    }


def run_concurrency(orders: int = 100_000, sessions: int = 1_000, rate: float = 4_000) -> dict:
    """`orders` orders at `rate`/s from `sessions` sessions spread over REST, WebSocket, FIX
    and binary; every ack checked against the journal."""
    split = split_sessions(sessions)
    clients, accounts = client_sessions(split), client_accounts(sessions)
    with spawned_suite_node(clients, accounts) as info:
        started = time.monotonic()
        report, history, by_protocol = run_sync(
            run_mixed(info, clients, orders, rate, drain_s=60, accounts=accounts)
        )
        seconds = time.monotonic() - started
        checked = check_against_journal(history, info["data_dir"])
    return {
        "suite": "concurrency",
        "orders": orders,
        "sessions": dict(split),
        "accounts": len(accounts),  # one per session: independent clients
        "offered_rate": round(rate),
        "achieved_rate": report["achieved_rate"],
        "answered_by_protocol": by_protocol,
        **_accounted(report, checked),
        **_latency(report),
        "seconds": round(seconds, 1),
        "passed": _accounted(report, checked)["all_accounted"] and report["rejected"] == 0,
    }


def run_stress(orders: int = 200_000, sessions: int = 64) -> dict:
    """`orders` orders offered at once (as fast as the clients can write them) over mixed
    sessions: throughput, latency and what admission control refused; never a silent drop."""
    split = split_sessions(sessions)
    clients, accounts = client_sessions(split), client_accounts(sessions)
    rate = 10_000_000.0  # the whole burst is due at once: the clients send as fast as they can
    with spawned_suite_node(clients, accounts) as info:
        report, history, by_protocol = run_sync(
            run_mixed(info, clients, orders, rate, drain_s=180, accounts=accounts)
        )
        checked = check_against_journal(history, info["data_dir"])
    accounted = _accounted(report, checked)
    return {
        "suite": "stress",
        "orders": orders,
        "sessions": dict(split),
        "accounts": len(accounts),
        "throughput_per_s": report["achieved_rate"],  # journaled (acked or rejected) per second
        "answers_per_s": round(report["sent"] / report["duration_s"]) if report["duration_s"] else 0,
        "seconds": report["duration_s"],
        "answered_by_protocol": by_protocol,
        **accounted,
        **_latency(report),
        "passed": accounted["all_accounted"],
    }


# -- soak -------------------------------------------------------------------------------------


SOAK_PRICE = MID - 1  # every order of the soak's flow: a buy and a sell at one price always cross


def _soak_qty(i: int) -> int:
    pair = i // 2
    return 1 + (pair * 7) % 50


def bounded_order(run: str, i: int) -> LoadOrder:
    """The soak's flow, whose book stays small in any interleaving: pairs of GTC orders of
    one quantity at one price, the buy (even i) from one account, the sell (odd i) from the
    other. Whichever of a pair is sequenced first rests (or takes what the other side left)
    and its twin takes it: the book holds one side at one price, no more than the two
    sessions' lag, and nets to nothing once both sessions' orders are in.

    (Session 7's flow, resting buys and IOC sells of twice the quantity, depended on the
    buys being sequenced first: under load one session's read ran ahead of the other's,
    the IOC sells found nothing, and the buys journaled after the last sell stayed: 13,250
    lots on a 36,440-order soak, a share of the run that only the two sessions' lag set.)"""
    side = "buy" if i % 2 == 0 else "sell"
    return LoadOrder(i, f"{run}-{i}", side, SOAK_PRICE, _soak_qty(i), "gtc")


def net_resting_qty(history) -> int:
    """What the acked orders of the soak's flow leave on the book: the acked buys' quantity
    less the acked sells' (either side; a refused order's twin stays unmatched)."""
    net = 0
    for op in history.ops:
        if op.outcome == OK:
            i = _order_index(op.client_order_id)
            net += _soak_qty(i) if i % 2 == 0 else -_soak_qty(i)
    return abs(net)


def _order_index(client_order_id: str) -> int:
    """The flow's index of an order from its client order id: "<run prefix>-<i>" on the
    text protocols, the binary client_ref (LoadRun.client_ref) on binary."""
    if "-" in client_order_id:
        return int(client_order_id.rsplit("-", 1)[1])
    return (int(client_order_id) - 1) % RUN_REFS


SOAK_SESSIONS = [("binary", 1), ("binary", 1)]  # even orders on the first account, odd on the second


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


_FULL_COUNT_SUM = ('loom_gc_pause_seconds_count{generation="2"}', 'loom_gc_pause_seconds_sum{generation="2"}')
# The node's histograms the soak differences per window, beside the GC's: what stalls the
# loop or the batch. name: (the family's bucket lines, the labels of the series summed).
NODE_HISTOGRAMS = {
    "fsync": ("loom_journal_fsync_seconds_bucket{", ("",)),  # each batch's fdatasync: the disk
    "loop_lag": ("loom_event_loop_lag_seconds_bucket{", ('loop="main"',)),  # a 0.1 s probe's lateness
    "gc_young": ("loom_gc_pause_seconds_bucket{", ('generation="0"', 'generation="1"')),
}


def _metrics_page(base: str) -> str:
    req = urllib.request.Request(base + "/metrics", headers={"X-API-Key": LOAD_ADMIN_KEY})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read().decode()


def _parse_page(text: str) -> tuple[dict[float, float], tuple[float, float], dict[str, dict[float, float]]]:
    """(the GC histogram summed over generations, the full collections' (count, seconds),
    NODE_HISTOGRAMS' cumulative buckets by name) from one /metrics page."""
    buckets: dict[float, float] = {}
    full = [0.0, 0.0]
    node: dict[str, dict[float, float]] = {name: {} for name in NODE_HISTOGRAMS}
    for line in text.splitlines():
        if line.startswith("loom_gc_pause_seconds_bucket{"):
            _add_bucket(buckets, line)
        elif line.startswith(_FULL_COUNT_SUM):
            full[line.startswith(_FULL_COUNT_SUM[1])] = float(line.rsplit(" ", 1)[1])
        for name, (prefix, series) in NODE_HISTOGRAMS.items():
            if line.startswith(prefix) and any(label in line for label in series):
                _add_bucket(node[name], line)
    return buckets, (full[0], full[1]), node


def _add_bucket(buckets: dict[float, float], line: str) -> None:
    le = line.split('le="', 1)[1].split('"', 1)[0]
    bound = float("inf") if le == "+Inf" else float(le)
    buckets[bound] = buckets.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])


def _bucket_p99_ms(before: dict[float, float], after: dict[float, float], q: float = 0.99) -> float | None:
    """The `q` quantile (the p99; 1.0: the slowest) of a histogram between two scrapes, as
    the upper bound of its bucket (None: nothing observed in between, or a scrape that failed)."""
    if not before or not after:
        return None
    bounds = sorted(after)
    delta = [after[b] - before.get(b, 0.0) for b in bounds]
    total = delta[-1] if delta else 0
    if total <= 0:
        return None
    for bound, n in zip(bounds, delta, strict=True):
        if n >= q * total:
            return bound * 1000 if bound != float("inf") else float("inf")
    return None


def _node_window(
    before: dict[str, dict[float, float]] | None, after: dict[str, dict[float, float]] | None
) -> dict:
    """A window's node figures from its two scrapes (None each: a scrape failed): how many
    fdatasyncs and young collections, and the p99 and slowest bucket of each and of the
    loop's lag. A window's ack tail lines up with one of them, or with none (the machine)."""
    out: dict = {}
    for name in NODE_HISTOGRAMS:
        b, a = (before or {}).get(name, {}), (after or {}).get(name, {})
        count = a.get(float("inf"), 0.0) - b.get(float("inf"), 0.0) if a and b else None
        if name != "loop_lag":  # the probe runs every 0.1 s: its count is the window's length
            out[f"node_{name}_n"] = None if count is None else round(count)
        out[f"node_{name}_p99_ms"] = _bucket_p99_ms(b, a)
        out[f"node_{name}_slowest_ms"] = _bucket_p99_ms(b, a, 1.0)
    return out


class _Sampler(threading.Thread):
    """The node's RSS every second; its GC histogram, CPU time and the machine's load average
    at every window's end. CPU per ack tells a node doing more work per order as the run goes
    on (a growing book, cache or table: the p99 drift is the node's) from a node doing the
    same work on a machine that gives it less of a core (the drift is the machine's)."""

    def __init__(self, pid: int, base: str, window_s: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.base, self.window_s = pid, base, window_s
        self.stop = threading.Event()
        self.rss: list[tuple[float, float]] = []
        self.gc: list[dict[float, float]] = []
        self.gc_full: list[tuple[float, float] | None] = []  # full collections: (count, seconds)
        self.node: list[dict[str, dict[float, float]] | None] = []  # NODE_HISTOGRAMS' buckets
        self.cpu: list[float] = []
        self.client_cpu: list[float] = []  # this process's: the load generator's
        self.load: list[float] = []
        self.scrape_failures = 0
        self.started = 0.0

    def _scrape(self) -> None:
        """The GC histogram, or {} when /metrics does not answer in time (a node saturated by
        the soak): that window's GC figure is then unknown, and the RSS sampling goes on (a
        scrape timeout once killed this thread, and the RSS of the later windows read 0)."""
        try:
            buckets, full, node = _parse_page(_metrics_page(self.base))
        except OSError:
            self.scrape_failures += 1
            buckets, full, node = {}, None, None
        self.gc.append(buckets)
        self.gc_full.append(full)
        self.node.append(node)

    def _window_end(self) -> None:
        self.cpu.append(process_cpu_s(self.pid))
        self.client_cpu.append(time.process_time())
        self.load.append(os.getloadavg()[0])
        self._scrape()

    def run(self) -> None:
        self.started = time.perf_counter()
        self._window_end()
        next_window = self.started + self.window_s
        while not self.stop.wait(1.0):
            now = time.perf_counter()
            self.rss.append((now - self.started, _rss_mb(self.pid)))
            if now >= next_window:
                self._window_end()
                next_window += self.window_s
        # The run ends just short of the last window's end: without this sample the last
        # window, the one the drift compares, had no GC or CPU figure.
        self._window_end()


@contextmanager
def client_collector_paused():
    """Collect and freeze what this process holds (no later pass walks it again), and pause
    the cyclic collector while a measured run sends; it resumes after.

    The soak's client (this process) keeps every order's answer and each probe step's
    history for the journal check, millions of tracked objects (Op, Placement, lists), and
    CPython's full passes walk them all: passes of 0.3-1.5 s in a 1-minute soak and, in the
    3-minute one, a ~1 s stall in the last window (session 8: ack p99 825 ms there against
    17-46 ms before, 15,539 orders refused after the burst the stalled client then sent).
    Freezing alone made passes more frequent (a quarter's growth of a small unfrozen
    generation) and they still grew to 650 ms within a 1-minute run at 24,000/s. A client
    stall is not the node's latency. The records stay alive until the journal check, and
    a full pass in the client freed ~100 objects each: nothing to wait for. Reference
    counting frees the rest as ever."""
    gc.collect()
    gc.freeze()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class ClientGcPauses:
    """This process's (the load client's) collector pauses, (seconds since `started`, ms):
    what tells a stall of the client from one of the node in a window's p99."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.pauses: list[tuple[float, float]] = []
        self._began = 0.0

    def _on_gc(self, phase: str, _info: dict) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._began = now
        else:
            self.pauses.append((now - self.started, (now - self._began) * 1000))

    def __enter__(self) -> ClientGcPauses:
        gc.callbacks.append(self._on_gc)
        return self

    def __exit__(self, *_exc) -> None:
        gc.callbacks.remove(self._on_gc)

    def max_ms(self, start_s: float, end_s: float) -> float:
        return round(max((ms for at, ms in self.pauses if start_s <= at < end_s), default=0.0), 1)


# The sustained-rate probe's first rate and the most it offers (orders/s): the doubling of
# `loom bench overload` (find_capacity), on the soak's own flow and sessions.
PROBE_START = 2_000
PROBE_CEILING = 640_000
CONFIRM_STEPS = 3  # the rate found is held this many steps' time on the warm node
PROBE_P99_CAP_MS = 500.0  # a step whose p99 reaches this is not sustained, steady or not
PROBE_MEDIAN_FLOOR_MS = 10.0  # medians under this are not a queue, whatever their ratio
# The generator's send tick in the probe and the soak (run_open_loop's tick_s): it sleeps
# between sends instead of spinning. Spinning, it took a core at the soak's rates (40 µs of
# CPU per ack at 24,000/s against the node's 30), and on two cores that was the node's core:
# 3x the node's involuntary context switches and a 10x ack p99 at 12,000/s (session 9). Each
# order's latency is still counted from its scheduled time, lateness included.
SOAK_TICK_S = 0.001


def _merge_reports(reports: list[dict]) -> dict:
    """The probe steps' counts summed (every step's orders are journaled and checked)."""
    return {k: sum(r[k] for r in reports) for k in ("sent", "acked", "rejected", "overloaded")}


def step_held(latencies_ns: list[int], answered_s: list[float], seconds: float) -> bool:
    """The step's ack p99 stays bounded (its last quarter's under PROBE_P99_CAP_MS) and no
    queue grows through it: the last quarter's median is at most twice the first quarter's
    (or under PROBE_MEDIAN_FLOOR_MS). A growing queue lifts every answer, the median with
    it (from empty, ~4x first to last quarter); a loaded machine's scheduler moves the tail,
    at random (session 8: at load average 5-12 on 2 cores the p99 was 14-570 ms at
    62-2,000/s in no order of the rate; a p99 under 50 ms found 109/s, a p99 that did not
    double found 527/s: soaks measuring far less than the node takes)."""
    pairs = list(zip(latencies_ns, answered_s, strict=True))
    first = sorted(ns for ns, at in pairs if at < seconds / 4)
    last = sorted(ns for ns, at in pairs if at >= seconds * 3 / 4)
    if not first or not last:
        return False
    median_first, median_last = percentile_us(first, 50), percentile_us(last, 50)
    return percentile_us(last, 99) < PROBE_P99_CAP_MS * 1000 and median_last <= max(
        2 * median_first, PROBE_MEDIAN_FLOOR_MS * 1000
    )


def _soak_flow(info: dict, orders: int, rate: float, samples: dict) -> tuple[dict, History]:
    """`orders` of the soak's flow at `rate` over its sessions, the generator on its tick:
    (the load report, the history)."""
    flow = run_mixed(
        info, SOAK_SESSIONS, orders, rate, 30, make=bounded_order, samples=samples, tick_s=SOAK_TICK_S
    )
    report, history, _ = run_sync(flow)
    return report, history


def find_sustained_rate(info: dict, step_s: float, log=lambda _line: None) -> tuple[float, list, list]:
    """The highest rate the node sustains on the soak's flow: each step offers a rate for
    `step_s` seconds and passes when the node keeps up, its p99 stays bounded and no queue
    grows through the step (keeps_up, step_held): doubling, then bisecting (the overload bench's
    find_capacity). A burst measured what a cold node absorbs in a few seconds, not what it
    sustains: session 7's soak at half a burst's rate was refused 24% and its p99 grew to
    seconds. Short steps on a cold node still overstate it (the `done` cache fills and
    gen-2 collections start after ~100,000 orders), so the rate found is then held for
    CONFIRM_STEPS steps on the now warm node, and lowered by a quarter until it holds.
    (the rate, the step reports, the step histories)."""
    reports: list[dict] = []
    histories: list = []

    def step(rate: float, seconds: float = step_s) -> dict:
        samples: dict = {}
        orders = max(1, int(rate * seconds))
        with client_collector_paused():  # the earlier steps' histories: never walked in this one
            report, history = _soak_flow(info, orders, rate, samples)
        bounded = step_held(samples["latencies_ns"], samples["answered_s"], seconds)
        report["sustained"] = keeps_up(report) and bounded
        reports.append(report)
        histories.append(history)
        return report

    sustained = lambda report: report["sustained"]  # noqa: E731
    rate, _ = find_capacity(step, PROBE_START, PROBE_CEILING, log, ok=sustained)
    floor = PROBE_START / FLOOR_DIVISOR
    while rate >= floor and not step(rate, CONFIRM_STEPS * step_s)["sustained"]:
        rate *= 0.75
    return (rate if rate >= floor else 0.0), reports, histories


def run_soak(minutes: float = 3.0, window_s: float = 30.0, probe_s: float = 5.0, load: float = 0.5) -> dict:
    """Measure the node's sustained maximum rate on the soak's flow (find_sustained_rate,
    `probe_s` seconds a step), then offer `load` of it for `minutes`; per window: ack p99,
    GC pause p99 and RSS."""
    try:
        with spawned_suite_node(SOAK_SESSIONS) as info:
            return _soak(info, minutes, window_s, probe_s, load)
    finally:
        gc.unfreeze()  # client_collector_paused's: the records are this process's garbage now


def _soak(info: dict, minutes: float, window_s: float, probe_s: float, load: float) -> dict:
    max_rate, probe_reports, probe_histories = find_sustained_rate(info, probe_s)
    probe = _merge_reports(probe_reports)
    # No rate passed even at the probe's floor: the soak runs at the floor's half, and
    # fails (a figure at a rate the node did not sustain is not the soak's).
    rate = max(1.0, (max_rate or PROBE_START / FLOOR_DIVISOR) * load)
    orders = int(rate * minutes * 60)
    sampler = _Sampler(info["pid"], f"http://{info['host']}:{info['http']}", window_s)
    samples: dict = {}
    with client_collector_paused(), ClientGcPauses() as client_gc:
        sampler.start()
        report, history = _soak_flow(info, orders, rate, samples)
        sampler.stop.set()
        sampler.join()
    # The journal holds the probe's orders too: every run is checked.
    history.ops[:0] = [op for h in probe_histories for op in h.ops]
    checked = check_against_journal(history, info["data_dir"])
    book = _book_depth(f"http://{info['host']}:{info['http']}")
    book["net_acked_qty"] = net_resting_qty(history)
    windows = _windows(samples, sampler, client_gc, window_s, minutes * 60)
    first, last = windows[0], windows[-1]
    # None (not met) when a window has no RSS sample: never a growth computed from a gap.
    rss_growth = last["rss_mb"] - first["rss_mb"] if last["rss_mb"] and first["rss_mb"] else None
    rss_met = rss_growth is not None and rss_growth < 50
    drift = (last["ack_p99_us"] - first["ack_p99_us"]) / first["ack_p99_us"] if first["ack_p99_us"] else 0.0
    gc_all = _bucket_p99_ms(sampler.gc[0], sampler.gc[-1]) if len(sampler.gc) > 1 else None
    accounted = _accounted(report, checked, probe)
    passed = accounted["all_accounted"] and rss_met and drift < 0.20 and max_rate > 0
    return {
        "suite": "soak",
        "minutes": minutes,
        "window_s": window_s,
        "max_rate": round(max_rate),
        "rate": round(rate),
        "orders": report["sent"],
        "probe_orders": probe["sent"],
        "probe_steps": [_probe_step(r) for r in probe_reports],
        "client_tick_ms": SOAK_TICK_S * 1000,
        "client_sends": report["client_sends"],  # the soak's writes (at most one a tick)
        "client_late_p99_ms": report["client_late_p99_ms"],
        "book_at_end": book,
        "windows": windows,
        "rss_growth_mb": None if rss_growth is None else round(rss_growth, 1),
        "ack_p99_drift_pct": round(drift * 100, 1),
        "gc_pause_p99_ms": gc_all,
        "rss_target_met": rss_met,
        "metrics_scrape_failures": sampler.scrape_failures,
        "drift_target_met": drift < 0.20,
        **accounted,
        **_latency(report),
        "passed": passed,
    }


def _probe_step(report: dict) -> dict:
    keys = ("offered_rate", "sent", "achieved_rate", "duration_s", "p99_us", "overloaded", "sustained")
    return {k: report[k] for k in keys}


def _windows(
    samples: dict, sampler: _Sampler, client_gc: ClientGcPauses, window_s: float, seconds: float
) -> list[dict]:
    n = max(1, round(seconds / window_s))
    lat: list[list[int]] = [[] for _ in range(n)]
    for latency, at in zip(samples["latencies_ns"], samples["answered_s"], strict=True):
        lat[min(n - 1, int(at / window_s))].append(latency)
    out = []
    for w in range(n):
        rss: list[float | None] = [mb for t, mb in sampler.rss if w * window_s <= t < (w + 1) * window_s] or [
            None
        ]
        gc = _bucket_p99_ms(sampler.gc[w], sampler.gc[w + 1]) if w + 1 < len(sampler.gc) else None
        full = _full_passes(sampler.gc_full[w : w + 2])
        ended = w + 1 < len(sampler.cpu)
        cpu = sampler.cpu[w + 1] - sampler.cpu[w] if ended else None
        client = sampler.client_cpu[w + 1] - sampler.client_cpu[w] if ended else None
        out.append(
            {
                "window": w,
                "acks": len(lat[w]),
                "ack_p99_us": percentile_us(sorted(lat[w]), 99),
                "gc_pause_p99_ms": gc,
                # The node's full collections in the window and their summed pause (None: a
                # scrape failed): what the histogram's p99, over thousands of young ones, hides.
                "node_gc_full_passes": None if full is None else round(full[0]),
                "node_gc_full_pause_ms": None if full is None else round(full[1] * 1000, 1),
                **_node_window(*(sampler.node[w : w + 2] if w + 1 < len(sampler.node) else (None, None))),
                "rss_mb": None if rss[-1] is None else round(rss[-1], 1),
                # The node's CPU over the window per order answered in it (None: the run
                # ended before the window's sample).
                "node_cpu_us_per_ack": _per_ack_us(cpu, len(lat[w])),
                "client_cpu_us_per_ack": _per_ack_us(client, len(lat[w])),
                "load_avg_1m": round(sampler.load[w + 1], 1) if w + 1 < len(sampler.load) else None,
                # The client's longest collector pause in the window (the last window: to
                # the end of the drain): a stall the p99 would otherwise blame on the node.
                "client_gc_pause_max_ms": client_gc.max_ms(
                    w * window_s, (w + 1) * window_s if w + 1 < n else float("inf")
                ),
            }
        )
    return out


def _full_passes(ends: list[tuple[float, float] | None]) -> tuple[float, float] | None:
    """(count, seconds) of full collections between a window's two scrapes."""
    if len(ends) < 2 or ends[0] is None or ends[1] is None:
        return None
    return ends[1][0] - ends[0][0], ends[1][1] - ends[0][1]


def _per_ack_us(cpu_s: float | None, acks: int) -> float | None:
    return round(cpu_s * 1e6 / acks, 1) if cpu_s is not None and acks else None


def _book_depth(base: str) -> dict:
    """The resting book at the end: price levels and quantity (the soak's flow keeps it small)."""
    import json

    with urllib.request.urlopen(f"{base}/v1/book/LOAD-USD?depth=1000", timeout=10) as resp:
        book = json.loads(resp.read())
    levels = book["bids"] + book["asks"]
    return {"levels": len(levels), "qty": sum(level[1] for level in levels)}


def format_load_suite(r: dict) -> str:
    lines = [f"suite {r['suite']}: {'PASS' if r['passed'] else 'FAIL'}"]
    if r["suite"] == "soak":
        lines.append(
            f"  max rate {r['max_rate']:,}/s sustained, soaked at {r['rate']:,}/s for {r['minutes']} min "
            f"({r['orders']:,} orders); book at the end: {r['book_at_end']['levels']} levels, "
            f"{r['book_at_end']['qty']:,} resting (what the acked orders leave: "
            f"{r['book_at_end']['net_acked_qty']:,})"
        )
        for st in r["probe_steps"]:
            lines.append(
                f"  probe {st['offered_rate']:,}/s offered for {st['duration_s']} s: "
                f"{st['achieved_rate']:,}/s, p99 "
                f"{st['p99_us'] / 1000:.1f} ms, refused {st['overloaded']:,} -> "
                f"{'sustained' if st['sustained'] else 'over'}"
            )
        for w in r["windows"]:
            lines.append(
                f"  window {w['window']}: {w['acks']:,} acks, ack p99 {w['ack_p99_us']} µs, "
                f"GC pause p99 {w['gc_pause_p99_ms']} ms (full passes {w['node_gc_full_passes']}: "
                f"{w['node_gc_full_pause_ms']} ms), RSS {w['rss_mb']} MB, node CPU "
                f"{w['node_cpu_us_per_ack']} µs/ack (client {w['client_cpu_us_per_ack']}), "
                f"load average {w['load_avg_1m']}, client GC pause max {w['client_gc_pause_max_ms']} ms; "
                f"node: {w['node_fsync_n']} fdatasyncs (p99 {w['node_fsync_p99_ms']}, slowest "
                f"{w['node_fsync_slowest_ms']} ms), {w['node_gc_young_n']} young collections (p99 "
                f"{w['node_gc_young_p99_ms']}, slowest {w['node_gc_young_slowest_ms']} ms), loop lag p99 "
                f"{w['node_loop_lag_p99_ms']}, slowest {w['node_loop_lag_slowest_ms']} ms (bucket bounds)"
            )
        lines.append(
            f"  the generator sent on a {r['client_tick_ms']} ms tick: {r['client_sends']:,} writes, "
            f"late p99 {r['client_late_p99_ms']} ms (counted in each order's latency)"
        )
        lines.append(
            f"  RSS growth {r['rss_growth_mb']} MB "
            f"(target < 50: {'met' if r['rss_target_met'] else 'MISSED'}); "
            f"ack p99 drift first to last window {r['ack_p99_drift_pct']}% (target < 20%: "
            f"{'met' if r['drift_target_met'] else 'MISSED'}); GC pause p99 {r['gc_pause_p99_ms']} ms"
        )
    else:
        rate = r.get("throughput_per_s", r.get("achieved_rate"))
        lines.append(
            f"  {r['orders']:,} orders over sessions {r['sessions']}: {rate:,} orders/s; "
            f"answered by protocol {r['answered_by_protocol']}"
        )
    lines.append(
        f"  sent {r['sent']:,}: acked {r['acked']:,}, rejected {r['rejected']:,}, refused by admission "
        f"control {r['refused_overloaded']:,}, unanswered {r['unanswered']:,}; journal check "
        f"{r['journal_checked']}, contradictions {r['contradictions']}"
    )
    lines += [f"    {text}" for text in r["contradiction_examples"]]
    lines.append(
        f"  order-to-ack: p50 {r['p50_us']} µs  p99 {r['p99_us']} µs  p99.9 {r['p999_us']} µs  "
        f"max {r['max_us']} µs"
    )
    return "\n".join(lines)
