"""`loom load --protocol binary|rest|ws|fix --rate R --duration D [--json]`; with
`--nodes host:port,...` (binary) against a cluster, following its leader across failovers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys

from engine.load.runner import LoadRun, run_open_loop
from engine.load.spawn import LOAD_ACCOUNTS, spawned_exchange

PROTOCOLS = ("binary", "rest", "ws", "fix")


def _driver(
    protocol: str,
    host: str,
    ports: dict,
    api_key: str,
    connections: int | None,
    run: LoadRun,
    hold: bool = False,
    max_in_flight: int = 0,
):
    if protocol == "rest":
        from engine.load.http_driver import RestDriver

        return RestDriver(host, ports["http"], api_key, connections or 32, hold, max_in_flight)
    if protocol == "ws":
        from engine.load.http_driver import WsDriver

        return WsDriver(host, ports["http"], api_key, connections or 4, hold, max_in_flight)
    if protocol == "binary":
        from engine.load.binary_driver import BinaryDriver

        return BinaryDriver(host, ports["binary"], api_key, connections or 1, run, hold, max_in_flight)
    if protocol == "fix":
        from engine.load.fix_driver import FixDriver

        return FixDriver(host, ports["fix"], api_key, connections or 1, hold, max_in_flight=max_in_flight)
    raise ValueError(f"unknown protocol {protocol!r}")


def _server_stats(host: str, port: int) -> dict:
    import urllib.request

    from engine.load.spawn import LOAD_ADMIN_KEY

    req = urllib.request.Request(
        f"http://{host}:{port}/v1/admin/stats", headers={"X-API-Key": LOAD_ADMIN_KEY}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        stats = json.loads(resp.read())
    return {
        "server_fsync_p50_us": stats["fsync_p50_us"],
        "server_fsync_p99_us": stats["fsync_p99_us"],
        "server_batches": stats["batches"],
        "server_mean_batch": round(stats["commands"] / stats["batches"], 1) if stats["batches"] else 0,
    }


def cmd_load(args: argparse.Namespace) -> int:
    api_key = args.api_key or next(iter(LOAD_ACCOUNTS))
    if args.plot:  # before the run, not after it: a missing extra must not waste the load
        from engine.extras import require

        require("matplotlib", "matplotlib", "plot", "loom load --plot")
    samples: dict = {}
    run = LoadRun.new()
    if args.nodes:
        return _load_cluster(args, api_key, run)
    with contextlib.ExitStack() as stack:
        if args.port is None:
            info = stack.enter_context(spawned_exchange(event_loop=args.server_event_loop))
            host, ports = info["host"], info
        else:
            host = args.host
            ports = {"http": args.port, "binary": args.port, "fix": args.port}
        if args.max_in_flight and not args.hold:
            raise SystemExit("loom load: --max-in-flight bounds what --hold keeps back; give --hold too")
        driver = _driver(
            args.protocol, host, ports, api_key, args.connections, run, args.hold, args.max_in_flight
        )
        result = asyncio.run(
            run_open_loop(driver, args.protocol, args.rate, args.duration, run, samples=samples)
        )
        if args.port is None:  # our own server: report the physical floor of an ack beside it
            result.update(_server_stats(host, ports["http"]))
    if args.json:
        print(json.dumps(result))
    else:
        r = result
        print(
            f"{r['protocol']}: offered {r['offered_rate']:,}/s, achieved {r['achieved_rate']:,}/s over "
            f"{r['duration_s']} s; acked {r['acked']:,}, rejected {r['rejected']:,}{_reasons(r)}, "
            f"refused as overloaded {r['overloaded']:,} (answered in p50 {r['overloaded_p50_us']} µs), "
            f"held back by backpressure {r['held']:,}, errors {r['errors']:,}\n"
            f"  order-to-ack of journaled orders, from the scheduled send: p50 {r['p50_us']} µs  "
            f"p99 {r['p99_us']} µs  "
            f"p99.9 {r['p999_us']} µs  max {r['max_us']} µs"
        )
        if "server_fsync_p99_us" in r:
            print(
                f"  server: fdatasync p50 {r['server_fsync_p50_us']} µs  p99 {r['server_fsync_p99_us']} µs; "
                f"{r['server_batches']:,} batches, {r['server_mean_batch']} orders per batch"
            )
    if args.plot:
        from engine.load.plot import write_plot

        written = write_plot(args.plot, result, samples["latencies_ns"], samples["answered_s"])
        print(f"plot: {written}", file=sys.stderr if args.json else sys.stdout)  # --json: stdout is JSON
    return 0 if result["errors"] == 0 else 1


def _reasons(result: dict) -> str:
    """ " (DUPLICATE_CLIENT_ORDER_ID 3, ...)": the rejections by the venue's reason, if any."""
    by = result.get("rejected_by_reason") or {}
    return " (" + ", ".join(f"{reason} {n:,}" for reason, n in by.items()) + ")" if by else ""


def _load_cluster(args: argparse.Namespace, api_key: str, run: LoadRun) -> int:
    """Against a cluster's binary listeners: the leader is followed, unanswered orders are
    resent; the report adds the failover figures (exit 1 unless every order is resolved)."""
    from engine.client.binary import parse_nodes
    from engine.load.binary_driver import FollowingBinaryDriver

    if args.protocol != "binary":
        raise SystemExit("loom load: --nodes is for --protocol binary")
    try:
        nodes = parse_nodes(args.nodes)
    except ValueError as exc:
        raise SystemExit(f"loom load: --nodes: {exc}") from None
    driver = FollowingBinaryDriver(nodes, api_key, args.connections or 1, run)
    result = asyncio.run(run_open_loop(driver, "binary", args.rate, args.duration, run, args.drain))
    f = result["failover"]
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"binary over {len(nodes)} nodes: offered {result['offered_rate']:,}/s "
            f"over {result['duration_s']} s; "
            f"{f['orders']:,} orders: acked {f['acked']:,} (of which {f['duplicates_resolved']:,} "
            f"duplicates resolved), refused definitively {f['refused_definitively']:,}{_reasons(result)}, "
            f"unresolved {f['unresolved']:,}\n"
            f"  resent {f['resent']:,}, connections {f['connects']}, longest gap between acks "
            f"{f['max_ack_gap_ms']:,} ms; order-to-ack p50 {result['p50_us']} µs  p99 {result['p99_us']} µs  "
            f"max {result['max_us']} µs"
        )
    return 0 if f["unresolved"] == 0 and result["errors"] == 0 else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("load", help="open-loop load generator against a gateway")
    p.add_argument("--protocol", choices=PROTOCOLS, required=True)
    p.add_argument("--rate", type=float, default=10_000, help="orders per second offered")
    p.add_argument("--duration", type=float, default=10, help="seconds of sending")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, help="target an existing server (default: spawn one)")
    p.add_argument(
        "--nodes",
        help="a cluster's binary endpoints host:port,host:port,... (--protocol binary): the "
        "leader is followed across failovers and unanswered orders are resent",
    )
    p.add_argument(
        "--drain", type=float, default=10.0, help="seconds to wait for the last answers after sending"
    )
    p.add_argument("--api-key", help="API key of the trading account (spawned server: built in)")
    p.add_argument("--connections", type=int, help="connections to spread the load over")
    p.add_argument(
        "--server-event-loop",
        choices=("uvloop", "asyncio"),
        help="the spawned server's --event-loop (default: its default, uvloop when installed)",
    )
    p.add_argument(
        "--hold",
        action="store_true",
        help="respect the server's TCP backpressure: keep back (count as held) the orders due on "
        "a connection whose socket is full, instead of buffering them client-side",
    )
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=0,
        metavar="N",
        help="with --hold, also keep back the orders due on a connection with N orders sent and not "
        "yet answered, as a client with a latency budget does (default 0: no bound)",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also write the latency distribution, an HDR-style percentile plot and throughput over "
        "time (needs the plot extra: pip install 'loom-exchange[plot]')",
    )
    p.set_defaults(func=cmd_load)
