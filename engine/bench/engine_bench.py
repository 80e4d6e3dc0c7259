"""`loom bench engine`: replay a generated workload into fresh engines.

Two kinds of pass over the same commands, each into a fresh engine:
- throughput passes (`--repeat` of them, median reported): the plain apply loop, no clocks;
- one latency pass: every command timed with perf_counter_ns (two clock reads per command,
  ~0.1 µs, which is why its own rate is reported separately as `timed_ops_per_s`).
Events are produced and counted as in production: they are the product, not an option.
Every pass must end on the generator's state hash (`deterministic`).

With `credit` (`--credit`) each round runs one pass more, interleaved with the plain one: the
same commands against a funded venue with credit checks and fees on (engine/bench/workload.py),
so both throughputs come from one run (this VM's speed drifts) with their ratio. Its passes
must agree with each other, make the same trades as the plain ones, and end with the money
conserved (engine/core/invariants.py).

`--max-open-notional N` sets that venue limit in each fresh engine first (risk's running
open notional, engine/core/risk_watch.py): with N above anything the workload reaches it
refuses nothing, so the figures show what keeping the limit costs; every pass must then
end on one hash (it covers the limit, so it is not the generator's).
"""

from __future__ import annotations

import gc
import statistics
import time

from engine import progress
from engine.bench.stats import percentile_us
from engine.bench.workload import ACCOUNTS, credit_setup, generate
from engine.bench.workload import make_engine as make_venue
from engine.core.commands import Cancel, SetRiskLimits
from engine.core.domain import RiskLimits, RiskScope
from engine.core.events import Trade
from engine.core.invariants import check_engine, check_fees
from engine.core.risk import apply_risk_command
from engine.core.state import state_hash


def make_engine(credit: bool = False, max_open_notional: int = 0, accounts: int = ACCOUNTS):
    """A fresh engine for a pass: funded with credit checks on (`credit`), with the venue's
    open-notional limit when one is set."""
    engine = make_venue(credit, accounts)
    if max_open_notional:
        limits = RiskLimits(max_open_notional=max_open_notional)
        apply_risk_command(engine, SetRiskLimits(int(RiskScope.VENUE), "", limits))  # before the workload
    return engine


def _throughput_pass(
    commands: list, credit: bool = False, max_open_notional: int = 0, accounts: int = ACCOUNTS
) -> tuple[int, str]:
    engine = make_engine(credit, max_open_notional, accounts)
    apply = engine.apply
    clock = time.perf_counter_ns
    gc.collect()
    gc.freeze()  # long-lived start-up objects leave the collector's view, as `loom run` does
    start = clock()
    for cmd in commands:
        apply(cmd)
    elapsed = clock() - start
    gc.unfreeze()
    return elapsed, state_hash(engine)


def _latency_pass(
    commands: list, credit: bool = False, max_open_notional: int = 0, accounts: int = ACCOUNTS
) -> dict:
    engine = make_engine(credit, max_open_notional, accounts)
    apply = engine.apply
    clock = time.perf_counter_ns
    latencies = [0] * len(commands)
    trades = traded_qty = events = 0
    gc.collect()
    gc.freeze()
    start = clock()
    for i, cmd in enumerate(commands):
        t0 = clock()
        out = apply(cmd)
        latencies[i] = clock() - t0
        events += len(out)
        if len(out) > 1:
            for ev in out:
                if type(ev) is Trade:
                    trades += 1
                    traded_qty += ev.qty
    elapsed = clock() - start
    gc.unfreeze()
    # Cancel cost early (shallow book) against late (deepest book): O(1) cancel keeps it flat.
    decile = max(1, len(commands) // 10)
    early = sorted(latencies[i] for i in range(decile) if type(commands[i]) is Cancel)
    late = sorted(
        latencies[i] for i in range(len(commands) - decile, len(commands)) if type(commands[i]) is Cancel
    )
    sides = [s for book in engine.books.values() for s in (book.bids, book.asks)]
    levels = [lv for s in sides for lv in s.levels.values()]
    latencies.sort()
    return {
        "cancel_p50_us_first_decile": percentile_us(early, 50),
        "cancel_p50_us_last_decile": percentile_us(late, 50),
        "orders_per_level_at_end": round(sum(len(lv.orders) for lv in levels) / max(1, len(levels))),
        "elapsed_ns": elapsed,
        "latencies": latencies,
        "trades": trades,
        "traded_qty": traded_qty,
        "events": events,
        "resting_orders": sum(len(a.open) for a in engine.accounts.values()),
        "state_hash": state_hash(engine),
        "money_problems": (check_engine(engine) + check_fees(engine.ledger))[:3] if credit else [],
        "fees": dict(engine.ledger.fees),
    }


def run_engine_bench(
    ops: int = 1_000_000,
    seed: int = 1,
    mode: str = "deep",
    repeat: int = 3,
    credit: bool = False,
    max_open_notional: int = 0,
    accounts: int = ACCOUNTS,
) -> dict:
    # With credit the workload follows the funded venue's setup commands (the plain engine
    # just starts at a later seq).
    first_seq = len(credit_setup(accounts)) + 1 if credit else 1
    workload = generate(ops, seed, mode, first_seq, accounts)
    commands = workload.commands
    n = len(commands)
    progress.phase(f"engine bench ({mode}): passes over {n:,} ops", (repeat + 1) * (2 if credit else 1))
    passes = []
    credit_passes = []
    for _ in range(repeat):
        passes.append(_throughput_pass(commands, False, max_open_notional, accounts))
        progress.advance()
        if credit:
            credit_passes.append(_throughput_pass(commands, True, max_open_notional, accounts))
            progress.advance()
    lat = _latency_pass(commands, False, max_open_notional, accounts)
    progress.advance()
    credit_result: dict = {}
    if credit:
        clat = _latency_pass(commands, True, max_open_notional, accounts)
        progress.advance()
        credit_rates = [n / (elapsed / 1e9) for elapsed, _ in credit_passes]
        credit_result = _credit_figures(credit_rates, credit_passes, clat, lat)
    rates = [n / (elapsed / 1e9) for elapsed, _ in passes]
    hashes = {h for _, h in passes} | {lat["state_hash"]}
    latencies = lat["latencies"]
    return {
        "bench": "engine",
        "mode": mode,
        "seed": seed,
        "accounts": accounts,
        "ops": n,
        "ops_per_s": round(statistics.median(rates)),
        "ops_per_s_runs": [round(r) for r in rates],
        "timed_ops_per_s": round(n / (lat["elapsed_ns"] / 1e9)),
        "p50_us": percentile_us(latencies, 50),
        "p99_us": percentile_us(latencies, 99),
        "p999_us": percentile_us(latencies, 99.9),
        "max_us": round(latencies[-1] / 1000, 2) if latencies else 0.0,
        "trades": lat["trades"],
        "traded_qty": lat["traded_qty"],
        "events": lat["events"],
        "resting_orders": lat["resting_orders"],
        "cancel_p50_us_first_decile": lat["cancel_p50_us_first_decile"],
        "cancel_p50_us_last_decile": lat["cancel_p50_us_last_decile"],
        "orders_per_level_at_end": lat["orders_per_level_at_end"],
        "state_hash": lat["state_hash"],
        "max_open_notional": max_open_notional,
        "deterministic": (len(hashes) == 1 if max_open_notional else hashes == {workload.state_hash})
        and credit_result.get("credit_deterministic", True),
        **credit_result,
    }


def _credit_figures(rates: list[float], passes: list[tuple[int, str]], clat: dict, lat: dict) -> dict:
    hashes = {h for _, h in passes} | {clat["state_hash"]}
    ops_per_s = round(statistics.median(rates))
    latencies = clat["latencies"]
    return {
        "credit_ops_per_s": ops_per_s,
        "credit_ops_per_s_runs": [round(r) for r in rates],
        "credit_p50_us": percentile_us(latencies, 50),
        "credit_p99_us": percentile_us(latencies, 99),
        "credit_trades": clat["trades"],
        "credit_fees": clat["fees"],
        "credit_money_problems": clat["money_problems"],
        # Same trades (funds never bind), one hash over every credit pass, money conserved.
        "credit_deterministic": len(hashes) == 1
        and clat["trades"] == lat["trades"]
        and not clat["money_problems"],
    }


def format_engine_bench(r: dict) -> str:
    runs = ", ".join(f"{x:,}" for x in r["ops_per_s_runs"])
    return (
        f"engine bench ({r['mode']}, seed {r['seed']}): {r['ops']:,} ops\n"
        f"  throughput: {r['ops_per_s']:,} ops/s (median of {runs})\n"
        f"  latency per op: p50 {r['p50_us']} µs  p99 {r['p99_us']} µs  "
        f"p99.9 {r['p999_us']} µs  max {r['max_us']} µs  (timed pass {r['timed_ops_per_s']:,} ops/s)\n"
        f"  {r['events']:,} events, {r['trades']:,} trades, traded qty {r['traded_qty']:,}, "
        f"{r['resting_orders']:,} orders resting at the end ({r['orders_per_level_at_end']:,} per level)\n"
        f"  cancel p50: {r['cancel_p50_us_first_decile']} µs in the first tenth, "
        f"{r['cancel_p50_us_last_decile']} µs in the last (deepest book)\n"
        f"  state hash {r['state_hash'][:16]}…  "
        + (
            f"max_open_notional {r['max_open_notional']:,}: all passes on one hash: {r['deterministic']}"
            if r.get("max_open_notional")
            else f"every pass matches the generator: {r['deterministic']}"
        )
        + (_format_credit(r) if "credit_ops_per_s" in r else "")
    )


def _format_credit(r: dict) -> str:
    runs = ", ".join(f"{x:,}" for x in r["credit_ops_per_s_runs"])
    ratio = r["credit_ops_per_s"] / r["ops_per_s"] if r["ops_per_s"] else 0.0
    fees = ", ".join(f"{v:,} {k}" for k, v in sorted(r["credit_fees"].items())) or "none"
    return (
        f"\n  with credit checks (funded accounts, fees): {r['credit_ops_per_s']:,} ops/s "
        f"(median of {runs}), {ratio:.2f}x without\n"
        f"  credit latency per op: p50 {r['credit_p50_us']} µs  p99 {r['credit_p99_us']} µs; "
        f"{r['credit_trades']:,} trades settled, fees {fees}; "
        f"money conserved: {not r['credit_money_problems']}"
    )
