"""`loom bench overload --protocol binary|ws|rest|fix [--json]`: does goodput hold when the
venue is offered more than it can take?

1. Finds the sustainable rate C: the highest offered rate at which the acked p99 stays below
   50 ms (and the node takes what is offered: under 1% refused or held back). Doubling from a
   low rate, then bisecting between the last rate that passed and the first that failed.
2. Offers 2C and 4C and reports the goodput (orders answered by the core per second), the
   acked p99, the refusals (OVERLOADED) and what the client held back because the node
   pushed back (TCP backpressure; the load generator does not send into a full socket).

One node (`loom run`, its own process) serves every step; each step's load generator is a
`loom load --hold` in its own process, so the generator and the node compete only for the
CPU, not for one event loop. Targets: goodput_2x and goodput_4x >= 0.9 x capacity, acked p99
at 4C <= 200 ms, client_errors 0 (every order sent is answered, acked or refused).

At 2C and 4C the client may have a latency budget (`budget_ms`; default 0, none, so the
figures are the venue's alone): it keeps at most
C x budget orders sent and not yet answered, over its connections, and holds the rest
(`loom load --max-in-flight`). Without it the kernel's socket buffers on both sides queue
hundreds of orders per connection before TCP pushes back, and each waits its turn: latency
no node-side rule can see, let alone bound (measured: REST at 4C, p50 2.5 s). `budget_ms=0`
measures without it. `generator_nice` runs the generator below the node's priority: on this
2-core machine it otherwise takes the CPU a client on its own machine would not.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from engine.bench.stats import process_cpu_s
from engine.load.spawn import LOAD_ACCOUNTS, spawned_exchange

P99_TARGET_MS = 50.0
# Where the doubling starts and the most it will offer, per protocol (orders/s).
START = {"binary": 10_000, "ws": 4_000, "rest": 1_000, "fix": 1_000}
CEILING = {"binary": 640_000, "ws": 256_000, "rest": 64_000, "fix": 64_000}
PORT_KEY = {"binary": "binary", "ws": "http", "rest": "http", "fix": "fix"}
CONNECTIONS = {"binary": 1, "ws": 4, "rest": 32, "fix": 1}  # loom load's defaults, passed explicitly
BISECT_STEPS = 2
FLOOR_DIVISOR = 32  # the lowest rate tried is the start / this


def in_flight_per_connection(protocol: str, capacity: float, budget_ms: float) -> int:
    """A client's bound on orders sent and not yet answered per connection: what the venue
    answers in `budget_ms` at `capacity` (Little's law), spread over the connections; 0
    (no bound) when budget_ms is 0."""
    if budget_ms <= 0:
        return 0
    return max(1, math.ceil(capacity * budget_ms / 1000 / CONNECTIONS[protocol]))


def _step(
    protocol: str,
    host: str,
    port: int,
    rate: float,
    duration: float,
    max_in_flight: int = 0,
    nice: int = 0,
    node_pid: int | None = None,
) -> dict:
    """One `loom load --hold` run in its own process (at niceness `nice`): its JSON report,
    with `node_busy` when `node_pid` is given: the node's CPU seconds over the step (idle
    while the generator starts) per second of the generator's sending and draining."""
    node_cpu = process_cpu_s(node_pid) if node_pid else 0.0
    cmd = [
        sys.executable,
        "-m",
        "engine.cli",
        "load",
        "--protocol",
        protocol,
        "--host",
        host,
        "--port",
        str(port),
        "--rate",
        str(int(rate)),
        "--duration",
        str(duration),
        "--drain",
        "5",
        "--api-key",
        next(iter(LOAD_ACCOUNTS)),
        "--connections",
        str(CONNECTIONS[protocol]),
        "--hold",
        "--max-in-flight",
        str(max_in_flight),
        "--json",
    ]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=duration + 120,
        preexec_fn=(lambda: os.nice(nice)) if nice else None,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"loom load failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    report = json.loads(lines[-1])
    if node_pid and report.get("client_wall_s"):
        report["node_busy"] = round((process_cpu_s(node_pid) - node_cpu) / report["client_wall_s"], 3)
    return report


def keeps_up(report: dict) -> bool:
    """The node took what was offered: under 1% refused or held back, no errors, and it
    answered at the rate offered."""
    sent = max(1, report["sent"])
    return (
        report["overloaded"] + report["held"] <= 0.01 * sent
        and report["errors"] == 0
        and report["achieved_rate"] >= 0.9 * report["offered_rate"]
    )


def sustainable(report: dict) -> bool:
    """The node took what was offered, answering within the p99 target."""
    return report["p99_us"] / 1000 < P99_TARGET_MS and keeps_up(report)


def find_capacity(run, start: float, ceiling: float, log, ok=sustainable) -> tuple[float, list[dict]]:
    """The highest passing rate (0 when even `start` fails): doubling, then bisecting.
    `run(rate)` returns a load report; `ok(report)` says whether it passed."""
    steps: list[dict] = []

    def passes(rate: float) -> bool:
        report = run(rate)
        steps.append(report)
        passed = ok(report)
        log(
            f"  {rate:>9,.0f}/s offered: goodput {report['achieved_rate']:,}/s, p99 "
            f"{report['p99_us'] / 1000:.1f} ms, refused {report['overloaded']:,}, held "
            f"{report['held']:,} -> {'ok' if passed else 'over'}"
        )
        return passed

    good, bad = 0.0, 0.0
    rate = start
    while rate <= ceiling:
        if not passes(rate):
            bad = rate
            break
        good = rate
        rate *= 2
    if not bad:
        return good, steps
    # The start failed (a busy machine): halve down to a floor, so that C (and the 2C and 4C
    # offered from it) is what this machine sustains now rather than 0, which no target can meet.
    while not good and bad / 2 >= start / FLOOR_DIVISOR:
        if passes(bad / 2):
            good = bad / 2
        else:
            bad = bad / 2
    for _ in range(BISECT_STEPS):
        mid = (good + bad) / 2 if good else bad / 2
        if passes(mid):
            good = mid
        else:
            bad = mid
    return good, steps


def run_overload_bench(
    protocol: str, duration: float = 2.0, log=print, budget_ms: float = 0.0, generator_nice: int = 0
) -> dict:
    with spawned_exchange() as info:
        host, port = info["host"], info[PORT_KEY[protocol]]

        def run(rate: float, max_in_flight: int = 0) -> dict:
            return _step(protocol, host, port, rate, duration, max_in_flight, generator_nice, info["pid"])

        log(f"{protocol}: warming up")
        run(START[protocol])  # the node's first seconds (allocation, first GCs) are not measured
        log(f"{protocol}: finding the sustainable rate (acked p99 < {P99_TARGET_MS:g} ms)")
        capacity, steps = find_capacity(run, START[protocol], CEILING[protocol], log)
        base = capacity or START[protocol]
        bound = in_flight_per_connection(protocol, base, budget_ms)
        over = {}
        for factor in (2, 4):
            held = f"client in flight <= {bound or 'any'} per connection"
            log(f"{protocol}: offering {factor}C = {factor * base:,.0f}/s ({held})")
            over[factor] = run(factor * base, bound)
    errors = sum(r["errors"] for r in steps) + over[2]["errors"] + over[4]["errors"]
    result = {
        "protocol": protocol,
        "capacity": round(capacity),
        "goodput_2x": over[2]["achieved_rate"],
        "goodput_4x": over[4]["achieved_rate"],
        "acked_p99_ms_2x": round(over[2]["p99_us"] / 1000, 1),
        "acked_p99_ms_4x": round(over[4]["p99_us"] / 1000, 1),
        "refused_2x": over[2]["overloaded"],
        "refused_4x": over[4]["overloaded"],
        "held_2x": over[2]["held"],
        "held_4x": over[4]["held"],
        # Which of the two set the pace: the node's CPU per second of the step (1.0 = one
        # core) and how late the generator sent (p99, ms; microseconds when it keeps up).
        "node_busy_2x": over[2].get("node_busy"),
        "node_busy_4x": over[4].get("node_busy"),
        "client_late_p99_ms_2x": over[2].get("client_late_p99_ms"),
        "client_late_p99_ms_4x": over[4].get("client_late_p99_ms"),
        "client_errors": errors,
        "step_duration_s": duration,
        "client_budget_ms": budget_ms,
        "client_max_in_flight": bound,
        "generator_nice": generator_nice,
        "load_average": round(os.getloadavg()[0], 2),
    }
    result["targets_met"] = targets_met(result)
    return result


def targets_met(r: dict) -> dict[str, bool]:
    c = r["capacity"]
    return {
        "goodput_2x": c > 0 and r["goodput_2x"] >= 0.9 * c,
        "goodput_4x": c > 0 and r["goodput_4x"] >= 0.9 * c,
        "acked_p99_4x": r["acked_p99_ms_4x"] <= 200,
        "client_errors": r["client_errors"] == 0,
    }


def format_overload(r: dict) -> str:
    met = r["targets_met"]
    mark = {True: "met", False: "MISSED"}
    return (
        f"{r['protocol']}: capacity {r['capacity']:,}/s (acked p99 < {P99_TARGET_MS:g} ms)\n"
        f"  2C: goodput {r['goodput_2x']:,}/s, acked p99 {r['acked_p99_ms_2x']} ms, refused "
        f"{r['refused_2x']:,}, held back {r['held_2x']:,}\n"
        f"  4C: goodput {r['goodput_4x']:,}/s, acked p99 {r['acked_p99_ms_4x']} ms, refused "
        f"{r['refused_4x']:,}, held back {r['held_4x']:,}\n"
        f"  node CPU (cores) 2C {r['node_busy_2x']}, 4C {r['node_busy_4x']}; generator sent late by "
        f"p99 {r['client_late_p99_ms_2x']} / {r['client_late_p99_ms_4x']} ms\n"
        f"  client: at most {r['client_max_in_flight'] or 'any number of'} orders in flight per connection "
        f"at 2C and 4C (budget {r['client_budget_ms']:g} ms), niceness {r['generator_nice']}; load average "
        f"{r['load_average']}\n"
        f"  client errors {r['client_errors']}; targets: "
        + ", ".join(f"{name} {mark[ok]}" for name, ok in met.items())
    )
