"""Snapshots: the whole engine state at one journal sequence, with its state hash.

    snapshot := b"LOOMSNAP" | version u16 | seq u64 | state_hash 32 bytes | length u64
                | crc32 u32 | payload (msgpack EngineState)

Written atomically (temporary file, fsync, rename, fsync of the directory); verified on
load by the checksum and by recomputing the state hash of the restored engine; the newest
`keep` are kept. A damaged newest snapshot falls back to the previous one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from engine.core.matcher import MatchingEngine
from engine.core.state import (
    STATE_VERSION,
    decode_state,
    encode_state,
    export_state,
    hash_state,
    restore_state,
    state_hash,
)
from engine.fsutil import fsync_dir

log = logging.getLogger("loom.snapshots")

SNAPSHOT_VERSION = 1
MAGIC = b"LOOMSNAP"
HEADER = struct.Struct("<8sHQ32sQI")
WRITE_SLICE = 4 << 20  # bytes of a snapshot written and made durable at a time
SNAPSHOT_RE = re.compile(r"^snapshot-(\d{20})\.snap$")


class SnapshotError(Exception):
    pass


@dataclass(frozen=True)
class SnapshotInfo:
    path: Path
    seq: int
    size: int


@dataclass(frozen=True)
class LoadedSnapshot:
    engine: MatchingEngine
    seq: int
    state_hash: str
    path: Path
    skipped: tuple[tuple[Path, str], ...]  # newer snapshots that failed verification


@dataclass(frozen=True)
class WrittenSnapshot:
    path: Path
    seq: int
    state_hash: str
    size: int
    duration_s: float


def encode_snapshot(engine: MatchingEngine) -> tuple[bytes, str]:
    state = export_state(engine)
    payload = encode_state(state)
    digest = hash_state(state)  # the state hash (the crc covers every byte of the payload)
    header = HEADER.pack(
        MAGIC, SNAPSHOT_VERSION, engine.last_seq, bytes.fromhex(digest), len(payload), zlib.crc32(payload)
    )
    return header + payload, digest


def decode_snapshot(data: bytes, name: str = "snapshot") -> LoadedSnapshot:
    """Verify and restore. Raises SnapshotError naming what is wrong."""
    if len(data) < HEADER.size:
        raise SnapshotError(f"{name}: truncated header ({len(data)} bytes)")
    magic, version, seq, digest, length, crc = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError(f"{name}: not a snapshot (bad magic)")
    if version != SNAPSHOT_VERSION:
        raise SnapshotError(f"{name}: unsupported snapshot version {version}")
    payload = memoryview(data)[HEADER.size :]
    if len(payload) != length:
        raise SnapshotError(f"{name}: payload is {len(payload)} bytes, header says {length}")
    if zlib.crc32(payload) != crc:
        raise SnapshotError(f"{name}: checksum mismatch")
    try:
        state = decode_state(payload)
        old_version = state.version
        engine = restore_state(state)
    except (msgspec.DecodeError, ValueError) as exc:
        raise SnapshotError(f"{name}: unreadable engine state: {exc}") from None
    if engine.last_seq != seq:
        raise SnapshotError(f"{name}: state is at seq {engine.last_seq}, header says {seq}")
    recomputed = state_hash(engine)
    if old_version != STATE_VERSION:
        # Written by an older version (before the ledger): its hash covers the old layout,
        # so the payload is checked against it and the restored engine hashes anew.
        if hashlib.blake2b(payload, digest_size=32).digest() != digest:
            raise SnapshotError(f"{name}: payload does not match its state hash {digest.hex()[:16]}")
        log.info("%s: engine state version %d upcast to %d", name, old_version, STATE_VERSION)
    elif recomputed != digest.hex():
        raise SnapshotError(f"{name}: restored state hash {recomputed[:16]} != {digest.hex()[:16]}")
    return LoadedSnapshot(engine, seq, recomputed, Path(name), ())


class SnapshotStore:
    def __init__(self, directory: str | os.PathLike, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError("keep at least one snapshot")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.load_failures = 0
        self.write_failures = 0
        self.last_skipped: list[tuple[Path, str]] = []  # from the last load_newest_valid

    def list(self) -> list[SnapshotInfo]:
        """Snapshots on disk, oldest first."""
        out = []
        for p in self.directory.iterdir():
            m = SNAPSHOT_RE.match(p.name)
            if m:
                out.append(SnapshotInfo(p, int(m.group(1)), p.stat().st_size))
        return sorted(out, key=lambda s: s.seq)

    def write(self, engine: MatchingEngine) -> WrittenSnapshot:
        """Encode and write in this process, then prune (recovery, tests). A running node
        writes through engine/snapshot_child.py instead: the same `write_file`, in a child."""
        try:
            written = self.write_file(engine)
        except OSError:
            self.write_failures += 1
            raise
        self.prune()
        return written

    def write_file(
        self, engine: MatchingEngine, before_write: Callable[[Path], None] | None = None
    ) -> WrittenSnapshot:
        """Encode the engine and write it atomically (temporary file, fsync, rename, fsync
        of the directory). Neither counts nor prunes: safe in a forked child. `before_write`
        is called with the temporary file's path once it is created (a test hook)."""
        started = time.perf_counter()
        data, digest = encode_snapshot(engine)
        final = self.directory / f"snapshot-{engine.last_seq:020d}.snap"
        tmp = final.with_suffix(".snap.tmp")
        try:
            with open(tmp, "wb") as f:
                if before_write is not None:
                    before_write(tmp)
                # In slices, each made durable before the next: one fdatasync of the whole
                # image would queue the journal's fdatasyncs behind tens of MB of writeback.
                view = memoryview(data)
                for start in range(0, len(view), WRITE_SLICE):
                    f.write(view[start : start + WRITE_SLICE])
                    f.flush()
                    os.fdatasync(f.fileno())
                os.fsync(f.fileno())
            os.replace(tmp, final)
            fsync_dir(self.directory)
        except OSError:
            with contextlib.suppress(OSError):  # a directory in its place: leave it be
                tmp.unlink(missing_ok=True)
            raise
        return WrittenSnapshot(final, engine.last_seq, digest, len(data), time.perf_counter() - started)

    def prune(self) -> None:
        """Keep the newest `keep`; remove unfinished temporary files. Never while a snapshot
        is being written (its temporary file would go)."""
        for info in self.list()[: -self.keep]:
            info.path.unlink(missing_ok=True)
        for stale in self.directory.glob("*.snap.tmp"):
            with contextlib.suppress(IsADirectoryError):
                stale.unlink(missing_ok=True)

    def verify(self, info: SnapshotInfo) -> LoadedSnapshot:
        return decode_snapshot(info.path.read_bytes(), str(info.path))

    def load_newest_valid(self, max_seq: int | None = None) -> LoadedSnapshot | None:
        """The newest snapshot that verifies (and covers no more than `max_seq`), falling
        back past damaged ones; None when there is none."""
        skipped: list[tuple[Path, str]] = []
        self.last_skipped = skipped
        for info in reversed(self.list()):
            if max_seq is not None and info.seq > max_seq:
                # A node's own journal refuses to start before this when such a snapshot
                # verifies (recovery.tail_guard): this one failed verification, or belongs to
                # a history the journal no longer holds (a replicated stream). Set aside for
                # good, or it would be taken for the new history once the journal grows past it.
                stale = info.path.with_name(info.path.name + ".stale")
                os.replace(info.path, stale)
                fsync_dir(self.directory)
                reason = (
                    f"covers seq {info.seq}, beyond the journal's last seq {max_seq}; moved to {stale.name}"
                )
                log.error("snapshot %s set aside: %s", info.path, reason)
                skipped.append((info.path, reason))
                continue
            try:
                loaded = self.verify(info)
            except (SnapshotError, ValueError, OSError) as exc:
                self.load_failures += 1
                log.error("snapshot %s failed verification, falling back: %s", info.path, exc)
                skipped.append((info.path, str(exc)))
                continue
            return LoadedSnapshot(loaded.engine, loaded.seq, loaded.state_hash, info.path, tuple(skipped))
        return None
