"""The faults of a chaos run on a local cluster (engine/cluster/drill.py's `loom run
--cluster` nodes on a LocalNatsCluster):

    kill-leader   SIGKILL of the leading `loom run`: the standby takes over; the killed node
                  is started again and rejoins as the standby
    pause-leader  SIGSTOP of the leader for longer than its lease (the standby takes over),
                  then SIGCONT: it finds itself deposed and follows
    kill-nats     SIGKILL of the nats-server leading the journal stream (JetStream elects
                  another, several seconds), then it is started again
    pause-nats    SIGSTOP of that server for longer than the journal's publish timeout, so
                  appends time out with their fate unknown (they land on SIGCONT)

Each fault ends when the cluster has recovered: one leader, the standby in sync, and orders
acknowledged again after it (waited for, never slept for). Only the length of a pause is a
chosen duration: it is the fault itself.
"""

from __future__ import annotations

import random
import signal
import time
from typing import TYPE_CHECKING

from engine.cluster.drill import NodeProcess, in_sync, leader_of, wait_for

if TYPE_CHECKING:  # `loom chaos` reads KINDS before anything heavy is imported
    from engine.chaos.history import History
    from engine.cluster.link import NatsLink
    from engine.cluster.natsserver import LocalNatsCluster

KINDS = ("kill-leader", "pause-leader", "kill-nats", "pause-nats")
LEADER_PAUSE_S = (1.5, 5.0)  # the lease lapses after 1.2 s; the client gives up after 4 s
NATS_PAUSE_S = (2.5, 3.5)  # the publish timeout is 2 s; JetStream re-elects only after ~4 s
RECOVERY_S = 90.0  # a JetStream re-election takes 6-7 s; generous for a loaded machine
ACKS_AFTER = 10  # orders acknowledged after a fault: the cluster is taking orders again


class FaultInjector:
    def __init__(
        self,
        nodes: list[NodeProcess],
        nats: LocalNatsCluster,
        link: NatsLink,
        stream: str,
        history: History,
        seed: int = 1,
    ) -> None:
        self.nodes = nodes
        self.nats = nats
        self.link = link
        self.stream = stream
        self.history = history
        self.rng = random.Random(seed)

    def inject(self, kind: str) -> dict:
        """Run one fault and wait for the cluster to recover; returns its record (also
        appended to the history's fault log)."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault {kind!r}: one of {', '.join(KINDS)}")
        self.settled()
        record = {"fault": kind, "target": "", "start": time.monotonic(), "end": 0.0}
        self.history.faults.append(record)
        getattr(self, "_" + kind.replace("-", "_"))(record)
        record["end"] = time.monotonic()
        self.settled()
        wait_for(
            f"{ACKS_AFTER} orders acknowledged after {kind}",
            lambda: self.history.acked_since(record["end"]) >= ACKS_AFTER,
            RECOVERY_S,
        )
        record["recovered_s"] = round(time.monotonic() - record["start"], 2)
        return record

    def settled(self) -> None:
        wait_for("one leader and the standby in sync", lambda: in_sync(self.nodes), RECOVERY_S)

    # -- the faults ------------------------------------------------------------------------

    def _kill_leader(self, record: dict) -> None:
        leader = self._leader()
        record["target"] = f"loom {leader.node_id}"
        leader.kill()
        wait_for(
            "another node to lead",
            lambda: (new := leader_of(self.nodes)) is not None and new is not leader,
            RECOVERY_S,
        )
        leader.start()  # back as the standby: its snapshot, then the stream

    def _pause(self, proc, span: tuple[float, float]) -> float:
        """SIGSTOP `proc` for a random time within `span` (seconds), then SIGCONT; the time."""
        pause = round(self.rng.uniform(*span), 2)
        proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(pause)
        finally:
            proc.send_signal(signal.SIGCONT)
        return pause

    def _pause_leader(self, record: dict) -> None:
        leader = self._leader()
        record["target"] = f"loom {leader.node_id}"
        record["target"] += f" for {self._pause(leader.proc, LEADER_PAUSE_S)} s"

    def _kill_nats(self, record: dict) -> None:
        index = self._stream_leader()
        record["target"] = f"nats {self.nats.nodes[index].name} (stream leader)"
        self.nats.kill(index)
        try:
            wait_for(
                "orders acknowledged without it",
                lambda: self.history.acked_since(record["start"]) >= ACKS_AFTER,
                RECOVERY_S,
            )
        finally:
            self.nats.restart(index)

    def _pause_nats(self, record: dict) -> None:
        index = self._stream_leader()
        node = self.nats.nodes[index]
        record["target"] = f"nats {node.name} (stream leader)"
        record["target"] += f" for {self._pause(node.proc, NATS_PAUSE_S)} s"

    # -- finding the targets ---------------------------------------------------------------

    def _leader(self) -> NodeProcess:
        return wait_for("a leader", lambda: leader_of(self.nodes), RECOVERY_S)

    def _stream_leader(self) -> int:
        """The index of the nats-server leading the journal stream's Raft group."""

        def find() -> int | None:
            try:
                name = self.link.call(self.link.js.stream_info(self.stream)).cluster.leader
            except Exception:  # electing, or the observer reconnecting: ask again
                return None
            return next((i for i, n in enumerate(self.nats.nodes) if n.name == name and n.alive()), None)

        return wait_for("the stream's leader", lambda: (i := find()) is not None and (i,), RECOVERY_S)[0]
