"""Opening a node's cluster connection from its configuration: one NATS link shared by
the replicated journal (which owns it), the leader lease, the replicated snapshots and the
standbys' positions."""

from __future__ import annotations

from engine.cluster.journal import DEFAULT_PREFIX, DEFAULT_STREAM, NatsJournal
from engine.cluster.lease import DEFAULT_BUCKET, Lease
from engine.cluster.link import NatsLink
from engine.cluster.positions import DEFAULT_BUCKET as POSITIONS_BUCKET
from engine.cluster.positions import StandbyPositions
from engine.cluster.snapshot_store import DEFAULT_BUCKET as SNAPSHOT_BUCKET
from engine.cluster.snapshot_store import ReplicatedSnapshots
from engine.config import Config


def stream_names(stream: str) -> tuple[str, str, str, str]:
    """(subject prefix, lease bucket, snapshot bucket, positions bucket) of a stream: another
    stream name is another exchange on the same NATS, with its own subjects, lease and
    snapshots."""
    if stream == DEFAULT_STREAM:
        return DEFAULT_PREFIX, DEFAULT_BUCKET, SNAPSHOT_BUCKET, POSITIONS_BUCKET
    low = stream.lower()
    return f"loom.{low}", f"{low}_lease", f"{low}_snapshots", f"{low}_positions"


def connect_cluster(cfg: Config) -> tuple[NatsJournal, Lease, ReplicatedSnapshots, StandbyPositions]:
    link = NatsLink(cfg.cluster, name=f"loom-{cfg.node_id}")
    try:
        stream = cfg.cluster_stream
        prefix, bucket, snapshot_bucket, positions_bucket = stream_names(stream)
        journal = NatsJournal(link, stream=stream, prefix=prefix, owns_link=True)
        lease = Lease(link, cfg.node_id, bucket=bucket, ttl=cfg.lease_ttl, renew_every=cfg.lease_ttl / 4)
        snapshots = ReplicatedSnapshots(link, snapshot_bucket)
        positions = StandbyPositions(
            link, cfg.node_id, positions_bucket, stale_s=cfg.retention_standby_stale_s
        )
    except BaseException:
        link.close()
        raise
    return journal, lease, snapshots, positions
