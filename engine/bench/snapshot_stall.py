"""`loom bench snapshot-stall`: what a snapshot of a deep book costs the order path.

A book of N resting orders is built once (in this process, through a real ExchangeNode, and
snapshotted so the node starts from it); then a real `loom run` is started on a copy of it
twice, and the open-loop binary load of `loom load` offers R orders/s for S seconds to each:
first with a snapshot every 5 s, then with snapshots off. Latency is from each order's
scheduled send to its acknowledgement (coordinated omission included), so a stall shows.

The capture alternatives are measured on the built book too (`capture_*` keys): the fork the
node uses, encoding inline, encoding on a thread (the GIL: the longest the main thread was
held up) and copying the state first (what a copy-then-encode scheme pays on the order path).
"""

from __future__ import annotations

import asyncio
import copy
import gc
import shutil
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from engine import progress
from engine.bench.stats import percentile_us
from engine.config import load_config
from engine.core.commands import NewOrder
from engine.core.domain import OrderType, Side
from engine.core.state import export_state
from engine.exchange import ExchangeNode, NodeConfig
from engine.load.binary_driver import BinaryDriver
from engine.load.runner import MID, SYMBOL, LoadRun, run_open_loop
from engine.load.spawn import LOAD_ACCOUNTS, _config_text, spawned_exchange
from engine.snapshots import encode_snapshot

SNAPSHOT_EVERY_S = 5.0
BOOK_GAP = 100  # resting orders start this far from MID: the load's IOCs (MID ± 60) never reach them
BOOK_LEVELS = 2000  # price levels per side the book spreads over
BUILD_BATCH = 4096
ACCOUNTS = tuple(LOAD_ACCOUNTS.values())


def _instruments(tmp: Path) -> tuple:
    """The instruments the spawned node lists (one source: its config)."""
    path = tmp / "load.toml"
    path.write_text(_config_text())
    return tuple(load_config(str(path)).instruments)


def _book_order(i: int) -> NewOrder:
    buy = i % 2 == 0
    offset = BOOK_GAP + (i // 2) % BOOK_LEVELS
    return NewOrder(
        ACCOUNTS[i % 2],
        f"book-{i}",
        SYMBOL,
        int(Side.BUY if buy else Side.SELL),
        int(OrderType.LIMIT),
        MID - offset if buy else MID + offset,
        1 + i % 50,
    )


def build_book(data_dir: Path, resting: int) -> tuple[ExchangeNode, float]:
    """A node with `resting` orders on the book, snapshotted (left open for measuring)."""
    started = time.perf_counter()
    node = ExchangeNode(
        NodeConfig(data_dir, _instruments(data_dir.parent), snapshot_every_commands=0, snapshot_every_s=0)
    )
    progress.phase("snapshot-stall bench: building the book", resting)
    for first in range(0, resting, BUILD_BATCH):
        node.submit([_book_order(i) for i in range(first, min(resting, first + BUILD_BATCH))])
        progress.update(first + BUILD_BATCH)
    node.take_snapshot()
    return node, time.perf_counter() - started


def _main_thread_stall(work) -> float:
    """Run `work` on a thread; the longest the main thread waited to run again meanwhile
    (it asks for 1 ms sleeps), in seconds."""
    worker = threading.Thread(target=work)
    worst = 0.0
    worker.start()
    while worker.is_alive():
        t = time.perf_counter()
        time.sleep(0.001)
        worst = max(worst, time.perf_counter() - t - 0.001)
    worker.join()
    return worst


def measure_capture(node: ExchangeNode) -> dict:
    """What each way of capturing the state costs the thread that runs the order path."""
    engine = node.engine
    out = {}
    t = time.perf_counter()
    encode_snapshot(engine)
    out["capture_encode_inline_ms"] = (time.perf_counter() - t) * 1000
    out["capture_encode_thread_stall_ms"] = _main_thread_stall(lambda: encode_snapshot(engine)) * 1000
    t = time.perf_counter()
    state = export_state(engine)
    for book in state.books:
        book.bids = [copy.copy(o) for o in book.bids]
        book.asks = [copy.copy(o) for o in book.asks]
    out["capture_copy_ms"] = (time.perf_counter() - t) * 1000
    del state
    pauses = []
    for _ in range(3):
        node.take_snapshot()
        pauses.append(node.last_capture_s)
    out["capture_fork_ms"] = min(pauses) * 1000
    out["capture_fork_max_ms"] = max(pauses) * 1000
    return {k: round(v, 2) for k, v in out.items()}


def _scrape(host: str, port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("loom_snapshot_") and not sample.labels
    }


SNAPSHOT_SETTLE_S = 300.0  # the longest the run waits for the snapshots it started to be written


def _settled_scrape(host: str, port: int, before: dict[str, float]) -> dict[str, float]:
    """The scrape once every snapshot started since `before` is written or has failed.

    The load ends at a fixed time, the snapshots do not: one started in the run's last
    seconds (or by a snapshotter that runs only on CPU the node leaves idle, on a machine
    that leaves none) is still being written when the load ends. Scraped then, it counted
    as never taken, and its write time was missing from the figures."""
    deadline = time.monotonic() + SNAPSHOT_SETTLE_S
    after = _scrape(host, port)
    while _in_flight(before, after) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        after = _scrape(host, port)
    return after


def _in_flight(before: dict[str, float], after: dict[str, float]) -> float:
    """Snapshots started between two scrapes and neither written nor failed by the second."""

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    started = delta("loom_snapshot_capture_seconds_count")
    return started - delta("loom_snapshot_duration_seconds_count") - delta("loom_snapshot_failures_total")


def run_one(
    seed: Path,
    snapshot_every_s: float,
    rate: float,
    duration: float,
    latencies_ns: list[int] | None = None,
    writer: str = "follower",
) -> dict:
    config = _config_text(snapshot_every_s, writer)
    with spawned_exchange(timeout=600, seed_data=seed, config_text=config) as info:
        host = info["host"]
        before = _scrape(host, info["http"])
        run = LoadRun.new()
        driver = BinaryDriver(host, info["binary"], next(iter(LOAD_ACCOUNTS)), 1, run)
        result = asyncio.run(run_open_loop(driver, "binary", rate, duration, run, latencies_ns=latencies_ns))
        after = _settled_scrape(host, info["http"], before)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    taken = int(delta("loom_snapshot_duration_seconds_count"))
    captures = delta("loom_snapshot_capture_seconds_count")
    return {
        **result,
        "snapshots_taken": taken,
        "snapshot_failures": int(delta("loom_snapshot_failures_total")),
        "snapshot_bytes": int(after.get("loom_snapshot_size_bytes", 0)),
        "snapshot_write_s": round(delta("loom_snapshot_duration_seconds_sum") / taken, 3) if taken else 0.0,
        # Absent before snapshots had a capture (the inline write): 0.
        "capture_mean_ms": round(delta("loom_snapshot_capture_seconds_sum") / captures * 1000, 2)
        if captures
        else 0.0,
    }


def _pooled(runs: list[dict], latencies_ns: list[int], suffix: str) -> dict:
    """One side's figures over all its rounds: percentiles of every order's latency."""
    lat = sorted(latencies_ns)
    return {
        f"p50_ms_{suffix}": round(percentile_us(lat, 50) / 1000, 2),
        f"p99_ms_{suffix}": round(percentile_us(lat, 99) / 1000, 2),
        f"p999_ms_{suffix}": round(percentile_us(lat, 99.9) / 1000, 2),
        f"max_ms_{suffix}": round(lat[-1] / 1e6, 2) if lat else 0.0,
        f"acked_{suffix}": sum(r["acked"] for r in runs),
        # Refused for overload: a snapshot's writeback slowing the journal is not an overload.
        f"overloaded_{suffix}": sum(r["overloaded"] for r in runs),
    }


def _per_snapshot(runs: list[dict], key: str) -> float:
    """The mean of a per-snapshot figure over every snapshot of the runs."""
    taken = sum(r["snapshots_taken"] for r in runs)
    return sum(r[key] * r["snapshots_taken"] for r in runs) / taken if taken else 0.0


def run_snapshot_stall_bench(
    resting: int = 800_000,
    rate: float = 5_000,
    duration: float = 30.0,
    measure: bool = True,
    rounds: int = 1,
    writers: tuple[str, ...] = ("follower",),
) -> dict:
    """`rounds` rounds of runs, alternating which goes first (with, without; then without,
    with; ...) so that a drift of the machine's speed during the command, or whatever the
    first run after the build pays, falls on both sides alike; each side's percentiles are
    over all its orders. With several `writers`, each round has a run with snapshots by
    each: the first writer's figures are the *_with keys, the others' *_with_<writer>."""
    tmp = Path(tempfile.mkdtemp(prefix="loom-bench-stall-"))
    runs_of: dict[str | None, list[dict]] = {w: [] for w in (*writers, None)}  # None: snapshots off
    lat_of: dict[str | None, list[int]] = {w: [] for w in (*writers, None)}
    ratios: dict[str, list[float]] = {w: [] for w in writers}
    try:
        seed = tmp / "data"
        node, build_s = build_book(seed, resting)
        capture = measure_capture(node) if measure else {}
        snapshot_bytes = node.last_snapshot.size if node.last_snapshot else 0
        node.close()
        del node
        gc.collect()  # the load generator runs in this process: not beside a dead book
        sides: list[str | None] = [*writers, None]
        for i in range(rounds):
            pair: dict[str | None, dict] = {}
            for writer in sides if i % 2 == 0 else reversed(sides):
                every = SNAPSHOT_EVERY_S if writer else 0
                # Off: no snapshotter either (it would follow the journal): the follower's
                # whole cost falls on its own side.
                pair[writer] = run_one(seed, every, rate, duration, lat_of[writer], writer or "fork")
                runs_of[writer].append(pair[writer])
            without_p99 = pair[None]["p99_us"]
            for w in writers:
                ratios[w].append(round(pair[w]["p99_us"] / without_p99, 2) if without_p99 else 0.0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    others = {}
    for w in writers[1:]:
        others.update(_with_figures(runs_of[w], lat_of[w], f"with_{w}"))
        others[f"p99_ratio_by_round_{w}"] = ratios[w]
    return {
        "resting": resting,
        "rate": rate,
        "duration_s": duration,
        "rounds": rounds,
        "writer": writers[0],
        "build_s": round(build_s, 1),
        **_with_figures(runs_of[writers[0]], lat_of[writers[0]], "with", snapshot_bytes),
        **_pooled(runs_of[None], lat_of[None], "without"),
        "p99_ratio_by_round": ratios[writers[0]],
        "errors": sum(r["errors"] for runs in runs_of.values() for r in runs),
        "snapshots_taken_without": sum(r["snapshots_taken"] for r in runs_of[None]),
        **others,
        **capture,
    }


def _with_figures(runs: list[dict], lat: list[int], suffix: str, snapshot_bytes: int = 0) -> dict:
    """A side with snapshots: its latency and its snapshots (the *_with keys for "with")."""
    tail = "" if suffix == "with" else f"_{suffix.removeprefix('with_')}"
    return {
        **_pooled(runs, lat, suffix),
        f"snapshots_taken{tail}": sum(r["snapshots_taken"] for r in runs),
        f"snapshot_failures{tail}": sum(r["snapshot_failures"] for r in runs),
        f"snapshot_bytes{tail}": runs[-1]["snapshot_bytes"] or snapshot_bytes,
        f"snapshot_write_s{tail}": round(_per_snapshot(runs, "snapshot_write_s"), 3),
        f"capture_mean_ms{tail}": round(_per_snapshot(runs, "capture_mean_ms"), 2),
    }


def format_snapshot_stall(r: dict) -> str:
    lines = [
        f"book of {r['resting']:,} resting orders (built in {r['build_s']} s), "
        f"binary load {r['rate']:,.0f}/s for {r['duration_s']} s, each way, "
        f"{r['rounds']} round(s) (p99 with/without by round: {r['p99_ratio_by_round']}):",
        f"  snapshots every {SNAPSHOT_EVERY_S:g} s by the {r['writer']}: p50 {r['p50_ms_with']} ms  "
        f"p99 {r['p99_ms_with']} ms  "
        f"p99.9 {r['p999_ms_with']} ms  max {r['max_ms_with']} ms  ({r['snapshots_taken']} snapshots of "
        f"{r['snapshot_bytes']:,} bytes, written in {r['snapshot_write_s']} s each, "
        f"order path paused {r['capture_mean_ms']} ms each)",
        f"  snapshots off:        p50 {r['p50_ms_without']} ms  p99 {r['p99_ms_without']} ms  "
        f"p99.9 {r['p999_ms_without']} ms  max {r['max_ms_without']} ms",
        f"  refused for overload: {r['overloaded_with']} with snapshots, {r['overloaded_without']} without",
    ]
    if "p99_ms_with_fork" in r:
        lines.append(
            f"  by forked child:      p50 {r['p50_ms_with_fork']} ms  p99 {r['p99_ms_with_fork']} ms  "
            f"p99.9 {r['p999_ms_with_fork']} ms  max {r['max_ms_with_fork']} ms  "
            f"({r['snapshots_taken_fork']} snapshots, order path paused {r['capture_mean_ms_fork']} ms each; "
            "p99 ratio by round "
            f"{r['p99_ratio_by_round_fork']})"
        )
    if "capture_fork_ms" in r:
        lines.append(
            f"  capture on the order path: fork {r['capture_fork_ms']} ms (max {r['capture_fork_max_ms']}); "
            f"encode inline {r['capture_encode_inline_ms']} ms; encode on a thread stalls the loop "
            f"{r['capture_encode_thread_stall_ms']} ms (GIL); copy first {r['capture_copy_ms']} ms"
        )
    return "\n".join(lines)
