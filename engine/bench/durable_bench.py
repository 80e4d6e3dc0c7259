"""`loom bench durable` and `loom bench recovery`: the persistence figures.

durable: the engine workload driven through a real ExchangeNode (sequencer, journal with
fdatasync per group-commit batch, engine) by an in-process load generator.
recovery: a journal of N orders with a snapshot at 90%, then a cold start of a node on it
(snapshot load and verify, tail replay, hash), and a full replay from the first record.
"""

from __future__ import annotations

import gc
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from engine import progress
from engine.bench.stats import percentile_us
from engine.bench.workload import INSTRUMENT, generate
from engine.core.matcher import MatchingEngine
from engine.core.state import state_hash
from engine.exchange import ExchangeNode, NodeConfig
from engine.journal.segments import FileJournal
from engine.recovery import replay


class _TimedFsync:
    """Wraps os.fdatasync for the bench run to collect the physical floor of every ack."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._orig = os.fdatasync

    def __enter__(self):
        orig, samples, clock = self._orig, self.samples, time.perf_counter_ns

        def timed(fd: int) -> None:
            t0 = clock()
            orig(fd)
            samples.append(clock() - t0)

        os.fdatasync = timed
        return self

    def __exit__(self, *exc) -> None:
        os.fdatasync = self._orig


def run_durable_bench(
    orders: int = 1_000_000, batch: int = 512, seed: int = 1, data_dir: str | None = None
) -> dict:
    commands = generate(orders, seed, "deep").commands
    tmp = Path(data_dir or tempfile.mkdtemp(prefix="loom-bench-"))
    try:
        node = ExchangeNode(NodeConfig(tmp, (INSTRUMENT,), snapshot_every_commands=0, snapshot_every_s=0))
        submit = node.submit
        gc.collect()
        gc.freeze()
        with _TimedFsync() as fsyncs:
            start = time.perf_counter()
            batches = 0
            progress.phase("durable bench: orders journaled", len(commands))
            for i in range(0, len(commands), batch):
                submit(commands[i : i + batch])
                batches += 1
                progress.update(i + batch)
            elapsed = time.perf_counter() - start
        gc.unfreeze()
        journal_bytes = node.journal.size_bytes
        node.close()
    finally:
        if data_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    samples = sorted(fsyncs.samples)
    return {
        "bench": "durable",
        "orders": len(commands),
        "batch": batch,
        "batches": batches,
        "orders_per_s": round(len(commands) / elapsed),
        "fsyncs": len(samples),
        "fsync_p50_us": percentile_us(samples, 50),
        "fsync_p99_us": percentile_us(samples, 99),
        "journal_bytes": journal_bytes,
        "bytes_per_order": round(journal_bytes / len(commands), 1),
    }


def run_recovery_bench(orders: int = 1_000_000, seed: int = 1, batch: int = 1000) -> dict:
    commands = generate(orders, seed, "deep").commands
    tmp = Path(tempfile.mkdtemp(prefix="loom-recovery-"))
    try:
        node = ExchangeNode(NodeConfig(tmp, (INSTRUMENT,), snapshot_every_commands=0, snapshot_every_s=0))
        snapshot_at = int(len(commands) * 0.9)
        progress.phase("recovery bench: writing the journal", len(commands))
        for i in range(0, len(commands), batch):
            node.submit(commands[i : i + batch])
            progress.update(i + batch)
            if i < snapshot_at <= i + batch:
                node.take_snapshot()
        live_hash = state_hash(node.engine)
        snapshot_seq = node.last_snapshot_seq
        node.close()
        journal_bytes = sum(p.stat().st_size for p in (tmp / "journal").iterdir())

        # Cold start: what a restart costs (snapshot load + verify, tail replay, hash).
        gc.collect()
        start = time.perf_counter()
        restarted = ExchangeNode(NodeConfig(tmp, (INSTRUMENT,)))
        recovery_s = time.perf_counter() - start
        recovered = restarted.recovered
        restarted.close()
        # A restart replays in a new process: the generated commands and both nodes' engines
        # go before the full replays, so that these run on a heap like a restart's.
        del commands, node, restarted

        # Full replay from the first record, the journal's own throughput (median of three).
        replay_runs: list[tuple[float, int, int]] = []
        replay_hashes = set()
        progress.phase("recovery bench: full replays", 3)
        for _ in range(3):
            journal = FileJournal(tmp / "journal", read_only=True)
            engine = MatchingEngine([])
            gc.collect()
            t0 = time.perf_counter()
            n_cmds, n_events = replay(engine, journal, 1)
            replay_runs.append((time.perf_counter() - t0, n_cmds, n_events))
            journal.close()
            replay_hashes.add(state_hash(engine))
            del engine
            progress.advance()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = statistics.median(r[0] for r in replay_runs)
    _, n_cmds, n_events = replay_runs[0]
    return {
        "bench": "recovery",
        "orders": orders,
        "journal_bytes": journal_bytes,
        "snapshot_seq": snapshot_seq,
        "recovery_s": round(recovery_s, 3),
        "recovery_replayed_commands": recovered.replayed_commands,
        "replay_commands_per_s": round(n_cmds / seconds),
        "replay_events_per_s": round(n_events / seconds),
        "replay_s": round(seconds, 3),
        "replay_s_runs": [round(r[0], 3) for r in replay_runs],
        "hash_matches": len(replay_hashes) == 1 and recovered.state_hash == live_hash == replay_hashes.pop(),
    }


def format_durable(r: dict) -> str:
    return (
        f"durable bench: {r['orders']:,} orders in batches of {r['batch']}: "
        f"{r['orders_per_s']:,} orders/s\n"
        f"  {r['fsyncs']:,} fdatasyncs: p50 {r['fsync_p50_us']} µs, p99 {r['fsync_p99_us']} µs; "
        f"journal {r['journal_bytes']:,} bytes ({r['bytes_per_order']} per order)"
    )


def format_recovery(r: dict) -> str:
    return (
        f"recovery bench: {r['orders']:,} orders, journal {r['journal_bytes']:,} bytes, "
        f"snapshot at seq {r['snapshot_seq']:,}\n"
        f"  restart: {r['recovery_s']} s "
        f"({r['recovery_replayed_commands']:,} commands replayed after the snapshot)\n"
        f"  full replay (median of {len(r['replay_s_runs'])}): {r['replay_s']} s, "
        f"{r['replay_commands_per_s']:,} commands/s, {r['replay_events_per_s']:,} events/s\n"
        f"  state hash live == restarted == replayed: {r['hash_matches']}"
    )
