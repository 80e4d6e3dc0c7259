"""The ledger's interfaces against a real `loom run` (issue 15): GET /v1/ledger pages the
trader's own entries (seq cursor, 410 past the per-account bound, the same after a restart),
the WebSocket `balances` channel pushes each durable change, `loom accounts ...` drives a
running node (exit 1 for a refusal, 2 for bad usage or no node), and the money metrics
(transfers by kind and outcome, balances by asset, no conservation breach) are served."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request

import aiohttp
from loomproc import REPO, loom_run, loom_run_process
from test_accounts_rest import ADMIN, ALICE, ARGS, OPS, call
from test_accounts_rest import CONFIG as ACCOUNTS_CONFIG
from waiting import wait_until

BOB = "ledger-bob-key-0000000000"
PER_ACCOUNT = 3
CONFIG = (
    f"ledger_entries_per_account = {PER_ACCOUNT}\n"
    + ACCOUNTS_CONFIG
    + f'\n[[accounts]]\nname = "bob"\napi_key = "{BOB}"\n'
)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}


def _transfer(
    base: str, tid: str, kind: str, amount: int, account: str = "alice", asset: str = "USD"
) -> dict:
    body = {"transfer_id": tid, "account": account, "asset": asset, "kind": kind, "amount": amount}
    status, answer = call(base, "POST", "/v1/admin/transfers", ADMIN, body)
    assert status == 200, answer
    return answer["events"][0]


async def _balances_pushes(base: str, transfers: list[tuple]) -> list[dict]:
    """Subscribe alice's session to `balances`, make the transfers, and collect every push
    that came before the answer to a ping sent after them (so an extra push is seen too)."""
    async with aiohttp.ClientSession(base) as http, http.ws_connect("/v1/ws") as ws:
        await ws.send_json({"op": "subscribe", "req_id": 1, "channel": "balances"})
        refused = await ws.receive_json(timeout=10)
        assert refused["type"] == "error" and refused["code"] == "UNAUTHENTICATED", refused
        await ws.send_json({"op": "auth", "req_id": 2, "api_key": ALICE})
        assert (await ws.receive_json(timeout=10))["type"] == "authenticated"
        await ws.send_json({"op": "subscribe", "req_id": 3, "channel": "balances"})
        assert await ws.receive_json(timeout=10) == {"type": "subscribed", "req_id": 3, "channel": "balances"}
        await ws.send_json({"op": "subscribe", "req_id": 4, "channel": "balances"})
        again = await ws.receive_json(timeout=10)
        assert again["code"] == "ALREADY_SUBSCRIBED", again
        for args in transfers:
            await asyncio.to_thread(_transfer, base, *args)
        await ws.send_json({"op": "ping", "req_id": 5})
        pushes = []
        while (msg := await ws.receive_json(timeout=10))["type"] != "pong":
            pushes.append(msg)
        return pushes


def _ledger(base: str, query: str = "", key: str = ALICE) -> tuple[int, dict]:
    return call(base, "GET", f"/v1/ledger{query}", key)


def _metrics(base: str) -> str:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        return resp.read().decode()


def test_ledger_pages_balance_pushes_and_metrics_survive_a_restart(tmp_path):
    config = tmp_path / "loom.toml"
    config.write_text(CONFIG)
    args = ["--config", str(config), "--data-dir", str(tmp_path / "data"), *ARGS]
    transfers = [
        ("dep-1", "deposit", 10_000),
        ("dep-1", "deposit", 10_000),  # a repeat: no entry, no push (the original's answer)
        ("wd-1", "withdrawal", 2_500),
        ("adj-1", "adjustment", -500),
        ("dep-b", "deposit", 7, "bob"),  # another account's: not alice's entry nor push
        ("dep-2", "deposit", 1_000),
    ]
    with loom_run(args, _env()) as base:
        _transfer(base, "dep-btc", "deposit", 300_000_000, asset="BTC")  # before the subscription
        pushes = asyncio.run(_balances_pushes(base, transfers))
        assert [(p["asset"], p["total"], p["held"], p["available"]) for p in pushes] == [
            ("USD", 10_000, 0, 10_000),
            ("USD", 7_500, 0, 7_500),
            ("USD", 7_000, 0, 7_000),
            ("USD", 8_000, 0, 8_000),
        ]
        assert all(p["type"] == "balance" for p in pushes)
        seqs = [p["seq"] for p in pushes]
        assert seqs == sorted(seqs) and len(set(seqs)) == 4

        # Five entries for alice (BTC deposit + four USD), three kept: the oldest two are gone.
        status, page = _ledger(base)
        assert status == 200, page
        assert [(e["kind"], e["asset"], e["amount"], e["balance"]) for e in page["entries"]] == [
            ("withdrawal", "USD", -2_500, 7_500),
            ("adjustment", "USD", -500, 7_000),
            ("deposit", "USD", 1_000, 8_000),
        ]
        assert [e["seq"] for e in page["entries"]] == seqs[1:]
        assert [e["transfer_id"] for e in page["entries"]] == ["wd-1", "adj-1", "dep-2"]
        assert all(e["ts"] > 0 for e in page["entries"])
        assert page["evicted_through"] == seqs[0] and not page["has_more"]
        status, gone = _ledger(base, "?after=0")
        assert status == 410 and gone["error"]["code"] == "LEDGER_EVICTED", gone
        assert gone["error"]["evicted_through"] == seqs[0]
        walked, after = [], seqs[0]
        for _ in range(5):  # page by one from the bound
            status, page = _ledger(base, f"?after={after}&limit=1")
            assert status == 200, page
            walked += page["entries"]
            after = page["next_after"]
            if not page["has_more"]:
                break
        assert [e["seq"] for e in walked] == seqs[1:]
        status, empty = _ledger(base, f"?after={seqs[-1]}")
        assert status == 200 and empty["entries"] == [] and empty["next_after"] == seqs[-1]
        for bad in ("?after=x", "?after=-1", "?limit=0", "?limit=1001"):
            status, body = _ledger(base, bad)
            assert status == 400 and body["error"]["code"] == "INVALID_QUERY", (bad, body)
        status, bobs = _ledger(base, key=BOB)
        assert [e["transfer_id"] for e in bobs["entries"]] == ["dep-b"]
        status, body = _ledger(base, key=OPS)
        assert status == 403, body  # an ops key has no ledger of its own: the admin view
        status, viewed = call(base, "GET", "/v1/admin/ledger/alice", OPS)
        assert status == 200 and viewed["entries"] == _ledger(base)[1]["entries"]

        text = _metrics(base)
        assert 'loom_transfers_total{kind="deposit",outcome="applied"} 4.0' in text
        assert 'loom_transfers_total{kind="deposit",outcome="repeated"} 1.0' in text
        assert 'loom_transfers_total{kind="withdrawal",outcome="applied"} 1.0' in text
        assert 'loom_asset_balances{asset="USD"} 8007.0' in text
        assert 'loom_asset_balances{asset="BTC"} 3e+08' in text
        assert 'loom_insufficient_balance_rejects_total{symbol="BTC-USD"} 0.0' in text
        assert 'loom_fees_collected_total{asset="USD"} 0.0' in text
        assert "loom_ledger_conservation_breaches 0.0" in text
        before = _ledger(base)[1]

    with loom_run(args, _env()) as base:  # recovered from the journal: the same pages
        assert _ledger(base)[1] == before
        assert _ledger(base, "?after=0")[0] == 410


def _loom(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from engine.cli import main; raise SystemExit(main())", *argv],
        cwd=REPO,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_loom_accounts_cli_against_a_running_node(tmp_path):
    config = tmp_path / "loom.toml"
    config.write_text(CONFIG)
    args = ["--config", str(config), "--data-dir", str(tmp_path / "data"), *ARGS]
    with loom_run(args, _env()) as base:
        admin = ["--url", base, "--admin-key", ADMIN]
        done = _loom("accounts", "deposit", "alice", "USD", "10_000", "--transfer-id", "cli-1", *admin)
        assert done.returncode == 0, done.stderr
        assert "cli-1: alice USD 0 -> 10000" in done.stdout
        done = _loom(
            "accounts", "deposit", "alice", "USD", "10000", "--transfer-id", "cli-1", *admin, "--json"
        )
        assert done.returncode == 0 and json.loads(done.stdout)["events"][0]["repeated"] is True
        done = _loom("accounts", "withdraw", "alice", "USD", "99999", *admin)
        assert done.returncode == 1 and "INSUFFICIENT_BALANCE" in done.stderr, done.stderr
        done = _loom("accounts", "withdraw", "alice", "USD", "400", "--transfer-id", "cli-2", *admin)
        assert done.returncode == 0 and "10000 -> 9600" in done.stdout, done.stderr
        done = _loom("accounts", "show", "alice", *admin, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["balances"] == [
            {"asset": "USD", "total": 9600, "held": 0, "available": 9600}
        ]
        done = _loom("accounts", "show", "--url", base, "--api-key", ALICE)
        assert done.returncode == 0 and "account alice" in done.stdout and "9600" in done.stdout
        done = _loom("accounts", "ledger", "--url", base, "--api-key", ALICE, "--json")
        entries = json.loads(done.stdout)["entries"]
        assert [(e["transfer_id"], e["amount"]) for e in entries] == [("cli-1", 10000), ("cli-2", -400)]
        done = _loom("accounts", "ledger", "--url", base, "--api-key", ALICE, "--limit", "1")
        assert done.returncode == 0 and "cli-1" in done.stdout and "cli-2" not in done.stdout
        assert f"more: --after {entries[0]['seq']}" in done.stdout
        done = _loom("accounts", "ledger", "alice", "--after", str(entries[0]["seq"]), *admin)
        assert done.returncode == 0 and "cli-2" in done.stdout and "cli-1" not in done.stdout
        # Clear errors: no key, a bad amount, a bad page size (exit 2); an unknown asset (exit 1).
        done = _loom("accounts", "deposit", "alice", "USD", "5", "--url", base)
        assert done.returncode == 2 and "admin key is needed" in done.stderr, done.stderr
        done = _loom("accounts", "show", "--url", base)
        assert done.returncode == 2 and "account key is needed" in done.stderr, done.stderr
        done = _loom("accounts", "deposit", "alice", "USD", "-5", *admin)
        assert done.returncode == 2 and "must be positive" in done.stderr, done.stderr
        done = _loom("accounts", "ledger", "alice", "--limit", "0", *admin)
        assert done.returncode == 2 and "between 1 and 1000" in done.stderr, done.stderr
        done = _loom("accounts", "deposit", "alice", "EUR", "5", *admin)
        assert done.returncode == 1 and "UNKNOWN_ASSET" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    done = _loom("accounts", "show", "alice", *admin)  # the node is gone
    assert done.returncode == 2 and "cannot reach" in done.stderr, done.stderr


# -- the parts that cannot be driven through a node yet ------------------------------------------


def test_the_conservation_gauge_reports_a_broken_ledger():
    """The breach gauge is not a constant: a balance that no transfer explains is counted."""
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, generate_latest

    from engine.core.balances import Balance, Ledger
    from engine.core.domain import Asset
    from telemetry.collectors import LedgerCollector

    ledger = Ledger()
    ledger.assets["USD"] = Asset("USD", 2)
    ledger.supply["USD"] = 100
    ledger.balances["alice"] = {"USD": Balance(100, 30)}
    registry = CollectorRegistry()
    registry.register(LedgerCollector(lambda: SimpleNamespace(ledger=ledger)))
    text = generate_latest(registry).decode()
    assert "loom_ledger_conservation_breaches 0.0" in text
    assert 'loom_asset_balances{asset="USD"} 100.0' in text
    assert 'loom_asset_held_balances{asset="USD"} 30.0' in text
    ledger.balances["bob"] = {"USD": Balance(5, 0)}  # money from nowhere
    text = generate_latest(registry).decode()
    assert "loom_ledger_conservation_breaches 1.0" in text


def test_a_page_never_splits_one_commands_entries():
    """Settlement will make several entries per command (base, quote, fee): one seq, one page."""
    from engine.ledger_index import LedgerEntry, LedgerIndex

    index = LedgerIndex(per_account=10)
    for seq, asset in ((5, "USD"), (7, "BTC"), (7, "USD"), (7, "USD"), (9, "USD")):
        index._add("alice", LedgerEntry(seq, 0, asset, "trade", 1, 1, 0, symbol="BTC-USD", order_id=3))
    first = index.page("alice", None, limit=2)
    assert [e["seq"] for e in first["entries"]] == [5, 7, 7, 7] and first["next_after"] == 7
    assert first["entries"][1]["symbol"] == "BTC-USD" and first["entries"][1]["order_id"] == 3
    rest = index.page("alice", first["next_after"], limit=2)
    assert [e["seq"] for e in rest["entries"]] == [9] and not rest["has_more"]


def test_entries_read_back_go_before_the_new_ones_and_a_trimmed_history_counts_as_evicted():
    """merge_read_back: the read-back entries (seqs history_from..upto) replace what the index
    held for them (the seeded transfers), the ones made since stay after them, pages answer
    Rebuilding until then, and a history that begins after seq 1 answers 410 before it."""
    import pytest

    from engine.ledger_index import Evicted, LedgerEntry, LedgerIndex, Rebuilding

    def entry(seq: int, kind: str = "trade") -> LedgerEntry:
        return LedgerEntry(seq, 0, "USD", kind, 1, 1, 0)

    index = LedgerIndex(per_account=4)
    index.rebuilt = False
    index._add("alice", entry(3, "deposit"))  # seeded at start
    index._add("alice", entry(12))  # made after the start (upto 10)
    with pytest.raises(Rebuilding):
        index.page("alice", None)
    read_back = {"history_from": 1, "entries": {"alice": [entry(3, "deposit"), entry(6), entry(8)]}}
    index.merge_read_back({**read_back, "evicted_through": {}}, upto_seq=10)
    page = index.page("alice", None)
    assert [(e["seq"], e["kind"]) for e in page["entries"]] == [
        (3, "deposit"),
        (6, "trade"),
        (8, "trade"),
        (12, "trade"),
    ]
    assert page["evicted_through"] == 0

    trimmed = LedgerIndex(per_account=4)
    trimmed._add("bob", entry(2, "deposit"))
    trimmed.merge_read_back({"history_from": 5, "entries": {"bob": [entry(7)]}, "evicted_through": {}}, 10)
    assert [e["seq"] for e in trimmed.page("bob", None)["entries"]] == [7]
    with pytest.raises(Evicted):
        trimmed.page("bob", 0)


def test_a_settled_trade_makes_trade_and_fee_entries_execution_fees_and_the_fees_metric(tmp_path):
    """Credit checks on (the default), BTC-USD with a 20 bps taker fee and a 5 bps maker
    rebate: bob rests a sell of 1 BTC at $65,000.00, alice buys it. Both ledgers show the
    trade's base and quote and the fee, the fee account its net fee, the execution JSON
    the fees, and loom_fees_collected_total the net."""
    fees = "contract_size = 100000000\ntaker_fee_bps = 20\nmaker_fee_bps = -5\n"
    config = tmp_path / "loom.toml"
    config.write_text('fee_account = "house"\n' + CONFIG.replace("contract_size = 100000000\n", fees))
    args = ["--config", str(config), "--data-dir", str(tmp_path / "data"), *ARGS]
    with loom_run(args, _env()) as base:
        _transfer(base, "a-usd", "deposit", 10_000_000)
        _transfer(base, "b-btc", "deposit", 10**8, account="bob", asset="BTC")
        sell = {"symbol": "BTC-USD", "side": "sell", "type": "limit", "price": 6_500_000, "qty": 1}
        status, rested = call(base, "POST", "/v1/orders", BOB, sell)
        assert status == 201, rested
        buy = dict(sell, side="buy")
        status, bought = call(base, "POST", "/v1/orders", ALICE, buy)
        assert status == 201, bought
        [trade] = [e for e in bought["events"] if e["type"] == "trade"]
        assert (trade["taker_fee"], trade["maker_fee"]) == (13_000, -3_250)  # $130.00, -$32.50
        seq = trade["seq"]
        entries = [e for e in _ledger(base)[1]["entries"] if e["seq"] == seq]
        assert [(e["asset"], e["kind"], e["amount"], e["balance"]) for e in entries] == [
            ("BTC", "trade", 10**8, 10**8),
            ("USD", "trade", -6_500_000, 3_500_000),
            ("USD", "fee", -13_000, 3_487_000),
        ]
        assert all(e["symbol"] == "BTC-USD" and e["order_id"] == trade["taker_order_id"] for e in entries)
        entries = [e for e in _ledger(base, key=BOB)[1]["entries"] if e["seq"] == seq]
        assert [(e["asset"], e["kind"], e["amount"], e["balance"]) for e in entries] == [
            ("BTC", "trade", -(10**8), 0),
            ("USD", "trade", 6_500_000, 6_500_000),
            ("USD", "fee", 3_250, 6_503_250),
        ]
        status, house = call(base, "GET", "/v1/admin/ledger/house", ADMIN)
        assert status == 200, house
        assert [(e["kind"], e["amount"], e["balance"]) for e in house["entries"]] == [("fee", 9_750, 9_750)]
        assert 'loom_fees_collected_total{asset="USD"} 9750.0' in _metrics(base)
        status, balances = call(base, "GET", "/v1/balances", ALICE)
        assert status == 200, balances


def _ledger_when_ready(base: str, key: str, path: str = "/v1/ledger") -> dict:
    """The ledger page once the node answers it (503 while it reads its history back)."""

    def probe() -> dict | None:
        status, page = call(base, "GET", path, key)
        if status == 503:
            assert page["error"]["code"] == "LEDGER_REBUILDING", page
            return None
        assert status == 200, page
        return page

    return wait_until("the ledger read back", probe, timeout=60)


def test_trade_and_fee_entries_survive_a_restart_and_a_kill(tmp_path):
    """Issue 15: a trader's ledger lists its settled trades' entries after a restart (SIGTERM)
    and after a SIGKILL, read back from the journal as the order index is: each page equals
    the one served before, for both traders and the fee account."""
    fees = "contract_size = 100000000\ntaker_fee_bps = 20\nmaker_fee_bps = -5\n"
    config = tmp_path / "loom.toml"
    unbounded = CONFIG.replace(f"ledger_entries_per_account = {PER_ACCOUNT}\n", "")
    config.write_text('fee_account = "house"\n' + unbounded.replace("contract_size = 100000000\n", fees))
    args = ["--config", str(config), "--data-dir", str(tmp_path / "data"), *ARGS]
    pages = [(ALICE, "/v1/ledger"), (BOB, "/v1/ledger"), (ADMIN, "/v1/admin/ledger/house")]
    with loom_run(args, _env()) as base:
        _transfer(base, "a-usd", "deposit", 20_000_000)
        _transfer(base, "b-btc", "deposit", 2 * 10**8, account="bob", asset="BTC")
        for price in (6_500_000, 6_400_000):
            sell = {"symbol": "BTC-USD", "side": "sell", "type": "limit", "price": price, "qty": 1}
            status, rested = call(base, "POST", "/v1/orders", BOB, sell)
            assert status == 201, rested
            status, bought = call(base, "POST", "/v1/orders", ALICE, dict(sell, side="buy"))
            assert status == 201 and any(e["type"] == "trade" for e in bought["events"]), bought
        before = [_ledger_when_ready(base, key, path) for key, path in pages]
    kinds = [e["kind"] for e in before[0]["entries"]]
    assert kinds == ["deposit", "trade", "trade", "fee", "trade", "trade", "fee"], kinds
    assert [e["kind"] for e in before[2]["entries"]] == ["fee", "fee"]
    with loom_run_process(args, _env()) as (proc, ports):
        base = f"http://127.0.0.1:{ports['http']}"
        assert [_ledger_when_ready(base, key, path) for key, path in pages] == before
        proc.kill()  # SIGKILL: recovery from the journal alone
        proc.wait(timeout=30)
    with loom_run(args, _env()) as base:
        assert [_ledger_when_ready(base, key, path) for key, path in pages] == before
