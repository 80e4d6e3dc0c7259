"""Opening a node's cluster connection from its configuration: one NATS link shared by
the replicated journal (which owns it) and the leader lease."""

from __future__ import annotations

from engine.cluster.journal import NatsJournal
from engine.cluster.lease import Lease
from engine.cluster.link import NatsLink
from engine.config import Config


def connect_cluster(cfg: Config) -> tuple[NatsJournal, Lease]:
    link = NatsLink(cfg.cluster, name=f"loom-{cfg.node_id}")
    try:
        journal = NatsJournal(link, stream=cfg.cluster_stream, owns_link=True)
        lease = Lease(link, cfg.node_id, ttl=cfg.lease_ttl, renew_every=cfg.lease_ttl / 4)
    except BaseException:
        link.close()
        raise
    return journal, lease
