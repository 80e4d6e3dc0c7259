"""Crash-test driver: one ExchangeNode under a deterministic client order flow.

    python -m tests.crashkit.driver --data DIR --seed S --start N --count M --batch B \
        [--snapshot-every K] [--segment-bytes SZ] [--stall PHASE:NTH]

Opens (and so recovers) a node on DIR, prints one readiness line

    READY last_seq=<n> hash=<state hash> snapshot_seq=<s> replayed=<r> torn=<t>

then submits flow commands N..N+M-1 in batches of B and, only after each `submit` has
returned (the batch is journaled and fdatasync'd), prints one acknowledgement per command:

    ACK {"i": .., "ref": .., "kind": "new"|"cancel", "seq": .., "account": .., "clid": ..,
         "outcome": .., "reason": .., "oid": .., "fills": [[trade_id, qty, price, maker, taker]..],
         "digest": <blake2b of the command's msgpack-encoded events>}

and at the end `DONE last_seq=<n> hash=<h>`. Every line is flushed when written.

The flow is a function of (seed, index) only, never of engine state, so a restarted driver
can resend from any index: a resent NewOrder whose client order id is already journaled is
refused with DUPLICATE_CLIENT_ORDER_ID, which is how "exactly once" shows to the client.

`--stall PHASE:NTH` parks the process at one exact point of its NTH snapshot write (in the
snapshot's child process, which dies with the driver) or journal append (after a real
partial write where the phase says so), prints `STALL phase=<phase> seq=<seq> path=<file>`
and waits for stdin to close or a SIGKILL:

    snapshot-partial   half of the snapshot's temporary file written
    snapshot-tmp       temporary file complete and fsync'd, not yet renamed
    snapshot-renamed   renamed into place, directory not yet fsync'd, old ones not pruned
    journal-torn       half of a journal record written (the batch is never acknowledged)
    segment-torn       half of a new segment's header written (during rollover)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
from pathlib import Path

import msgspec

from engine.bench.workload import INSTRUMENT, MID
from engine.core.commands import Cancel, NewOrder
from engine.core.domain import OrderType, RejectReason, Side, TimeInForce
from engine.core.events import OrderAccepted, OrderCancelled, OrderRejected, Trade
from engine.core.state import state_hash
from engine.exchange import ExchangeNode, NodeConfig

SYMBOL = INSTRUMENT.symbol
MAKERS = ("mm0", "mm1", "mm2", "mm3")
TAKERS = ("tk0", "tk1")
PASSIVE_BAND = 20  # passive limits rest within MID ± 20 ticks
P_PASSIVE = 0.55  # draw < P_PASSIVE: passive GTC limit from a maker
P_CANCEL = 0.75  # < P_CANCEL: cancel of an earlier passive order, by client order id
P_TAKER = 0.93  # < P_TAKER: IOC limit / market order from a taker; else a crossing GTC limit
CANCEL_LOOKBACK = 24
DUPLICATE = int(RejectReason.DUPLICATE_CLIENT_ORDER_ID)
STALL_PHASES = ("snapshot-partial", "snapshot-tmp", "snapshot-renamed", "journal-torn", "segment-torn")

BUY, SELL = int(Side.BUY), int(Side.SELL)
LIMIT, MARKET = int(OrderType.LIMIT), int(OrderType.MARKET)
GTC, IOC = int(TimeInForce.GTC), int(TimeInForce.IOC)


# -- the deterministic client order flow ---------------------------------------------------


def _draw(seed: int, i: int) -> random.Random:
    return random.Random(f"loom-crash/{seed}/{i}")


def is_passive(seed: int, i: int) -> bool:
    return i >= 0 and _draw(seed, i).random() < P_PASSIVE


def maker_of(seed: int, i: int) -> str:
    """The account of passive order `i` (its second draw, see flow_command)."""
    rng = _draw(seed, i)
    rng.random()
    return rng.choice(MAKERS)


def client_order_id(i: int) -> str:
    return f"c{i}"


def flow_command(seed: int, i: int) -> NewOrder | Cancel:
    """Command `i` of the flow of `seed`: a fresh, unstamped command, the same every time."""
    rng = _draw(seed, i)
    r = rng.random()
    if r < P_PASSIVE:
        account = rng.choice(MAKERS)
        side = BUY if rng.random() < 0.5 else SELL
        offset = rng.randint(1, PASSIVE_BAND)
        price = MID - offset if side == BUY else MID + offset
        return NewOrder(account, client_order_id(i), SYMBOL, side, LIMIT, price, rng.randint(1, 50), GTC)
    if r < P_CANCEL:
        j = i - rng.randint(1, CANCEL_LOOKBACK)
        while j >= 0 and not is_passive(seed, j):
            j -= 1
        if j >= 0:
            return Cancel(maker_of(seed, j), client_order_id=client_order_id(j))
        # Nothing earlier to cancel (start of the flow): a passive order instead.
        side = BUY if rng.random() < 0.5 else SELL
        price = MID - 1 if side == BUY else MID + 1
        return NewOrder(rng.choice(MAKERS), client_order_id(i), SYMBOL, side, LIMIT, price, 10, GTC)
    if r < P_TAKER:
        account = rng.choice(TAKERS)
        side = BUY if rng.random() < 0.5 else SELL
        qty = rng.randint(1, 120)
        if rng.random() < 0.5:
            price = MID + PASSIVE_BAND + 5 if side == BUY else MID - PASSIVE_BAND - 5
            return NewOrder(account, client_order_id(i), SYMBOL, side, LIMIT, price, qty, IOC)
        return NewOrder(account, client_order_id(i), SYMBOL, side, MARKET, 0, qty, IOC)
    # A maker crossing the spread with a GTC limit: trades, may hit its own orders (self-trade
    # prevention) and may rest the remainder.
    account = rng.choice(MAKERS)
    side = BUY if rng.random() < 0.5 else SELL
    offset = rng.randint(1, 6)
    price = MID + offset if side == BUY else MID - offset
    return NewOrder(account, client_order_id(i), SYMBOL, side, LIMIT, price, rng.randint(1, 60), GTC)


# -- acknowledgements ----------------------------------------------------------------------


def events_digest(events: list) -> str:
    return hashlib.blake2b(msgspec.msgpack.encode(events), digest_size=16).hexdigest()


def ack_record(i: int, cmd: NewOrder | Cancel, events: list) -> dict:
    first = events[0] if events else None
    rec: dict = {
        "i": i,
        "seq": cmd.seq,
        "account": cmd.account,
        "clid": cmd.client_order_id,
        "reason": 0,
        "oid": 0,
    }
    if type(cmd) is NewOrder:
        rec["kind"] = "new"
        rec["ref"] = cmd.client_order_id
        if type(first) is OrderAccepted:
            rec["outcome"] = "accepted"
            rec["oid"] = first.order_id
        elif type(first) is OrderRejected:
            rec["outcome"] = "duplicate" if first.reason == DUPLICATE else "rejected"
            rec["reason"] = first.reason
        else:
            rec["outcome"] = f"unexpected:{type(first).__name__}"
    else:
        rec["kind"] = "cancel"
        rec["ref"] = f"x{i}"
        if type(first) is OrderCancelled:
            rec["outcome"] = "cancelled"
            rec["oid"] = first.order_id
        elif type(first) is OrderRejected:
            rec["outcome"] = "cancel_rejected"
            rec["reason"] = first.reason
        else:
            rec["outcome"] = f"unexpected:{type(first).__name__}"
    rec["fills"] = [
        [e.trade_id, e.qty, e.price, e.maker_order_id, e.taker_order_id] for e in events if type(e) is Trade
    ]
    rec["digest"] = events_digest(events)
    return rec


# -- stall points (exact kill targets) -----------------------------------------------------


def _stall(out, phase: str, seq: int, path: str) -> None:
    out.write(f"STALL phase={phase} seq={seq} path={path}\n".encode())
    out.flush()
    sys.stdin.buffer.read()  # until the test kills us (or goes away and closes stdin)
    os._exit(3)


class _OsProxy:
    """Stands in for the `os` module inside one engine module: every attribute is the real
    one except those given."""

    def __init__(self, **overrides) -> None:
        self.__dict__.update(overrides)

    def __getattr__(self, name: str):
        return getattr(os, name)


def install_stall(spec: str, node_holder: dict, out) -> None:
    import engine.journal.segments as segments_mod
    import engine.snapshots as snapshots_mod

    phase, _, nth_text = spec.partition(":")
    if phase not in STALL_PHASES:
        raise SystemExit(f"unknown stall phase {phase!r}")
    nth = int(nth_text or "1")
    count = {"n": 0}

    def engine_seq() -> int:
        node = node_holder.get("node")
        return node.engine.last_seq if node is not None else -1

    def hit() -> bool:
        if phase.startswith("snapshot"):  # counted per fork, below
            return count["n"] == nth
        count["n"] += 1
        return count["n"] == nth

    if phase.startswith("snapshot"):
        # A snapshot is written by a forked child, whose counter is a copy: count the forks
        # in this process; the child sees the count its fork left.
        import engine.snapshot_child as child_mod

        real_fork = child_mod.fork_snapshot

        def counting_fork(store, engine, *args):
            count["n"] += 1
            return real_fork(store, engine, *args)

        child_mod.fork_snapshot = counting_fork

    if phase == "snapshot-partial":
        real_open = open

        class HalfFile:
            def __init__(self, path, mode) -> None:
                self.path = path
                self.f = real_open(path, mode)

            def __enter__(self):
                return self

            def __exit__(self, *exc) -> None:
                self.f.close()

            def write(self, data) -> int:
                if hit():
                    self.f.write(data[: len(data) // 2])
                    self.f.flush()
                    os.fsync(self.f.fileno())
                    _stall(out, phase, engine_seq(), str(self.path))
                return self.f.write(data)

            def flush(self) -> None:
                self.f.flush()

            def fileno(self) -> int:
                return self.f.fileno()

        snapshots_mod.open = HalfFile  # the module's global `open` shadows the builtin
    elif phase == "snapshot-tmp":

        def replace(src, dst) -> None:
            if hit():
                _stall(out, phase, engine_seq(), str(src))
            os.replace(src, dst)

        snapshots_mod.os = _OsProxy(replace=replace)
    elif phase == "snapshot-renamed":
        real_fsync_dir = snapshots_mod.fsync_dir

        def fsync_dir(directory) -> None:
            if hit():
                _stall(out, phase, engine_seq(), str(directory))
            real_fsync_dir(directory)

        snapshots_mod.fsync_dir = fsync_dir
    else:  # journal-torn, segment-torn: a partial pwrite of a record / of a segment header
        want_header = phase == "segment-torn"

        def pwrite(fd: int, data, offset: int) -> int:
            if (offset == 0) == want_header and hit():
                half = bytes(data[: len(data) // 2])
                os.pwrite(fd, half, offset)
                os.fsync(fd)
                _stall(out, phase, engine_seq(), os.readlink(f"/proc/self/fd/{fd}"))
            return os.pwrite(fd, data, offset)

        segments_mod.os = _OsProxy(pwrite=pwrite)


# -- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--seed", required=True, type=int)
    ap.add_argument("--start", required=True, type=int)
    ap.add_argument("--count", required=True, type=int)
    ap.add_argument("--batch", required=True, type=int)
    ap.add_argument("--snapshot-every", type=int, default=0, help="commands between snapshots (0 = never)")
    ap.add_argument("--segment-bytes", type=int, default=64 * 1024)
    ap.add_argument("--stall", default="", help="PHASE:NTH, see the module docstring")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.start < 0 or args.count < 0:
        ap.error("--batch must be >= 1, --start and --count >= 0")

    out = sys.stdout.buffer
    holder: dict = {}
    if args.stall:
        install_stall(args.stall, holder, out)
    config = NodeConfig(
        data_dir=args.data,
        instruments=(INSTRUMENT,),
        snapshot_every_commands=args.snapshot_every,
        snapshot_every_s=0,
        segment_bytes=args.segment_bytes,
    )
    node = holder["node"] = ExchangeNode(config)
    rec = node.recovered
    out.write(
        f"READY last_seq={node.engine.last_seq} hash={state_hash(node.engine)} "
        f"snapshot_seq={rec.snapshot_seq} replayed={rec.replayed_commands} "
        f"torn={rec.torn_tail_truncations}\n".encode()
    )
    out.flush()

    encode = msgspec.json.encode
    end = args.start + args.count
    for first in range(args.start, end, args.batch):
        indices = range(first, min(first + args.batch, end))
        commands = [flow_command(args.seed, i) for i in indices]
        results = node.submit(commands)
        # Only now, with the batch durable and applied, is anything acknowledged.
        out.write(
            b"".join(
                b"ACK " + encode(ack_record(i, cmd, events)) + b"\n"
                for i, cmd, events in zip(indices, commands, results, strict=True)
            )
        )
        out.flush()
    out.write(f"DONE last_seq={node.engine.last_seq} hash={state_hash(node.engine)}\n".encode())
    out.flush()
    node.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
