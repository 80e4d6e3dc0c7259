"""Snapshot-based retention of the replicated journal: the stream stops growing forever.

On the leader, every local snapshot (scheduled, on demand, or by the runbook automation)
is then, off the order path:
    1. read back from disk and stored in the replicated snapshot store (R3); only its
       meta message's PubAck counts;
    2. only then are the stream's batches it makes unnecessary purged, keeping every batch
       that holds one of the last `keep_commands` commands before the snapshot, every batch
       a live standby has not applied yet (engine/cluster/positions.py: a standby whose
       report is older than `stale_s` no longer counts), and always the batch holding the
       snapshot's seq;
    3. older replicated snapshots beyond `keep_snapshots` are deleted.

A failure at any step is logged and counted and stops that round before the purge: the
stream then just keeps growing until a later snapshot gets through (nothing is lost).
Standbys keep their own local snapshots and never upload or purge.

Runs on the NATS link's loop (never the service's: an upload of megabytes must not hold
up acknowledgements); snapshots taken while a round is running coalesce to the newest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from engine.cluster.journal import NatsJournal
from engine.cluster.positions import StandbyPositions
from engine.cluster.snapshot_store import ReplicatedSnapshots
from engine.snapshots import HEADER, WrittenSnapshot

log = logging.getLogger("loom.cluster.retention")

DEFAULT_KEEP_COMMANDS = 100_000
DEFAULT_KEEP_SNAPSHOTS = 2


@dataclass
class RetentionStats:
    uploads_ok: int = 0
    uploads_failed: int = 0
    purges: int = 0  # purges that removed anything
    purged_messages: int = 0
    last_purge_seq: int = 0  # snapshot seq of the last purge that removed anything
    rounds: int = 0  # purge decisions taken (after a stored snapshot), whatever they removed
    last_round_seq: int = 0  # snapshot seq of the last purge decision
    held_back: int = 0  # decisions a live standby's position held back
    standby_floor: int | None = None  # the slowest live standby's applied seq at the last one


class Retention:
    def __init__(
        self,
        journal: NatsJournal,
        store: ReplicatedSnapshots,
        leading: Callable[[], bool],
        keep_commands: int = DEFAULT_KEEP_COMMANDS,
        keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS,
        positions: StandbyPositions | None = None,
    ) -> None:
        if keep_commands < 0 or keep_snapshots < 1:
            raise ValueError("keep_commands >= 0 and keep_snapshots >= 1")
        self.journal = journal
        self.store = store
        self.link = journal.link
        self.leading = leading
        self.keep_commands = keep_commands
        self.keep_snapshots = keep_snapshots
        self.positions = positions  # None: standbys are not consulted (keep_commands only)
        self.stats = RetentionStats()
        self._pending: WrittenSnapshot | None = None
        self._running = False
        self.idle = asyncio.Event()  # set on the link's loop whenever no round is running
        self.link.loop.call_soon_threadsafe(self.idle.set)

    def on_snapshot(self, written: WrittenSnapshot) -> None:
        """A local snapshot was written (called on the service's thread): replicate it and
        purge behind it, if this node leads."""
        if self.leading():
            self.link.loop.call_soon_threadsafe(self._offer, written)

    def _offer(self, written: WrittenSnapshot) -> None:
        self._pending = written
        if not self._running:
            self._running = True
            self.idle.clear()
            self.link.loop.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._pending is not None:
                written, self._pending = self._pending, None
                await self.replicate(written)
        finally:
            self._running = False
            self.idle.set()

    async def replicate(self, written: WrittenSnapshot) -> bool:
        """One round (on the link's loop): upload, then purge, then prune. True when the
        snapshot was stored."""
        try:
            data = await asyncio.to_thread(written.path.read_bytes)
        except FileNotFoundError:  # already pruned locally: a newer snapshot follows
            return False
        except OSError as exc:
            self.stats.uploads_failed += 1
            log.error("snapshot %s not replicated: %s", written.path, exc)
            return False
        seq = HEADER.unpack_from(data)[2] if len(data) >= HEADER.size else -1
        if seq != written.seq:
            self.stats.uploads_failed += 1
            log.error("snapshot %s holds seq %d, not %d: not replicated", written.path, seq, written.seq)
            return False
        try:
            stored = await self.store.put(written.seq, written.state_hash, data)
        except Exception as exc:  # NATS away or electing: the next snapshot tries again
            self.stats.uploads_failed += 1
            log.error("snapshot at seq %d not replicated: %s: %s", written.seq, type(exc).__name__, exc)
            return False
        self.stats.uploads_ok += 1
        log.info("snapshot at seq %d replicated as %s (%d bytes)", stored.seq, stored.name, stored.size)
        try:
            floor = await self._standby_floor(written.seq)
            purged = await self.journal.purge_covered(written.seq, self.keep_commands, floor)
            self.stats.rounds += 1
            self.stats.last_round_seq = written.seq
            if purged:
                self.stats.purges += 1
                self.stats.purged_messages += purged
                self.stats.last_purge_seq = written.seq
            await self.store.prune(self.keep_snapshots)
        except Exception as exc:  # the snapshot is stored; the stream is purged next time
            what = f"{type(exc).__name__}: {exc}"
            log.error("retention after the snapshot at seq %d failed: %s", written.seq, what)
        return True

    async def _standby_floor(self, snapshot_seq: int) -> int | None:
        """The last seq the live standbys let go (None: no live standby). A failure to read
        the positions fails the round: purging blind could strand a standby."""
        if self.positions is None:
            return None
        positions = await self.positions.read()
        floor = self.positions.floor(positions)
        self.stats.standby_floor = floor
        if floor is not None and floor < snapshot_seq - max(self.keep_commands, 1):
            self.stats.held_back += 1
            slowest = next(p for p in positions if p.live and p.applied_seq == floor)
            log.info(
                "purge held back to seq %d by standby %s (reported %.1f s ago; snapshot at %d)",
                floor,
                slowest.node,
                slowest.age_s,
                snapshot_seq,
            )
        stale = [p.node for p in positions if not p.live]
        if stale:
            log.info("purge ignores standby(s) %s: no report for over %g s", stale, self.positions.stale_s)
        return floor
