"""`loom suite dr`: a standby's whole data directory destroyed while orders flow.

Two `loom run --cluster` nodes on a local 3-server NATS cluster (the chaos drill's), a
recording REST client sending orders throughout. The leader writes a snapshot (replicated
to the Object Store); the standby is killed, its data directory deleted and the node
started again: it rebuilds from the replicated snapshot and the stream. Then the leader is
killed and the rebuilt node takes over. The history is checked against the stream: every
acked order present exactly once."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path

from engine.chaos.client import RecordingClient
from engine.chaos.drill import ACCOUNT
from engine.chaos.history import OK, History, JournalView, check
from engine.cluster.drill import ADMIN_KEY, TRADER_KEY, NodeProcess, http, in_sync, wait_for
from engine.cluster.journal import NatsJournal
from engine.cluster.link import NatsLink
from engine.cluster.natsserver import LocalNatsCluster

# The leader purges the stream below each replicated snapshot but for this many commands, so
# a node with an empty data directory must start from the replicated snapshot (recovery
# fetches it only when the stream no longer starts at seq 1).
KEEP_COMMANDS = 1_000
RETENTION = f"\n[retention]\nkeep_commands = {KEEP_COMMANDS}\n"


def _first_ack_by(history: History, base: str, after: float) -> float | None:
    return min(
        (
            op.completed_at
            for op in history.ops
            if op.outcome == OK and op.node == base and op.completed_at > after
        ),
        default=None,
    )


def run_dr(orders_after: int = 200, concurrency: int = 4, workdir: Path | None = None) -> dict:
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="loom-dr-") as tmp:
            return run_dr(orders_after, concurrency, Path(tmp))
    with LocalNatsCluster(workdir / "nats") as nats:
        return _drill(nats, orders_after, concurrency, workdir)


def _drill(nats: LocalNatsCluster, orders_after: int, concurrency: int, workdir: Path) -> dict:
    started = time.monotonic()
    stream = f"DR{uuid.uuid4().hex[:8].upper()}"
    a, b = (NodeProcess(n, nats.urls, workdir, stream, RETENTION) for n in ("a", "b"))
    nodes = [a, b]
    link = NatsLink(nats.urls, "dr-observer")
    history = History()
    client = RecordingClient(
        lambda: [n.base if n.alive() else "" for n in nodes],
        ACCOUNT,
        TRADER_KEY,
        history,
        concurrency,
        prefix="dr",
    )
    try:
        a.start()
        wait_for("a to lead", lambda: a.status().get("role") == "leader", 60)
        b.start()
        wait_for("b to follow a", lambda: in_sync(nodes), 60)
        client.start()
        enough = max(orders_after, 2 * KEEP_COMMANDS)  # the purge then removes commands
        wait_for(f"{enough} orders acknowledged", lambda: history.acked_since(0) >= enough, 180)
        # The checker needs every command from seq 1, and the purge below removes the first
        # ones: read them now (the snapshot follows within far fewer than KEEP_COMMANDS).
        journal = NatsJournal(link, stream, f"loom.{stream.lower()}")
        view = JournalView()
        for cmd in journal.read():
            view.apply(cmd)
        read_to = cmd.seq
        status, body = http("POST", a.base + "/v1/admin/snapshot", key=ADMIN_KEY, timeout=30)
        if status != 200:
            raise RuntimeError(f"the leader's snapshot: {status} {body}")
        wait_for("the snapshot replicated", lambda: "replicated as" in a.log.read_text(errors="replace"), 60)
        # The standby's disk is lost: the process dies and its whole data directory is gone.
        b.kill()
        data = workdir / b.node_id
        shutil.rmtree(data)
        destroyed_at = time.monotonic()
        acked_at_destroy = history.acked_since(0)
        b.start()
        wait_for("the rebuilt standby in sync", lambda: in_sync(nodes), 120, 0.05)
        rebuild_s = time.monotonic() - destroyed_at
        acked_during_rebuild = history.acked_since(0) - acked_at_destroy
        rebuilt_log = b.log.read_text(errors="replace")
        from_replicated = "replicated snapshot" in rebuilt_log
        mark = history.acked_since(0)
        wait_for(f"{orders_after} more orders", lambda: history.acked_since(0) >= mark + orders_after, 120)
        killed_at = time.monotonic()
        a.kill()
        first = wait_for(
            "an order acked by the rebuilt node", lambda: _first_ack_by(history, b.base, killed_at), 120
        )
        takeover_s = first - killed_at
        mark = history.acked_since(0)
        wait_for(
            f"{orders_after} orders after the takeover",
            lambda: history.acked_since(0) >= mark + orders_after,
            120,
        )
        client.stop()
        live = http("GET", b.base + "/v1/admin/cluster?verify=1", timeout=30)[1]
        for cmd in journal.read(read_to + 1):
            view.apply(cmd)
    except Exception as exc:
        tails = "\n".join(f"--- node {n.node_id}:\n{n.tail(15)}" for n in nodes)
        raise RuntimeError(f"dr drill failed: {exc}\n{tails}") from exc
    finally:
        client.stop_event.set()
        for node in nodes:
            node.stop()
        link.close()
    result = check(history, view).to_json()
    c = result["counts"]
    contradictions = [x["text"] for x in result["contradictions"]]
    hash_ok = live.get("state_hash") == view.state_hash()
    return {
        "suite": "dr",
        "rebuild_s": round(rebuild_s, 3),
        "rebuilt_from_replicated_snapshot": from_replicated,
        "orders_acked_during_rebuild": acked_during_rebuild,
        "takeover_s": round(takeover_s, 3),
        "new_leader": b.node_id,
        "counts": c,
        "contradictions": len(contradictions),
        "contradiction_examples": contradictions[:10],
        "journal_commands": view.commands,
        "state_hash_matches": hash_ok,
        "seconds": round(time.monotonic() - started, 1),
        "passed": not contradictions
        and hash_ok
        and from_replicated
        and c["unknown"] == c["unknown_present"] + c["unknown_absent"],
    }


def format_dr(r: dict) -> str:
    c = r["counts"]
    lines = [
        f"suite dr: {'PASS' if r['passed'] else 'FAIL'} in {r['seconds']} s",
        f"  standby data dir destroyed: rebuilt and in sync in {r['rebuild_s']} s "
        f"({'' if r['rebuilt_from_replicated_snapshot'] else 'NOT '}from the replicated snapshot "
        f"and the stream; {r['orders_acked_during_rebuild']} orders acked meanwhile)",
        f"  leader killed: node {r['new_leader']} took over, first ack {r['takeover_s']} s after the kill",
        f"  orders {c['ops']}: acked {c['ok']}, refused {c['failed']}, unknown {c['unknown']} "
        f"(resolved: {c['unknown_present']} present, {c['unknown_absent']} absent); journal orders "
        f"{c['journal_orders']}; contradictions {r['contradictions']} (every ack present exactly once: "
        f"{'yes' if not r['contradictions'] else 'NO'})",
        f"  replay state hash {'matches' if r['state_hash_matches'] else 'DIFFERS from'} the new leader's",
    ]
    lines += [f"    {text}" for text in r["contradiction_examples"]]
    return "\n".join(lines)
