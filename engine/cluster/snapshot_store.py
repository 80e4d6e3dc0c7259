"""Replicated snapshots: the leader's snapshots in a JetStream Object Store bucket (R3,
file storage), so the journal stream can be purged below them and a node with no usable
local snapshot can still start.

Why the Object Store and not a KV key or a plain stream:
  - a snapshot is megabytes and a NATS message at most 1 MB (max_payload): the Object Store
    chunks it (128 KiB) and stores the chunks and then one meta message;
  - the meta message is written last, after every chunk's PubAck, and names the chunks'
    SHA-256: a reader sees a whole snapshot or none, and the digest is checked on read;
  - it is a stream underneath, so it replicates (R3) and syncs exactly like the journal:
    the meta's PubAck means a majority has the whole snapshot on disk.

One object per snapshot, named by its seq (`snapshot-<seq:020d>`), with the state hash
and the time it was written in its headers; the newest `keep` are kept. "Newest" is by seq,
never by write time, so a deposed leader uploading an older snapshot late cannot hide a
newer one. A fetched snapshot is verified like a local one (checksum, restore, state
hash recomputed) before anything trusts it.
"""

from __future__ import annotations

import base64
import logging
import re
import time
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js import api
from nats.js.object_store import OBJ_META_PRE_TEMPLATE

from engine.cluster.link import NatsLink
from engine.snapshots import LoadedSnapshot, SnapshotError, decode_snapshot

log = logging.getLogger("loom.cluster.snapshots")

DEFAULT_BUCKET = "loom_snapshots"
NAME_RE = re.compile(r"^snapshot-(\d{20})$")
HASH = "Loom-State-Hash"
WRITTEN_AT = "Loom-Written-At"  # unix seconds on the writer's clock (for the age gauge)
FETCH_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class ReplicatedSnapshot:
    name: str
    seq: int
    state_hash: str
    written_at: float
    size: int


def object_name(seq: int) -> str:
    return f"snapshot-{seq:020d}"


def _header(info: api.ObjectInfo, key: str) -> str:
    value = (info.headers or {}).get(key, "")
    return value[0] if isinstance(value, list) and value else str(value or "")


class ReplicatedSnapshots:
    def __init__(self, link: NatsLink, bucket: str = DEFAULT_BUCKET, replicas: int = 3) -> None:
        self.link = link
        self.bucket = bucket
        self.replicas = replicas
        self.newest: ReplicatedSnapshot | None = None  # as last listed or written
        self.load_failures = 0
        self.store = link.call_retrying(self._open, f"opening object store {bucket}")

    async def _open(self):
        js = self.link.js
        try:
            return await js.object_store(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            config = api.ObjectStoreConfig(
                description="Loom replicated snapshots", storage=api.StorageType.FILE, replicas=self.replicas
            )
            try:
                return await js.create_object_store(self.bucket, config=config)
            except nats.js.errors.BadRequestError:  # another node created it meanwhile
                return await js.object_store(self.bucket)

    # -- on the link's loop ---------------------------------------------------------------------

    async def put(self, seq: int, state_hash: str, data: bytes) -> ReplicatedSnapshot:
        """Store a snapshot; returns once its meta message is acknowledged (durable)."""
        meta = api.ObjectMeta(
            name=object_name(seq),
            description=f"engine state at seq {seq}",
            headers={HASH: [state_hash], WRITTEN_AT: [f"{time.time():.3f}"]},
        )
        info = await self.store.put(meta.name, data, meta=meta)
        stored = ReplicatedSnapshot(meta.name, seq, state_hash, float(_header(info, WRITTEN_AT)), len(data))
        if self.newest is None or stored.seq >= self.newest.seq:
            self.newest = stored
        return stored

    async def list(self) -> list[ReplicatedSnapshot]:
        """The snapshots in the bucket, oldest (lowest seq) first."""
        try:
            infos = await self.store.list(ignore_deletes=True)
        except nats.js.errors.NotFoundError:
            infos = []
        out = []
        for info in infos:
            m = NAME_RE.match(info.name or "")
            if m is None or info.deleted:
                continue
            written = _header(info, WRITTEN_AT)
            out.append(
                ReplicatedSnapshot(
                    info.name, int(m.group(1)), _header(info, HASH), float(written or 0), info.size or 0
                )
            )
        out.sort(key=lambda s: s.seq)
        self.newest = out[-1] if out else None
        return out

    async def fetch(self, name: str) -> bytes:
        return (await self.store.get(name)).data

    async def prune(self, keep: int) -> int:
        """Delete all but the newest `keep`; returns how many went. The meta subject is
        purged too, so deleted snapshots leave nothing behind."""
        doomed = (await self.list())[:-keep] if keep > 0 else []
        for snap in doomed:
            await self.store.delete(snap.name)
            subject = OBJ_META_PRE_TEMPLATE.format(
                bucket=self.bucket, obj=base64.urlsafe_b64encode(snap.name.encode()).decode()
            )
            await self.link.js.purge_stream(self.store._stream, subject=subject)
        return len(doomed)

    # -- synchronous, for recovery --------------------------------------------------------------

    def load_newest_valid(self, max_seq: int) -> LoadedSnapshot | None:
        """The newest replicated snapshot that verifies and covers no more than `max_seq`
        (the journal's last seq), falling back past damaged ones; None when none does."""
        for snap in reversed(self.link.call(self.list())):
            if snap.seq > max_seq:
                log.error("replicated %s is beyond the journal's last seq %d: skipped", snap.name, max_seq)
                continue
            try:
                loaded, data = self.load(snap)
            except (SnapshotError, ValueError, nats.errors.Error, TimeoutError) as exc:
                self.load_failures += 1
                log.error("replicated %s failed verification, falling back: %s", snap.name, exc)
                continue
            log.info("replicated snapshot %s at seq %d verified (%d bytes)", snap.name, snap.seq, len(data))
            return loaded
        return None

    def load(self, snap: ReplicatedSnapshot) -> tuple[LoadedSnapshot, bytes]:
        """Fetch and verify one snapshot (checksum, restore, state hash, and the hash its
        header names); raises SnapshotError naming what is wrong."""
        data = self.link.call(self.fetch(snap.name), FETCH_TIMEOUT_S)
        loaded = decode_snapshot(data, f"{self.bucket}/{snap.name}")
        if snap.state_hash and loaded.state_hash != snap.state_hash:
            raise SnapshotError(
                f"{self.bucket}/{snap.name}: state hash {loaded.state_hash[:16]}, "
                f"its header says {snap.state_hash[:16]}"
            )
        return loaded, data
