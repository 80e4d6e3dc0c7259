"""`loom accounts ...`: balances, transfers and the ledger of a running node, over REST.

    loom accounts deposit ACCOUNT ASSET AMOUNT [--transfer-id ID]     the admin key
    loom accounts withdraw ACCOUNT ASSET AMOUNT [--transfer-id ID]    the admin key
    loom accounts show [ACCOUNT]      an account's balances (admin/ops key) or, with --api-key, your own
    loom accounts ledger [ACCOUNT] [--after SEQ] [--limit N]          likewise, ledger entries

The node is `--url` (or LOOM_URL); the admin key `--admin-key` (LOOM_ADMIN_KEY), an account's
key `--api-key` (LOOM_API_KEY). `--json` prints the node's JSON answer as it is. Exit status:
0 done, 1 the node refused (its error code and message), 2 bad usage or no answer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid

from engine.cli_risk import DEFAULT_URL, add_node_options
from engine.ledger_index import DEFAULT_PAGE, MAX_PAGE

PROG = "loom accounts"


class Failed(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _key(args: argparse.Namespace, own: bool) -> str:
    if own:
        key = args.api_key or os.environ.get("LOOM_API_KEY", "")
        if not key:
            raise Failed(2, "an account key is needed (--api-key or LOOM_API_KEY), or name the ACCOUNT")
        return key
    key = args.admin_key or os.environ.get("LOOM_ADMIN_KEY", "")
    if not key:
        raise Failed(2, "an admin key is needed (--admin-key or LOOM_ADMIN_KEY)")
    return key


def _call(args: argparse.Namespace, method: str, path: str, key: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"X-API-Key": key}
    if data is not None:
        headers["Content-Type"] = "application/json"
    url = (args.url or os.environ.get("LOOM_URL") or DEFAULT_URL).rstrip("/") + path
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            err = json.loads(text)["error"]
            text = f"{err['code']}: {err['message']}"
        except (ValueError, KeyError, TypeError):
            pass
        raise Failed(1, f"HTTP {exc.code}: {text}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise Failed(2, f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


def _transfer(args, kind: str) -> dict:
    body = {
        "transfer_id": args.transfer_id or f"cli-{uuid.uuid4().hex}",
        "account": args.account,
        "asset": args.asset,
        "kind": kind,
        "amount": args.amount,
    }
    return _call(args, "POST", "/v1/admin/transfers", _key(args, own=False), body)


def _show(args) -> dict:
    if args.account:
        path = f"/v1/admin/balances/{urllib.parse.quote(args.account, safe='')}"
        return _call(args, "GET", path, _key(args, own=False))
    return _call(args, "GET", "/v1/balances", _key(args, own=True))


def _ledger(args) -> dict:
    query = {"limit": args.limit}
    if args.after is not None:
        query["after"] = args.after
    qs = "?" + urllib.parse.urlencode(query)
    if args.account:
        path = f"/v1/admin/ledger/{urllib.parse.quote(args.account, safe='')}{qs}"
        return _call(args, "GET", path, _key(args, own=False))
    return _call(args, "GET", f"/v1/ledger{qs}", _key(args, own=True))


def _human(command: str, answer: dict) -> str:
    if command in ("deposit", "withdraw"):
        ev = answer["events"][0]
        again = " (repeated: the original transfer)" if ev.get("repeated") else ""
        return (
            f"{ev['transfer_id']}: {ev['account']} {ev['asset']} {ev['old_total']} -> {ev['new_total']}"
            f" at seq {ev['applied_seq']}{again}"
        )
    if command == "show":
        rows = [f"{'asset':<10} {'total':>20} {'held':>20} {'available':>20}"]
        for b in answer["balances"]:
            rows.append(f"{b['asset']:<10} {b['total']:>20} {b['held']:>20} {b['available']:>20}")
        credit = "on" if answer["credit_checks"] else "off"
        return f"account {answer['account']} (credit checks {credit})\n" + "\n".join(rows)
    rows = [f"{'seq':>10} {'kind':<11} {'asset':<8} {'amount':>20} {'balance':>20}  reference"]
    for e in answer["entries"]:
        ref = e.get("transfer_id") or (f"{e['symbol']} order {e['order_id']}" if e.get("symbol") else "")
        amounts = f"{e['amount']:>20} {e['balance']:>20}"
        rows.append(f"{e['seq']:>10} {e['kind']:<11} {e['asset']:<8} {amounts}  {ref}")
    more = f"\nmore: --after {answer['next_after']}" if answer["has_more"] else ""
    return f"ledger of {answer['account']}\n" + "\n".join(rows) + more


def _run(args) -> int:
    try:
        answer = args.action(args)
    except Failed as exc:
        print(f"{PROG} {args.accounts}: {exc}", file=sys.stderr)
        return exc.status
    print(json.dumps(answer, indent=2) if args.json else _human(args.accounts, answer))
    return 0


def _amount(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of the asset's units: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _seq(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a sequence number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def _page(text: str) -> int:
    value = _seq(text)
    if not 1 <= value <= MAX_PAGE:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_PAGE}: {text!r}")
    return value


def add_parsers(sub) -> None:
    accounts = sub.add_parser("accounts", help="balances, transfers and ledgers of a running node")
    accounts_sub = accounts.add_subparsers(dest="accounts", required=True)

    def command(name: str, help_: str, action) -> argparse.ArgumentParser:
        p = accounts_sub.add_parser(name, help=help_)
        add_node_options(p)
        p.add_argument("--api-key", help="an account's key, for its own balances and ledger (LOOM_API_KEY)")
        p.add_argument("--json", action="store_true", help="print the node's JSON answer")
        p.set_defaults(func=_run, action=action)
        return p

    for name, kind in (("deposit", "deposit"), ("withdraw", "withdrawal")):
        help_ = f"{kind} (journaled, idempotent by --transfer-id)"
        p = command(name, help_, lambda a, k=kind: _transfer(a, k))
        p.add_argument("account")
        p.add_argument("asset")
        p.add_argument("amount", type=_amount, help="integer units of the asset (10**-scale)")
        p.add_argument("--transfer-id", default="", help="idempotency key (default: a fresh one)")
    show = command("show", "an account's balances (admin/ops key) or your own (--api-key)", _show)
    show.add_argument("account", nargs="?", default="")
    led = command("ledger", "an account's ledger entries, oldest first", _ledger)
    led.add_argument("account", nargs="?", default="")
    led.add_argument("--after", type=_seq, default=None, help="entries after this seq (next_after of a page)")
    led.add_argument("--limit", type=_page, default=DEFAULT_PAGE, help=f"entries per page (1..{MAX_PAGE})")
