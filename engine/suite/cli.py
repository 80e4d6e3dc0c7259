"""`loom suite concurrency|stress|soak|dr [--json]`: the seed's load suites (issue 16)."""

from __future__ import annotations

import argparse
import json


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a positive whole number is needed")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a positive number is needed")
    return value


def cmd_suite(args: argparse.Namespace) -> int:
    from engine.chaos.drill import quiet_logs

    quiet_logs()
    if args.suite == "dr":
        from engine.suite.dr import format_dr, run_dr

        result = run_dr(orders_after=args.orders_after, concurrency=args.concurrency)
        print(json.dumps(result) if args.json else format_dr(result))
        return 0 if result["passed"] else 1
    from engine.suite import load_suites as s

    if args.suite == "concurrency":
        result = s.run_concurrency(args.orders or 100_000, args.sessions or 1_000, args.rate)
    elif args.suite == "stress":
        result = s.run_stress(args.orders or 200_000, args.sessions or 64)
    else:
        result = s.run_soak(args.minutes, args.window, args.probe_seconds)
    print(json.dumps(result) if args.json else s.format_load_suite(result))
    return 0 if result["passed"] else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "suite",
        help="the load suites: concurrency (mixed protocols, every ack checked), stress (a burst), "
        "soak (RSS, GC and p99 drift), dr (a standby's data dir destroyed, then a failover)",
    )
    p.add_argument("suite", choices=("concurrency", "stress", "soak", "dr"))
    p.add_argument("--orders", type=_positive_int, help="concurrency: 100,000; stress: 200,000")
    p.add_argument("--sessions", type=_positive_int, help="client sessions (concurrency 1,000; stress 64)")
    p.add_argument("--rate", type=_positive_float, default=4_000, help="concurrency: orders/s offered")
    p.add_argument("--minutes", type=_positive_float, default=3.0, help="soak: how long")
    p.add_argument("--window", type=_positive_float, default=30.0, help="soak: seconds per window")
    p.add_argument(
        "--probe-seconds",
        type=_positive_float,
        default=5.0,
        help="soak: seconds per step of the probe finding the sustained maximum rate",
    )
    p.add_argument("--orders-after", type=_positive_int, default=200, help="dr: orders acked after each step")
    p.add_argument("--concurrency", type=_positive_int, default=4, help="dr: concurrent REST senders")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_suite)
