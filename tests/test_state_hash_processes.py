"""The state hash (and everything the engine emits) must not depend on the process: a fixed
command script run in fresh interpreters with different PYTHONHASHSEED values (so str
hashing, and with it any set iteration order, differs) gives the same events, the same
state hash, and the same hash after a snapshot round trip as this process does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.core.commands import NewOrder
from engine.core.state import state_hash

REPO = Path(__file__).resolve().parents[1]

# Self-contained so the very same source runs here and in the child processes.
SCRIPT = r"""
import hashlib
import random

import msgspec

from engine.core.commands import Amend, Cancel, CancelAll, NewOrder, SetKillSwitch, SetRiskLimits
from engine.core.domain import Instrument, RiskLimits
from engine.core.matcher import MatchingEngine
from engine.core.state import decode_state, encode_state, export_state, restore_state, state_hash

INSTRUMENTS = [
    Instrument("BTC-USD", tick_size=5, lot_size=10, min_qty=10, max_qty=100_000),
    Instrument("ETH-USD", tick_size=1, lot_size=1),
]
# Many distinct strings: any iteration over a set/frozenset of them would differ by seed.
ACCOUNTS = [f"acct-{i}-\u00e9\u4e2d" for i in range(23)]
GRID = {"BTC-USD": (1_000, 5, 10), "ETH-USD": (500, 1, 1)}


def build(n=1500):
    rng = random.Random(20240611)  # int seed: independent of PYTHONHASHSEED
    engine = MatchingEngine(INSTRUMENTS)
    digest = hashlib.blake2b(digest_size=32)
    seq = 0
    clid_n = 0
    for _ in range(n):
        seq += 1
        ts = 1_700_000_000_000_000_000 + seq * 997
        account = rng.choice(ACCOUNTS)
        roll = rng.random()
        open_ids = sorted(engine.accounts[account].open) if account in engine.accounts else []
        if seq % 97 == 0:  # risk state keyed by many distinct strings, changing as it goes
            scope = rng.choice((1, 2, 3)) if seq > 500 else 3
            cmd = SetRiskLimits(scope, account, RiskLimits(max_open_orders=rng.randint(3, 12)))
            if cmd.scope != 3:
                cmd.target = "" if cmd.scope == 1 else rng.choice(sorted(GRID))
        elif seq % 131 == 0:
            cmd = SetKillSwitch(3, account, rng.random() < 0.6, f"why-{seq}", rng.random() < 0.5)
        elif roll < 0.6 or not open_ids:
            symbol = rng.choice(sorted(GRID))
            base, tick, lot = GRID[symbol]
            order_type = 2 if rng.random() < 0.85 else 1
            side = rng.choice((1, 2))
            # Bids mostly below the base price, asks above: a book that trades at the edges
            # and keeps depth behind them.
            away = tick * rng.randint(-3, 40)
            price = (base - away if side == 1 else base + away) if order_type == 2 else 0
            clid_n += 1
            cmd = NewOrder(
                account, f"cl-{clid_n}-{rng.random()}", symbol, side, order_type, price,
                lot * rng.randint(1, 20), rng.choice((1, 1, 1, 3, 4)), rng.random() < 0.1 and order_type == 2,
                rng.choice((0, 1, 2, 3)),
            )
            if cmd.post_only and cmd.tif != 1:
                cmd.post_only = False
        elif roll < 0.72:
            cmd = Cancel(account, rng.choice(open_ids))
        elif roll < 0.97:
            oid = rng.choice(open_ids)
            symbol = engine.accounts[account].open[oid].symbol
            base, tick, lot = GRID[symbol]
            cmd = Amend(
                account, oid, "", lot * rng.randint(1, 25) if rng.random() < 0.7 else 0,
                base + tick * rng.randint(-40, 40) if rng.random() < 0.5 else 0,
                f"re-{seq}" if rng.random() < 0.2 else "",
            )
        else:
            cmd = CancelAll(account, rng.choice(("", "BTC-USD", "ETH-USD")))
        cmd.seq = seq
        cmd.ts = ts
        digest.update(msgspec.msgpack.encode(engine.apply(cmd)))
    return engine, digest.hexdigest()


def main():
    engine, events_digest = build()
    restored = restore_state(decode_state(encode_state(export_state(engine))))
    return {
        "state_hash": state_hash(engine),
        "events_digest": events_digest,
        "restored_hash": state_hash(restored),
        "resting": sum(len(a.open) for a in engine.accounts.values()),
        "trades": engine.next_trade_id - 1,
    }
"""


def run_in_process() -> dict:
    namespace: dict = {}
    exec(compile(SCRIPT, "<state-hash-script>", "exec"), namespace)
    return namespace["main"]()


def run_in_subprocess(hash_seed: str) -> dict:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)}
    code = SCRIPT + "\nimport json\nprint(json.dumps(main()))\n"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def local() -> dict:
    return run_in_process()


def test_script_exercises_the_engine(local):
    # A script that never trades or leaves nothing resting would prove little.
    assert local["trades"] > 100
    assert local["resting"] > 20
    assert len(local["state_hash"]) == 64
    int(local["state_hash"], 16)


def test_snapshot_round_trip_keeps_the_hash(local):
    assert local["restored_hash"] == local["state_hash"]


def test_in_process_run_is_repeatable(local):
    assert run_in_process() == local


@pytest.mark.parametrize("hash_seed", ["0", "1", "4242", "random"])
def test_state_hash_equal_across_processes(local, hash_seed):
    assert run_in_subprocess(hash_seed) == local


def test_state_hash_differs_when_state_differs(local):
    """The hash is not a constant: one more resting order, or a different client id, shows."""
    namespace: dict = {}
    exec(compile(SCRIPT, "<state-hash-script>", "exec"), namespace)
    engine, _ = namespace["build"]()
    assert state_hash(engine) == local["state_hash"]
    seq = engine.last_seq
    twin, _ = namespace["build"]()
    engine.apply(NewOrder("zz", "one", "ETH-USD", 1, 2, 1, 1, seq=seq + 1, ts=0))
    twin.apply(NewOrder("zz", "two", "ETH-USD", 1, 2, 1, 1, seq=seq + 1, ts=0))
    assert state_hash(engine) != local["state_hash"]
    assert state_hash(engine) != state_hash(twin)
