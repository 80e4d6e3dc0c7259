"""The chaos drill (`loom chaos`, tests/test_chaos_history.py): two `loom run --cluster`
nodes on a local 3-server NATS cluster, a recording REST client sending orders throughout,
faults injected one after another, then the history checked against the stream.

The stream is the record: it is read back whole (NatsJournal.read), replayed through the
core (engine.chaos.history.JournalView), and the replay's state hash is compared with the
leader's live one as well.
"""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from engine.chaos.client import RecordingClient
from engine.chaos.faults import KINDS, FaultInjector
from engine.chaos.history import History, JournalView, check
from engine.cluster.drill import TRADER_KEY, NodeProcess, http, in_sync, leader_of, wait_for
from engine.cluster.journal import NatsJournal
from engine.cluster.link import NatsLink
from engine.cluster.natsserver import LocalNatsCluster

ACCOUNT = "alice"  # the drill's trader (engine/cluster/drill.py's configuration)


def run_chaos(
    faults: int = 20,
    kinds: Sequence[str] = KINDS,
    seed: int = 1,
    concurrency: int = 4,
    workdir: Path | None = None,
    nats: LocalNatsCluster | None = None,
) -> dict:
    """Inject `faults` faults, cycling through `kinds`, and check the history. `nats`: a
    running cluster to use (its servers are killed and paused), else one is started."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="loom-chaos-") as tmp:
            return run_chaos(faults, kinds, seed, concurrency, Path(tmp), nats)
    if nats is None:
        with LocalNatsCluster(workdir / "nats") as started:
            return run_chaos(faults, kinds, seed, concurrency, workdir, started)
    started_at = time.monotonic()
    stream = f"CHAOS{uuid.uuid4().hex[:8].upper()}"
    nodes = [NodeProcess(n, nats.urls, workdir, stream) for n in ("a", "b")]
    link = NatsLink(nats.urls, "chaos-observer")
    history = History()
    client = RecordingClient(
        lambda: [n.base if n.alive() else "" for n in nodes], ACCOUNT, TRADER_KEY, history, concurrency
    )
    try:
        nodes[0].start()
        wait_for("a to lead", lambda: nodes[0].status().get("role") == "leader", 60)
        nodes[1].start()
        wait_for("b to follow a", lambda: in_sync(nodes), 60)
        client.start()
        wait_for("the first orders acknowledged", lambda: history.acked_since(0) >= 20, 60)
        injector = FaultInjector(nodes, nats, link, stream, history, seed)
        for i in range(faults):
            injector.inject(kinds[i % len(kinds)])
        client.stop()
        wait_for("one leader and the standby in sync", lambda: in_sync(nodes), 90)
        leader = leader_of(nodes)
        live = http("GET", leader.base + "/v1/admin/cluster?verify=1", timeout=30)[1]
        view = JournalView.replay(NatsJournal(link, stream, f"loom.{stream.lower()}").read())
    except Exception as exc:
        tails = "\n".join(f"--- node {n.node_id}:\n{n.tail(15)}" for n in nodes)
        raise RuntimeError(f"chaos drill failed: {exc}\n{tails}") from exc
    finally:
        client.stop_event.set()
        for node in nodes:
            node.stop()
        link.close()
    result = check(history, view)
    return {
        "faults": len(history.faults),
        "fault_kinds": dict(Counter(f["fault"] for f in history.faults)),
        **result.to_json(),
        "journal_commands": view.commands,
        "state_hash_matches": live.get("state_hash") == view.state_hash(),
        "fault_log": [{k: v for k, v in f.items() if k not in ("start", "end")} for f in history.faults],
        "seconds": round(time.monotonic() - started_at, 1),
    }


def format_chaos(result: dict) -> str:
    c = result["counts"]
    lines = [
        f"chaos: {result['faults']} faults {result['fault_kinds']} in {result['seconds']} s",
        f"  operations {c['ops']}: ok {c['ok']}, failed {c['failed']}, unknown {c['unknown']} "
        f"(resolved: {c['unknown_present']} present, {c['unknown_absent']} absent)",
        f"  answers: {result['answers']}",
        f"  journal: {result['journal_commands']} commands, {c['journal_orders']} orders; "
        f"replay state hash {'matches' if result['state_hash_matches'] else 'DIFFERS from'} the leader's",
        f"  contradictions: {len(result['contradictions'])}",
    ]
    lines += [f"    {c['text']}" for c in result["contradictions"][:50]]
    if len(result["contradictions"]) > 50:
        lines.append(f"    ... and {len(result['contradictions']) - 50} more")
    return "\n".join(lines)


def quiet_logs() -> None:
    """The drill's reconnects and refusals are expected: keep the output to the figures."""
    logging.getLogger("loom").setLevel(logging.ERROR)
    logging.getLogger("nats").setLevel(logging.CRITICAL)
