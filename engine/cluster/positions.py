"""Where each standby is: one key per node in a JetStream KV bucket (R3), so that the
leader's retention purges nothing a live standby still needs.

    key      the node id
    value    {"node": id, "applied_seq": N, "at": the reporter's wall-clock time}

A standby writes its key every second or so (at once when it starts); the leader reads
every key before a purge and purges no command after the lowest applied_seq among the
reports newer than `stale_s`. A standby that stops reporting (dead, paused, partitioned)
stops holding retention back after stale_s and, should it come back past the purge,
restarts from the replicated snapshot as before. Staleness is judged by the leader's wall
clock against the reporter's: the default margin (60 s) dwarfs the skew between hosts. A
node that stops cleanly, fails or leads withdraws its key; the bucket's TTL removes the keys
of nodes that never come back.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors

from engine.cluster.link import NatsLink

log = logging.getLogger("loom.cluster.positions")

DEFAULT_BUCKET = "loom_positions"
DEFAULT_STALE_S = 60.0
BUCKET_TTL_S = 24 * 3600.0  # keys of nodes gone for good disappear by themselves


@dataclass(frozen=True, slots=True)
class StandbyPosition:
    node: str
    applied_seq: int
    age_s: float  # since the report was written (by the leader's clock against the reporter's)
    live: bool  # reported within stale_s: retention keeps what it still needs


class StandbyPositions:
    def __init__(
        self,
        link: NatsLink,
        node_id: str,
        bucket: str = DEFAULT_BUCKET,
        stale_s: float = DEFAULT_STALE_S,
        replicas: int = 3,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if stale_s <= 0:
            raise ValueError("stale_s must be > 0")
        self.link = link
        self.node_id = node_id
        self.stale_s = stale_s
        self.wall = wall
        self.reported = 0  # reports written by this node
        self.last: list[StandbyPosition] = []  # the other nodes, as last read (metrics, status)
        self.read_at = 0.0  # wall time of that read
        self.kv = link.key_value(bucket, replicas, ttl=BUCKET_TTL_S)

    async def report(self, applied_seq: int) -> None:
        """This standby has applied every command through `applied_seq`."""
        value = {"node": self.node_id, "applied_seq": applied_seq, "at": self.wall()}
        await self.kv.put(self.node_id, json.dumps(value).encode())
        self.reported += 1

    async def withdraw(self) -> None:
        """This node no longer follows (stopping, failed, leading): hold nothing back."""
        try:
            await self.kv.delete(self.node_id)
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            log.warning("positions: could not withdraw %s (%s); it goes stale instead", self.node_id, exc)

    async def read(self) -> list[StandbyPosition]:
        """Every other node's last report, oldest position first; kept in `last`."""
        try:
            listed = await self.kv.keys()
        except nats.js.errors.NoKeysError:
            listed = []
        # A listing can come back short (one CI run's leader listed neither of two standbys
        # that had reported, and purged past both): every node seen before is read by its
        # key as well; one that withdrew is not found and drops out below.
        keys = sorted(set(listed) | {p.node for p in self.last})
        now = self.wall()
        found = []
        for key in keys:
            if key == self.node_id:
                continue
            try:
                entry = await self.kv.get(key)
            except nats.js.errors.KeyNotFoundError:  # withdrawn meanwhile
                continue
            raw = json.loads(entry.value or b"{}")
            age = max(0.0, now - float(raw.get("at", 0.0)))
            found.append(StandbyPosition(key, int(raw.get("applied_seq", 0)), age, age <= self.stale_s))
        found.sort(key=lambda p: p.applied_seq)
        self.last, self.read_at = found, now
        return found

    @staticmethod
    def floor(positions: list[StandbyPosition]) -> int | None:
        """The last command seq a purge may remove: the slowest live standby's applied seq
        (None: no live standby holds anything back)."""
        live = [p.applied_seq for p in positions if p.live]
        return min(live) if live else None
