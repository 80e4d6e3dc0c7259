"""`loom fuzz --target rest|ws|fix|binary --cases N [--seed S] [--json]`."""

from __future__ import annotations

import argparse
import json

from engine.fuzz.campaign import TARGETS, run_campaign


def cmd_fuzz(args: argparse.Namespace) -> int:
    if args.cases < 1:
        print("loom fuzz: --cases must be at least 1")
        return 2
    report = run_campaign(args.target, args.cases, args.seed)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.summary())
        print("answers: " + ", ".join(f"{k} x{n}" for k, n in report.statuses.items()))
        for sample in report.samples:
            print(sample)
    return 0 if report.ok else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fuzz",
        help="throw seeded bad input at one gateway of a throwaway node: no crash, hang, 5xx or traceback",
    )
    p.add_argument("--target", choices=TARGETS, required=True)
    p.add_argument("--cases", type=int, default=10_000, help="bad inputs to send (default 10,000)")
    p.add_argument("--seed", type=int, help="the campaign's seed (default: random; printed)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fuzz)
