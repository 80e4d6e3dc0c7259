"""`loom stack ...`: the argument parsers and what each subcommand prints."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from engine.stack import control, drill, layout
from engine.stack.pager_sink import read_pages
from engine.stack.procs import StackError

PORTS = ("prometheus", "alertmanager", "exchange", "pager")


def _dir(args: argparse.Namespace) -> Path:
    return Path(args.dir) if args.dir else layout.default_dir()


def _cmd_up(args: argparse.Namespace) -> int:
    ports = {name: getattr(args, f"{name}_port") for name in PORTS if getattr(args, f"{name}_port")}
    opts = control.Options(
        cluster=args.cluster,
        demo=args.demo,
        fast=args.fast,
        rate=args.rate,
        data_disk=args.data_disk or "",
        ports=ports,
        timeout=args.timeout,
    )
    for name in ("rules", "alertmanager_config"):
        path = getattr(args, name)
        if path and not Path(path).is_file():
            print(f"loom stack up: --{name.replace('_', '-')} {path}: no such file", file=sys.stderr)
            return 2
        if path:
            setattr(opts, name, path)
    try:
        state = control.up(_dir(args), opts)
    except control.AlreadyUp as exc:
        print(f"loom stack up: {exc}", file=sys.stderr)
        return 1
    except StackError as exc:
        print(f"loom stack up: {exc}", file=sys.stderr)
        return 2
    summary = state.summary()
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"loom stack is up in {summary['dir']}")
    for c in state.components:
        print(f"  {c.name:<14} {c.url:<28} pid {c.pid:<8} log {c.log}")
    print("`loom stack status` checks it, `loom stack pages` lists notifications, `loom stack down` stops it")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    rows = control.status(_dir(args))
    if args.json:
        print(json.dumps({"up": bool(rows) and all(r["healthy"] for r in rows), "components": rows}))
    elif not rows:
        print(f"no stack in {_dir(args).resolve()} (`loom stack up` starts one)")
    else:
        for r in rows:
            health = "healthy" if r["healthy"] else ("running, not answering" if r["running"] else "DOWN")
            ready = "" if "ready" not in r else (", ready" if r["ready"] else ", not ready")
            print(f"{r['name']:<14} {r['url']:<28} pid {r['pid']:<8} {health}{ready}")
    return 0 if rows and all(r["healthy"] for r in rows) else 1


def _cmd_down(args: argparse.Namespace) -> int:
    try:
        result = control.down(_dir(args))
    except StackError as exc:
        print(f"loom stack down: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        print(f"stopped: {', '.join(result['stopped']) or 'nothing was running'}")
        if result["strays_killed"]:
            print(f"also killed, still running under the directory: pids {result['strays_killed']}")
    if result["left"]:
        print(f"loom stack down: still running: pids {result['left']}", file=sys.stderr)
        return 1
    return 0


def _cmd_pages(args: argparse.Namespace) -> int:
    notes = read_pages(control.pages_path(_dir(args).resolve()))
    if args.receiver:
        notes = [n for n in notes if n["receiver"] == args.receiver]
    if args.json:
        print(json.dumps(notes))
        return 0
    for n in notes:
        stamp = time.strftime("%H:%M:%S", time.localtime(n["time"]))
        print(f"{stamp}  {n['receiver']:<20} {n['status']:<9} {', '.join(n['alertnames'])}")
    if not notes:
        print("no notifications recorded")
    return 0


def _cmd_drill(args: argparse.Namespace) -> int:
    state = layout.load(_dir(args).resolve())
    if state is None:
        print(
            f"loom stack drill: no stack in {_dir(args).resolve()}: `loom stack up --demo` first",
            file=sys.stderr,
        )
        return 2
    kinds = args.incidents.split(",") if args.incidents else list(drill.INCIDENTS)
    unknown = [k for k in kinds if k not in drill.INCIDENTS]
    if unknown:
        print(
            f"loom stack drill: unknown incidents {unknown}: choose from {','.join(drill.INCIDENTS)}",
            file=sys.stderr,
        )
        return 2
    try:
        # A SIGTERM ends the drill through its `finally`s: the fault is undone, not left behind.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        results = drill.run_drill(state, kinds, args.page_timeout, args.resolve_timeout, args.quiet_timeout)
    except StackError as exc:
        print(f"loom stack drill: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(drill.results_json(results)) if args.json else drill.format_drill(results))
    ran = [r for r in results if not r.skipped]
    return 0 if all(r.pages == 1 and r.resolved >= 1 and not r.error for r in ran) else 1


def add_parser(sub) -> None:
    stack = sub.add_parser(
        "stack",
        help="the exchange, Prometheus, Alertmanager and a pager sink on this machine (loopback)",
    )
    stack_sub = stack.add_subparsers(dest="stack", required=True)

    def common(p: argparse.ArgumentParser, json_help: str = "print JSON") -> None:
        p.add_argument(
            "--dir", help=f"the stack's directory (default $LOOM_STACK_DIR or ./{layout.DEFAULT_DIR})"
        )
        p.add_argument("--json", action="store_true", help=json_help)

    up = stack_sub.add_parser("up", help="start every component and wait until each is ready")
    common(up, "print the URLs and pids as one JSON object")
    up.add_argument("--demo", action="store_true", help="the exchange runs its demo traders")
    up.add_argument("--rate", type=int, help="demo orders per second (default: loom run's)")
    up.add_argument("--cluster", action="store_true", help="3 nats-servers and 2 nodes instead of one node")
    up.add_argument(
        "--fast",
        action="store_true",
        help=f"scrape and evaluate every {control.FAST_INTERVAL} (default {control.INTERVAL}); "
        "the rules' `for` durations and the routing stay as generated",
    )
    up.add_argument(
        "--data-disk",
        metavar="SIZE",
        help="mount a tmpfs of SIZE (e.g. 64M) as the node's data disk (root; the disk-full drill)",
    )
    for name in PORTS:
        up.add_argument(f"--{name}-port", type=int, help=f"{name} port on 127.0.0.1 (default: a free one)")
    up.add_argument("--rules", help="the alert rules file (default alerts/generated/loom-rules.yml)")
    up.add_argument("--alertmanager-config", help="the routing to use (default alerts/alertmanager.yml)")
    up.add_argument(
        "--timeout", type=float, default=120.0, help="seconds each component may take to be ready"
    )
    up.set_defaults(func=_cmd_up)

    st = stack_sub.add_parser("status", help="each component's pid and health (exit 1 if one is down)")
    common(st)
    st.set_defaults(func=_cmd_status)

    dn = stack_sub.add_parser("down", help="stop everything the stack started (data and logs stay)")
    common(dn)
    dn.set_defaults(func=_cmd_down)

    pg = stack_sub.add_parser("pages", help="the notifications the pager sink recorded")
    common(pg)
    pg.add_argument("--receiver", help="only this receiver's (e.g. pager)")
    pg.set_defaults(func=_cmd_pages)

    dr = stack_sub.add_parser(
        "drill", help="inject incidents (kill, journal errors, disk full) and count the pages each gets"
    )
    common(dr)
    dr.add_argument("--incidents", default="", help=f"comma-separated (default: {','.join(drill.INCIDENTS)})")
    dr.add_argument("--page-timeout", type=float, default=180.0, help="seconds to wait for the first page")
    dr.add_argument("--resolve-timeout", type=float, default=600.0, help="seconds to wait for the all-clear")
    dr.add_argument(
        "--quiet-timeout",
        type=float,
        default=300.0,
        help="seconds to wait, before each incident, for no paging alert to be firing or pending",
    )
    dr.set_defaults(func=_cmd_drill)
