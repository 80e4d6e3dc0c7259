"""`loom risk ...`: the risk controls of a running node, through its REST admin API.

    loom risk show                                      limits, kill switches, halts
    loom risk limits --scope symbol --target BTC-USD --max-order-qty 100
    loom risk kill --scope account --target alice --reason "runaway algo" [--keep-orders]
    loom risk release --scope account --target alice
    loom risk halt BTC-USD --reason "news" / loom risk resume BTC-USD
    loom risk surveillance                              findings (wash trades, spoofing, layering,
                                                        price moves), anomalies, scores: names owners

The node is `--url` (or LOOM_URL, default http://127.0.0.1:8080); the admin key is
`--admin-key` (or LOOM_ADMIN_KEY).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8080"
LIMIT_FIELDS = (
    "max_order_qty",
    "max_order_notional",
    "price_band_bps",
    "max_open_orders",
    "max_open_notional",
    "max_orders_per_sec",  # throttles, on the sequencer's clock (engine/core/throttles.py)
    "max_cancel_ratio",
    "max_position",
)


def _call(args: argparse.Namespace, method: str, path: str, body: dict | None = None) -> int:
    key = args.admin_key or os.environ.get("LOOM_ADMIN_KEY", "")
    if not key:
        print("loom risk: an admin key is needed (--admin-key or LOOM_ADMIN_KEY)", file=sys.stderr)
        return 2
    data = json.dumps(body).encode() if body is not None else None
    headers = {"X-API-Key": key}
    if data is not None:
        headers["Content-Type"] = "application/json"
    url = (args.url or os.environ.get("LOOM_URL") or DEFAULT_URL).rstrip("/") + path
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            print(json.dumps(json.loads(resp.read()), indent=2))
            return 0
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            err = json.loads(text)["error"]
            text = f"{err['code']}: {err['message']}"
        except (ValueError, KeyError, TypeError):
            pass
        print(f"loom risk: HTTP {exc.code}: {text}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"loom risk: cannot reach {url}: {exc.reason}", file=sys.stderr)
        return 2


def _show(args) -> int:
    return _call(args, "GET", "/v1/admin/risk")


def _audit(args) -> int:
    return _call(args, "GET", f"/v1/admin/risk/audit?after={args.after}&limit={args.limit}")


def _surveillance(args) -> int:
    return _call(args, "GET", "/v1/admin/surveillance/report")


def _limits(args) -> int:
    body = {"scope": args.scope, "target": args.target}
    body.update({name: getattr(args, name) for name in LIMIT_FIELDS})
    return _call(args, "PUT", "/v1/admin/risk/limits", body)


def _kill(args, engaged: bool) -> int:
    body = {"scope": args.scope, "target": args.target, "engaged": engaged, "reason": args.reason}
    if engaged:
        body["cancel_orders"] = not args.keep_orders
    return _call(args, "POST", "/v1/admin/risk/kill-switch", body)


def _halt(args, halted: bool) -> int:
    return _call(
        args, "POST", "/v1/admin/risk/halt", {"symbol": args.symbol, "halted": halted, "reason": args.reason}
    )


def _non_negative(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (no limit) or positive: {text!r}")
    return value


def add_node_options(p: argparse.ArgumentParser) -> None:
    """How a node-facing command finds the node and proves it is the admin (`loom risk`,
    `loom accounts`)."""
    p.add_argument("--url", help=f"the node's REST base URL (LOOM_URL, default {DEFAULT_URL})")
    p.add_argument("--admin-key", help="the admin key (LOOM_ADMIN_KEY)")


def add_parsers(sub) -> None:
    risk = sub.add_parser("risk", help="pre-trade risk limits, kill switches and halts of a running node")
    risk_sub = risk.add_subparsers(dest="risk", required=True)

    def command(name: str, help_: str, func) -> argparse.ArgumentParser:
        p = risk_sub.add_parser(name, help=help_)
        add_node_options(p)
        p.set_defaults(func=func)
        return p

    def scoped(p: argparse.ArgumentParser) -> None:
        p.add_argument("--scope", choices=("venue", "symbol", "account"), required=True)
        p.add_argument("--target", default="", help="symbol or account (empty for the venue)")

    command("show", "limits, kill switches and halts", _show)
    command("surveillance", "abuse findings, anomalies and scores, naming owners and accounts", _surveillance)
    audit = command("audit", "who changed which limit, switch or halt, when, from what to what", _audit)
    audit.add_argument("--after", type=_non_negative, default=0, help="records after this seq")
    audit.add_argument("--limit", type=int, default=100, help="records per page (1-1000)")
    lim = command("limits", "replace the limits of one scope (all 0 removes them)", _limits)
    scoped(lim)
    for name in LIMIT_FIELDS:
        lim.add_argument(f"--{name.replace('_', '-')}", type=_non_negative, default=0, help="0 = no limit")
    kill = command("kill", "engage a kill switch (cancels resting orders in scope)", lambda a: _kill(a, True))
    scoped(kill)
    kill.add_argument("--reason", default="", help="recorded in the journal")
    kill.add_argument("--keep-orders", action="store_true", help="do not cancel resting orders")
    rel = command("release", "release a kill switch", lambda a: _kill(a, False))
    scoped(rel)
    rel.add_argument("--reason", default="")
    for name, halted in (("halt", True), ("resume", False)):
        p = command(name, f"{name} trading in a symbol", lambda a, h=halted: _halt(a, h))
        p.add_argument("symbol")
        p.add_argument("--reason", default="")
