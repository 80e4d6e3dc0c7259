"""Retention end to end on real processes: a leader and a standby (`loom run --cluster`) on
the 3-server NATS cluster take orders; the leader's snapshot is replicated and the stream
purged behind it (the standby, following, keeps its place); a brand new node joins with an
empty data dir, recovers from the replicated snapshot and the stream's tail to the
leader's state hash, and takes over when the leader is SIGKILLed, with every acknowledged
order present exactly once."""

from __future__ import annotations

import threading
import urllib.request
from collections import Counter

import pytest
from natsproc import unique_stream
from prometheus_client.parser import text_string_to_metric_families
from snapshot_request import request_snapshot

from engine.cluster.drill import TRADER_KEY, NodeProcess, OrderSender, failover_once, http, in_sync, wait_for
from engine.cluster.journal import NatsJournal
from engine.cluster.snapshot_store import ReplicatedSnapshots
from engine.core.state import state_hash
from telemetry.catalogue import declared_series

KEEP = 20  # commands kept in the stream before the replicated snapshot
RETENTION = f"\n[retention]\nkeep_commands = {KEEP}\n"


@pytest.fixture
def nodes(nats_cluster, tmp_path):
    stream, _prefix = unique_stream()
    made = {n: NodeProcess(n, nats_cluster.urls, tmp_path, stream, RETENTION) for n in ("a", "b", "c")}
    try:
        yield made, stream
    finally:
        for node in made.values():
            node.stop()


def run_sender(sender: OrderSender) -> threading.Thread:
    thread = threading.Thread(target=sender.run, daemon=True)
    thread.start()
    return thread


def stop_sender(sender: OrderSender, thread: threading.Thread) -> None:
    sender.stop.set()
    thread.join(10)
    assert not thread.is_alive()


def scrape(node: NodeProcess) -> dict:
    """name -> value of label-free samples, (name, outcome) -> value for the uploads."""
    with urllib.request.urlopen(node.base + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = sample.value
            if "outcome" in sample.labels:
                out[sample.name, sample.labels["outcome"]] = sample.value
    return out


def hashes(nodes: list[NodeProcess]) -> dict[str, tuple[int, str]]:
    out = {}
    for node in nodes:
        status = http("GET", node.base + "/v1/admin/cluster?verify=1")[1]
        out[node.node_id] = (status["applied_seq"], status["state_hash"])
    return out


def test_a_new_node_joins_after_a_purge_and_takes_over(nodes, nats_link):
    made, stream = nodes
    a, b, c = made["a"], made["b"], made["c"]
    a.start()
    wait_for("a to lead", lambda: a.status().get("role") == "leader")
    b.start()
    wait_for("b to follow a", lambda: in_sync([a, b]))

    sender = OrderSender([a, b])
    thread = run_sender(sender)
    wait_for("60 acked orders", lambda: len(sender.acked) >= 60)
    status, written = request_snapshot(a.base)
    assert status == 200, written
    wait_for("the purge behind the replicated snapshot", lambda: a.status().get("purges", 0) >= 1)
    after_purge = a.status()
    snap_seq = after_purge["replicated_snapshot_seq"]
    first = after_purge["stream_first_command_seq"]
    assert snap_seq >= 60
    # The boundary: the batch holding seq snap_seq - KEEP + 1 is kept, so the stream still
    # begins at or before it, and something was purged.
    assert 1 < first <= snap_seq - KEEP + 1, after_purge
    assert after_purge["purged_messages"] >= 1
    exposed = scrape(a)
    assert exposed["loom_stream_purges_total"] >= 1
    assert exposed["loom_replicated_snapshot_seq"] == snap_seq
    assert exposed["loom_replicated_snapshot_uploads_total", "ok"] == 1
    assert 0 <= exposed["loom_replicated_snapshot_age_seconds"] < 60
    assert exposed["loom_stream_first_command_seq"] == first
    assert exposed["loom_stream_messages"] >= 1 and exposed["loom_journal_size_bytes"] > 0
    assert {n for n in exposed if isinstance(n, str)} <= declared_series()
    # Persistence in cluster mode: no segment files to count (absent, not a misleading 0), the
    # local snapshot the replicated one came from is fresh, and PubAck is the durability point.
    assert "loom_journal_segments" not in exposed
    assert exposed["loom_snapshot_seq"] == snap_seq and exposed["loom_snapshot_age_seconds"] < 60
    assert exposed["loom_replication_publish_seconds_count"] >= 60
    purged_at = len(sender.acked)
    wait_for("30 more acked orders", lambda: len(sender.acked) >= purged_at + 30)
    stop_sender(sender, thread)

    c.start()
    wait_for("c to catch up", lambda: in_sync([a, b, c]))
    joined = c.status()
    assert joined["recovered_from"] == "replicated", joined
    assert joined["recovered_snapshot_seq"] == snap_seq
    assert not b.status()["failed"]  # the standby kept its place through the purge
    seen = hashes([a, b, c])
    assert len(set(seen.values())) == 1, seen

    # c takes over from a (b leaves first, so c is the only candidate).
    b.stop()
    sender2 = OrderSender([a, c], counter=sender.counter)
    thread = run_sender(sender2)
    try:
        figures = failover_once([a, c], sender2, before=20, after=20)
    finally:
        stop_sender(sender2, thread)
    assert (figures["killed"], figures["new_leader"]) == ("a", "c"), figures

    acked = {**sender.acked, **sender2.acked}
    for clid, order_id in acked.items():
        status, view = http("GET", f"{c.base}/v1/orders/{order_id}", key=TRADER_KEY)
        assert status == 200 and view["client_order_id"] == clid, (clid, view)
    # c's state is the newest replicated snapshot plus the stream's tail, and holds each
    # acknowledged order exactly once.
    verified = http("GET", c.base + "/v1/admin/cluster?verify=1")[1]
    journal = NatsJournal(nats_link, stream, f"loom.{stream.lower()}")
    store = ReplicatedSnapshots(nats_link, f"{stream.lower()}_snapshots")
    loaded = store.load_newest_valid(journal.last_seq)
    assert loaded is not None and loaded.seq >= snap_seq
    engine = loaded.engine
    for cmd in journal.read(loaded.seq + 1):
        engine.apply(cmd)
    assert engine.last_seq == journal.last_seq == verified["applied_seq"]
    assert state_hash(engine) == verified["state_hash"]
    counts = Counter(o.client_order_id for o in engine.accounts["alice"].open.values())
    assert all(counts[clid] == 1 for clid in acked), [clid for clid in acked if counts[clid] != 1]
