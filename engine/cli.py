"""`loom`: the command-line tool of Loom Exchange."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys

from engine import __version__


def _cmd_bench_engine(args: argparse.Namespace) -> int:
    from engine.bench.engine_bench import format_engine_bench, run_engine_bench

    result = run_engine_bench(
        ops=args.ops,
        seed=args.seed,
        mode=args.mode,
        repeat=args.repeat,
        credit=args.credit,
        max_open_notional=args.max_open_notional,
        accounts=args.accounts,
    )
    print(json.dumps(result) if args.json else format_engine_bench(result))
    return 0 if result["deterministic"] else 1


def _cmd_bench_paths(args: argparse.Namespace) -> int:
    from engine.bench.paths_bench import format_paths_bench, run_paths_bench

    result = run_paths_bench(ops=args.ops, seed=args.seed, mode=args.mode, repeat=args.repeat)
    print(json.dumps(result) if args.json else format_paths_bench(result))
    return 0 if result["deterministic"] and result["events_agree"] else 1


def _cmd_bench_durable(args: argparse.Namespace) -> int:
    from engine.bench.durable_bench import format_durable, run_durable_bench

    result = run_durable_bench(orders=args.orders, batch=args.batch, seed=args.seed, data_dir=args.data)
    print(json.dumps(result) if args.json else format_durable(result))
    return 0


def _cmd_bench_recovery(args: argparse.Namespace) -> int:
    from engine.bench.durable_bench import format_recovery, run_recovery_bench

    result = run_recovery_bench(orders=args.orders, seed=args.seed)
    print(json.dumps(result) if args.json else format_recovery(result))
    return 0 if result["hash_matches"] else 1


def _cmd_bench_failover(args: argparse.Namespace) -> int:
    import logging

    from engine.bench.failover_bench import format_failover, run_failover_bench

    logging.getLogger("loom").setLevel(logging.ERROR)  # the drill's reconnects are expected

    result = run_failover_bench(kills=args.kills, appends=args.appends, orders=args.orders, batch=args.batch)
    print(json.dumps(result) if args.json else format_failover(result))
    return 0


def _cmd_chaos(args: argparse.Namespace) -> int:
    from engine.chaos.drill import format_chaos, quiet_logs, run_chaos
    from engine.chaos.faults import KINDS

    kinds = args.kinds.split(",") if args.kinds else list(KINDS)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        print(f"loom chaos: unknown fault kinds {unknown}: choose from {','.join(KINDS)}", file=sys.stderr)
        return 2
    quiet_logs()
    result = run_chaos(faults=args.faults, kinds=kinds, seed=args.seed, concurrency=args.concurrency)
    print(json.dumps(result) if args.json else format_chaos(result))
    return 0 if not result["contradictions"] and result["state_hash_matches"] else 1


def _cmd_bench_lookup(args: argparse.Namespace) -> int:
    from engine.bench.lookup_bench import format_lookup, run_lookup_bench

    result = run_lookup_bench(
        args.seconds,
        args.concurrency,
        args.preload,
        args.url,
        args.key,
        args.rate,
        args.healthz_load,
        args.rounds,
    )
    print(json.dumps(result) if args.json else format_lookup(result))
    return 0


def _cmd_bench_snapshot_stall(args: argparse.Namespace) -> int:
    from engine.bench.snapshot_stall import format_snapshot_stall, run_snapshot_stall_bench

    writers = ("follower", "fork") if args.writer == "both" else (args.writer,)
    result = run_snapshot_stall_bench(
        resting=args.resting, rate=args.rate, duration=args.duration, rounds=args.rounds, writers=writers
    )
    print(json.dumps(result) if args.json else format_snapshot_stall(result))
    return 0


def _cmd_trace(args: argparse.Namespace) -> int:
    from engine.cli_datadir import EXIT_USAGE, DataDirRefused, journal_dir
    from engine.core.stage_timings import duration_text, format_stages
    from engine.journal import JournalCorruptError
    from engine.order_history import TRACE_RANGE_GONE, JournalRangeGone, history_json, order_history

    try:
        journal_dir(args.data_dir)  # never read (and create) a journal where there is none
    except DataDirRefused as exc:
        print(f"loom trace: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        found = order_history(args.data_dir, args.order_id)
    except JournalRangeGone as exc:
        print(f"loom trace: {exc}", file=sys.stderr)
        return TRACE_RANGE_GONE
    except (JournalCorruptError, FileNotFoundError) as exc:
        print(f"loom trace: {exc}", file=sys.stderr)
        return 2
    if found is None:
        print(f"loom trace: order {args.order_id} is not in the journal at {args.data_dir}", file=sys.stderr)
        return 1
    out = history_json(found)
    if args.json:
        print(json.dumps(out))
        return 0
    who = f"{out['account']}, {out['symbol']}, client id {out['client_order_id']!r}"
    print(f"order {out['order_id']} ({who}): {out['status']}")
    print(f"trace {out['trace_id'] or '(none recorded)'}  {out['trace_url']}")
    print(f"stages {format_stages(out['stages'])}")
    first_ts = out["events"][0]["ts"] if out["events"] else 0
    for ev in out["events"]:
        detail = {k: v for k, v in ev.items() if k not in ("type", "seq", "ts")}
        since = "" if ev["ts"] == first_ts else "+" + duration_text((ev["ts"] - first_ts) / 1000)
        print(f"  seq {ev['seq']:>10}  {iso_utc(ev['ts'])} {since:>11}  {ev['type']:<10} {detail}")
    return 0


def iso_utc(ns: int) -> str:
    """Nanoseconds since the epoch as an ISO 8601 UTC time to the microsecond."""
    import datetime

    seconds, rest = divmod(ns, 1_000_000_000)
    when = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return f"{when:%Y-%m-%dT%H:%M:%S}.{rest // 1000:06d}Z"


def _cmd_bench_telemetry(args: argparse.Namespace) -> int:
    from engine.bench.telemetry_bench import format_telemetry, run_telemetry_bench

    result = run_telemetry_bench(
        orders=args.orders, rounds=args.rounds, seed=args.seed, sampling=args.sampling
    )
    print(json.dumps(result) if args.json else format_telemetry(result))
    return 0


def _cmd_bench_overload(args: argparse.Namespace) -> int:
    from engine.bench.overload_bench import format_overload, run_overload_bench

    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    result = run_overload_bench(
        args.protocol,
        duration=args.step,
        log=log,
        budget_ms=args.client_budget_ms,
        generator_nice=args.generator_nice,
    )
    print(json.dumps(result) if args.json else format_overload(result))
    return 0 if all(result["targets_met"].values()) else 1


def _cmd_bench_connections(args: argparse.Namespace) -> int:
    from engine.bench.connections_bench import format_connections, run_connections_bench

    result = run_connections_bench(
        args.idle, args.rate, args.seconds, args.processes, args.nofile, args.flood_nice, args.authenticated
    )
    print(json.dumps(result) if args.json else format_connections(result))
    return 0


def _cmd_bench_marketdata(args: argparse.Namespace) -> int:
    from engine.bench.marketdata_bench import format_marketdata, run_marketdata_bench

    result = run_marketdata_bench(args.subscribers, args.updates, args.max_rate)
    print(json.dumps(result) if args.json else format_marketdata(result))
    return 0


def _cmd_bench_fanout(args: argparse.Namespace) -> int:
    from engine.bench.fanout_bench import format_fanout, run_fanout_bench

    result = run_fanout_bench(
        args.subscribers,
        args.rate,
        args.duration,
        args.max_rate,
        args.processes,
        args.marketdata,
        args.client_nice,
    )
    print(json.dumps(result) if args.json else format_fanout(result))
    return 0


def _cmd_marketdata(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from engine.console import ConsoleHandler
    from engine.logfmt import formatter
    from engine.marketdata_process import StartFailed, serve_marketdata

    servers = [u for u in args.cluster.split(",") if u]
    if not servers or not all(u.startswith(("nats://", "tls://")) for u in servers):
        print(f"loom marketdata: --cluster needs nats:// URLs, not {args.cluster!r}", file=sys.stderr)
        return 2
    handler = ConsoleHandler()
    handler.setFormatter(formatter(args.log_format))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(
            serve_marketdata(
                servers, args.stream, args.host, args.http_port, args.max_queued, args.book_max_rate
            )
        )
    except StartFailed as exc:
        print(f"loom marketdata: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the HTTP port: in use, or not ours to bind
        print(
            f"loom marketdata: cannot listen on {args.host}:{args.http_port}: {exc.strerror}", file=sys.stderr
        )
        return 1
    return 0


def _cmd_dashboards_build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from engine.extras import require

    require("grafanalib", "grafanalib", "dashboards", "loom dashboards build")
    from dashboards.build import GENERATED, build, differences

    out = Path(args.out) if args.out else GENERATED
    if args.check:
        stale = differences(out)
        for name in stale:
            print(
                f"loom dashboards build: {out / name} is stale; run `loom dashboards build`", file=sys.stderr
            )
        return 1 if stale else 0
    for path in build(out):
        print(path)
    return 0


def _cmd_top(args: argparse.Namespace) -> int:
    import urllib.error

    from engine.top import run

    if args.interval <= 0:
        print("loom top: --interval must be positive", file=sys.stderr)
        return 2
    try:
        return run(args.url, args.interval, args.once, args.json)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"loom top: no node answers at {args.url}: {reason}", file=sys.stderr)
        return 2


# `loom run` refused to start: the journal is damaged or lacks commands the state needs;
# an operator decides (`loom journal repair`, or restoring archived segments).
EXIT_NEEDS_OPERATOR = 3


def _cmd_run(args: argparse.Namespace) -> int:
    import logging

    from engine.console import ConsoleHandler, settle
    from engine.logfmt import formatter

    handler = ConsoleHandler()  # a broken stderr never stops the node
    handler.setFormatter(formatter(args.log_format or "text"))  # the config file may change it
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        return _run(args)
    finally:
        settle()  # else a stdout that cannot be flushed at exit turns exit 0 into 120


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from engine.app import serve
    from engine.config import ConfigError, load_config

    try:
        cfg = load_config(
            args.config,
            data_dir=args.data_dir,
            host=args.host,
            http_port=args.http_port,
            fix_port=args.fix_port,
            binary_port=args.binary_port,
            demo=args.demo or None,
            demo_rate=args.rate,
            cluster=args.cluster,
            node_id=args.node_id,
            log_format=args.log_format,
            access_log_sample=args.access_log_sample,
            environment=args.environment,
        )
    except ConfigError as exc:
        print(f"loom run: {exc}", file=sys.stderr)
        return 2
    use_log_format(cfg.log_format)
    if not cfg.instruments:
        print("loom run: no instruments configured (use --demo or a config file)", file=sys.stderr)
        return 2
    from engine.exchange import DataDirLocked
    from engine.journal import JournalCorruptError

    loop_factory = _event_loop(args.event_loop)  # serve() logs which one runs
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(serve(cfg))
    except DataDirLocked as exc:
        print(f"loom run: {exc}; is another loom running on the same --data-dir?", file=sys.stderr)
        return 2
    except JournalCorruptError as exc:  # one ERROR line naming the damage, no traceback
        logging.getLogger("loom.run").error("%s", exc)
        return EXIT_NEEDS_OPERATOR
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            print(f"loom run: cannot listen: {exc.strerror}", file=sys.stderr)
            print("  choose other ports with --http-port/--fix-port/--binary-port", file=sys.stderr)
            return 2
        raise


def use_log_format(name: str) -> None:
    """Every console handler and `say` line in this format (`text` or `json`)."""
    import logging

    from engine import console
    from engine.logfmt import console_line, formatter

    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter(name))
    console.render_lines(console_line if name == "json" else None)


def _event_loop(choice: str | None):
    """The loop factory for `loom run`: uvloop when it is installed (a dependency on Linux;
    its transports cost the gateways less CPU per message than asyncio's), unless asyncio
    is asked for (None: asyncio's default)."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise SystemExit("loom run: --event-loop uvloop, but uvloop is not installed") from None
        else:
            return uvloop.new_event_loop
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loom", description="Loom Exchange")
    parser.add_argument("--version", action="version", version=f"loom {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    mdp = sub.add_parser(
        "marketdata",
        help="serve the market-data API (WebSocket and REST) from a cluster's NATS: any number may run",
    )
    mdp.add_argument("--cluster", required=True, help="NATS URLs, comma-separated (nats://host:port)")
    mdp.add_argument("--stream", default="LOOM_JOURNAL", help="the cluster's stream name (cluster_stream)")
    mdp.add_argument("--host", default="127.0.0.1")
    mdp.add_argument("--http-port", type=int, default=8090, help="0: any free port (printed when ready)")
    mdp.add_argument("--max-queued", type=_positive_int, default=50_000, help="[market_data] max_queued")
    mdp.add_argument("--book-max-rate", type=float, default=0.0, help="[market_data] book_max_rate")
    mdp.add_argument("--log-format", choices=("text", "json"), default="text")
    mdp.set_defaults(func=_cmd_marketdata)
    run = sub.add_parser("run", help="run the exchange (single node, or a cluster member with --cluster)")
    run.add_argument("--config", help="TOML configuration file (or LOOM_CONFIG)")
    run.add_argument("--demo", action="store_true", help="demo instruments, accounts and simulated traders")
    run.add_argument("--rate", type=int, default=None, help="demo orders per second (default 2000)")
    run.add_argument("--data-dir", help="where the journal and snapshots live (default ./data)")
    run.add_argument("--host", help="listen address (loopback unless LOOM_ALLOW_PUBLIC_BIND=1)")
    run.add_argument("--http-port", type=int, help="REST and WebSocket port (0 = any free port)")
    run.add_argument("--fix-port", type=int, help="FIX 4.4 port (-1 = off)")
    run.add_argument("--binary-port", type=int, help="binary protocol port (-1 = off)")
    run.add_argument(
        "--cluster",
        help="NATS servers (comma-separated nats:// URLs): replicated journal and leader lease "
        "instead of the local journal (or LOOM_CLUSTER)",
    )
    run.add_argument("--node-id", help="this node's name in the cluster (or LOOM_NODE_ID)")
    run.add_argument(
        "--event-loop",
        choices=("uvloop", "asyncio"),
        help="the asyncio event loop implementation (default: uvloop when installed)",
    )
    run.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="log lines as text (default) or JSON objects with ts, level, logger, msg and the "
        "trace_id/order_id/seq/account that apply (or log_format, LOOM_LOG_FORMAT)",
    )
    run.add_argument(
        "--access-log-sample",
        type=float,
        metavar="RATE",
        help="log this share of REST requests and of WebSocket and FIX sessions to loom.access "
        "(0 = off, the default; 1 = every one; or access_log_sample, LOOM_ACCESS_LOG_SAMPLE)",
    )
    run.add_argument(
        "--environment",
        help="deployment.environment of exported spans (default dev; or environment, LOOM_ENVIRONMENT)",
    )
    run.set_defaults(func=_cmd_run)

    from engine.cli_persistence import add_parsers as add_persistence_parsers

    add_persistence_parsers(sub)
    from engine.load.cli import add_parser as add_load_parser

    add_load_parser(sub)
    from engine.suite.cli import add_parser as add_suite_parser

    add_suite_parser(sub)
    from engine.fuzz.cli import add_parser as add_fuzz_parser

    add_fuzz_parser(sub)
    from engine.cli_risk import add_parsers as add_risk_parsers

    add_risk_parsers(sub)
    from engine.cli_accounts import add_parsers as add_accounts_parsers

    add_accounts_parsers(sub)
    from engine.stack.cli import add_parser as add_stack_parser

    add_stack_parser(sub)

    tr = sub.add_parser("trace", help="an order's trace id, link and whole history from the journal")
    tr.add_argument("order_id", type=_positive_int)
    tr.add_argument("--data-dir", default="data", help="the node's data directory (default ./data)")
    tr.add_argument("--json", action="store_true")
    tr.set_defaults(func=_cmd_trace)

    top = sub.add_parser("top", help="a live terminal view of a running node (book tops, flow, ack latency)")
    top.add_argument(
        "--url", default=os.environ.get("LOOM_URL", "http://127.0.0.1:8080"), help="the node (or LOOM_URL)"
    )
    top.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    top.add_argument("--once", action="store_true", help="print one frame (two samples apart) and exit")
    top.add_argument("--json", action="store_true", help="with --once: the frame's figures as JSON")
    top.set_defaults(func=_cmd_top)

    dash = sub.add_parser("dashboards", help="Grafana dashboards generated from the metrics catalogue")
    dash_sub = dash.add_subparsers(dest="dashboards", required=True)
    db = dash_sub.add_parser("build", help="write dashboards/generated/<uid>.json (or --check them)")
    db.add_argument("--out", help="output directory (default dashboards/generated)")
    db.add_argument("--check", action="store_true", help="exit 1 if the JSON there differs from the sources")
    db.set_defaults(func=_cmd_dashboards_build)

    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    be = bench_sub.add_parser("engine", help="matching engine throughput and per-op latency")
    be.add_argument("--ops", type=_positive_int, default=1_000_000)
    be.add_argument("--seed", type=int, default=1)
    be.add_argument("--mode", choices=("deep", "bounded"), default="deep")
    be.add_argument("--repeat", type=_positive_int, default=3, help="throughput passes (median)")
    be.add_argument(
        "--credit",
        action="store_true",
        help="also run the same workload with funded accounts, credit checks and fees (side by side)",
    )
    be.add_argument(
        "--accounts",
        type=_positive_int,
        default=100,
        help="trading accounts, half makers and half takers (the venue's per-account work)",
    )
    be.add_argument("--json", action="store_true", help="print one JSON object")
    be.add_argument(
        "--max-open-notional", type=int, default=0, help="set this venue risk limit first (0: no risk)"
    )
    be.set_defaults(func=_cmd_bench_engine)
    bp = bench_sub.add_parser("paths", help="apply and replay (one match loop: events built or counted)")
    bp.add_argument("--ops", type=_positive_int, default=1_000_000)
    bp.add_argument("--seed", type=int, default=1)
    bp.add_argument("--mode", choices=("deep", "bounded"), default="deep")
    bp.add_argument("--repeat", type=_positive_int, default=3, help="interleaved rounds (median)")
    bp.add_argument("--json", action="store_true", help="print one JSON object")
    bp.set_defaults(func=_cmd_bench_paths)
    bd = bench_sub.add_parser("durable", help="sequencer + journal (fdatasync) + engine throughput")
    bd.add_argument("--orders", type=_positive_int, default=1_000_000)
    bd.add_argument("--batch", type=_positive_int, default=512, help="commands per group commit")
    bd.add_argument("--seed", type=int, default=1)
    bd.add_argument("--data", help="journal here instead of a temporary directory (kept)")
    bd.add_argument("--json", action="store_true")
    bd.set_defaults(func=_cmd_bench_durable)
    br = bench_sub.add_parser("recovery", help="restart time and replay throughput")
    br.add_argument("--orders", type=_positive_int, default=1_000_000)
    br.add_argument("--seed", type=int, default=1)
    br.add_argument("--json", action="store_true")
    br.set_defaults(func=_cmd_bench_recovery)
    bt = bench_sub.add_parser("telemetry", help="the same durable run with telemetry off and on: the ratio")
    bt.add_argument("--orders", type=_positive_int, default=200_000)
    bt.add_argument("--rounds", type=_positive_int, default=3)
    bt.add_argument("--sampling", default="", help="trace export sampling (default: loom run's)")
    bt.add_argument("--seed", type=int, default=1)
    bt.add_argument("--json", action="store_true")
    bt.set_defaults(func=_cmd_bench_telemetry)
    bc = bench_sub.add_parser(
        "connections", help="a flood of idle and slowloris connections against a loom run: acks and healthz"
    )
    bc.add_argument("--idle", type=_positive_int, default=20_000, help="idle connections to open")
    bc.add_argument("--rate", type=_positive_int, default=1_000, help="the legitimate client's orders/s")
    bc.add_argument("--seconds", type=float, default=10.0, help="each measured phase (before, during)")
    bc.add_argument("--processes", type=_positive_int, default=4, help="flood processes")
    bc.add_argument("--nofile", type=_positive_int, help="the node's RLIMIT_NOFILE (as ulimit -n)")
    bc.add_argument(
        "--flood-nice",
        type=int,
        default=0,
        choices=range(20),
        metavar="0-19",
        help="nice value of the flood's processes (an attacker elsewhere takes none of the node's CPU)",
    )
    bc.add_argument(
        "--authenticated",
        action="store_true",
        help="idle LOGGED-ON sessions (binary and WebSocket, another account) instead of a flood: "
        "RSS per 1,000 sessions and the ack p99 against the same run without them",
    )
    bc.add_argument("--json", action="store_true")
    bc.set_defaults(func=_cmd_bench_connections)
    bm = bench_sub.add_parser(
        "marketdata", help="book fan-out in one process: updates/s, frames/s, encode once vs per subscriber"
    )
    bm.add_argument("--subscribers", type=_positive_int, default=1_000, help="book subscribers")
    bm.add_argument("--updates", type=_positive_int, default=2_000, help="book updates (one per batch)")
    bm.add_argument(
        "--max-rate", type=float, default=10.0, help="the conflated run's updates/s per subscriber"
    )
    bm.add_argument("--json", action="store_true")
    bm.set_defaults(func=_cmd_bench_marketdata)
    bo = bench_sub.add_parser(
        "fanout",
        help="N WebSocket book subscribers on a real loom run while the book changes: lag p99, frames/s",
    )
    bo.add_argument("--subscribers", type=_positive_int, default=1_000, help="WebSocket book subscribers")
    bo.add_argument("--rate", type=_positive_int, default=1_000, help="book changes (orders) per second")
    bo.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    bo.add_argument(
        "--max-rate", type=float, default=10.0, help="each subscriber's max_rate (0 = every update)"
    )
    bo.add_argument(
        "--processes", type=_positive_int, default=4, help="client processes holding the subscribers"
    )
    bo.add_argument(
        "--marketdata",
        type=int,
        default=0,
        help="also serve subscribers from this many `loom marketdata` processes (a cluster node, NATS)",
    )
    bo.add_argument(
        "--client-nice",
        type=int,
        default=0,
        choices=range(20),
        metavar="0-19",
        help="nice value of the subscribers' processes (clients elsewhere take none of the servers' CPU)",
    )
    bo.add_argument("--json", action="store_true")
    bo.set_defaults(func=_cmd_bench_fanout)
    bf = bench_sub.add_parser(
        "failover",
        help="HA on a local 3-server NATS cluster: publish-ack, replicated orders/s, failover time",
    )
    bf.add_argument("--kills", type=_positive_int, default=5, help="leader SIGKILLs to time")
    bf.add_argument("--appends", type=_positive_int, default=1000, help="sequential publishes to time")
    bf.add_argument(
        "--orders", type=_positive_int, default=100_000, help="orders through the replicated journal"
    )
    bf.add_argument("--batch", type=_positive_int, default=512, help="commands per group commit")
    bf.add_argument("--json", action="store_true")
    bf.set_defaults(func=_cmd_bench_failover)
    bl = bench_sub.add_parser(
        "lookup", help="/healthz latency idle and under concurrent unknown-id order lookups (a real loom run)"
    )
    bl.add_argument("--seconds", type=float, default=10.0, help="each phase (idle, loaded)")
    bl.add_argument("--rounds", type=_positive_int, default=3, help="idle/loaded phase pairs, pooled")
    bl.add_argument("--concurrency", type=_positive_int, default=50, help="lookup clients")
    bl.add_argument("--preload", type=int, default=2000, help="finished orders in the started node's journal")
    bl.add_argument("--url", default="", help="measure this running node instead of starting one")
    bl.add_argument("--key", default="", help="an API key of the node at --url")
    bl.add_argument("--rate", type=float, default=10.0, help="lookups per second per client (0: unpaced)")
    bl.add_argument("--healthz-load", action="store_true", help="the clients call /healthz (a control)")
    bl.add_argument("--json", action="store_true")
    bl.set_defaults(func=_cmd_bench_lookup)

    ch = sub.add_parser(
        "chaos",
        help="a chaos drill on a local cluster: faults under load, the client's history checked "
        "against the journal (exit 1 on a contradiction)",
    )
    ch.add_argument("--faults", type=_positive_int, default=20, help="faults to inject, one after another")
    ch.add_argument(
        "--kinds",
        default="",
        help="the faults to cycle through, comma-separated (default: all of kill-leader, pause-leader, "
        "kill-nats, pause-nats)",
    )
    ch.add_argument("--seed", type=int, default=1, help="chooses the pause lengths")
    ch.add_argument("--concurrency", type=_positive_int, default=4, help="orders in flight")
    ch.add_argument("--json", action="store_true")
    ch.set_defaults(func=_cmd_chaos)

    bs = bench_sub.add_parser(
        "snapshot-stall", help="order-to-ack on a deep book with snapshots every 5 s and with them off"
    )
    bs.add_argument("--resting", type=_positive_int, default=800_000, help="orders on the book")
    bs.add_argument("--rate", type=_positive_int, default=5_000, help="binary orders/s offered")
    bs.add_argument("--duration", type=_positive_int, default=30, help="seconds of load, each way")
    bs.add_argument(
        "--rounds",
        type=_positive_int,
        default=1,
        help="pairs of runs, alternating which goes first; percentiles over all of a side's orders",
    )
    bs.add_argument(
        "--writer",
        choices=("follower", "fork", "both"),
        default="follower",
        help="who writes the snapshots ([snapshots] writer); both: a run with each in every round, "
        "the *_with keys are the follower's, *_with_fork the fork's",
    )
    bs.add_argument("--json", action="store_true")
    bs.set_defaults(func=_cmd_bench_snapshot_stall)

    bo = bench_sub.add_parser(
        "overload", help="find the sustainable rate C, then offer 2C and 4C: does goodput hold?"
    )
    bo.add_argument("--protocol", choices=("binary", "ws", "rest", "fix"), required=True)
    bo.add_argument("--step", type=float, default=2.0, help="seconds of load per step")
    bo.add_argument(
        "--client-budget-ms",
        type=float,
        default=0.0,
        help="at 2C and 4C the client keeps at most C x this many orders sent and not yet answered "
        "(spread over its connections; the rest held), as a client wanting answers within it "
        "does; 0: no bound, only TCP backpressure holds it back",
    )
    bo.add_argument(
        "--generator-nice",
        type=int,
        default=0,
        help="run each load generator at this niceness (a real client has its own machine)",
    )
    bo.add_argument("--json", action="store_true")
    bo.set_defaults(func=_cmd_bench_overload)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    from engine import progress
    from engine.extras import MissingExtra

    args = build_parser().parse_args(argv)
    # Long work shows a progress bar on a terminal (never with --json or into a pipe).
    bar = args.command in ("bench", "load") and progress.wanted(getattr(args, "json", False))
    try:
        with progress.shown(bar):
            return args.func(args)
    except MissingExtra as exc:
        print(f"loom {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
