"""A node's place in the cluster: standby (following), candidate (promoting), leader.

    standby    follows the replicated journal and applies every batch to its own engine
               (the recovery path that never stops); refuses orders with NOT_LEADER
    candidate  holds the lease: catches up to the stream tail, then writes an epoch marker
               with the tail as the expected last sequence. Refused = someone appended
               meanwhile: catch up again. Accepted = every older writer is fenced off.
    leader     accepts orders; each batch is acknowledged after its PubAck
    demotion   lease lost, fenced, or stepping down: stop accepting at once, let the
               batch in flight finish, follow again from where this node's writes ended

Runs on the service's event loop; the lease and the follower's reads run on the NATS
link's loop and hand their results over with call_soon_threadsafe (in order).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
from collections.abc import Callable
from enum import StrEnum

from engine.cluster.journal import FencedError, NatsJournal, StreamMessage
from engine.cluster.lease import Lease
from engine.cluster.positions import StandbyPositions
from engine.cluster.retention import Retention
from engine.core.balances import DEFAULT_FEE_ACCOUNT
from engine.core.domain import Asset, Instrument
from engine.core.state import state_hash
from engine.exchange import setup_stages
from engine.journal import JournalCorruptError, JournalWriteError
from engine.service import ExchangeService, NotLeader

log = logging.getLogger("loom.cluster")

TAIL_POLL_S = 0.5
SNAPSHOT_POLL_EVERY = 10  # tail polls between listings of the replicated snapshots (5 s)
POSITION_POLL_EVERY = 2  # tail polls between a standby's position reports, or the leader's reads (1 s)


class Role(StrEnum):
    LEADER = "leader"
    STANDBY = "standby"
    CANDIDATE = "candidate"
    STANDALONE = "standalone"


class ClusterMember:
    def __init__(
        self,
        node_id: str,
        service: ExchangeService,
        journal: NatsJournal,
        lease: Lease,
        instruments: tuple[Instrument, ...] = (),
        assets: tuple[Asset, ...] = (),
        credit_checks: bool | None = None,
        fee_account: str = DEFAULT_FEE_ACCOUNT,
    ) -> None:
        self.node_id = node_id
        self.service = service
        self.node = service.node
        self.journal = journal
        self.lease = lease
        self.link = journal.link
        # What a leader journals on promotion, as a single node does at start.
        self.setup = setup_stages(assets, instruments, credit_checks, fee_account)
        # Set by the app (it needs `leading`): replicates the leader's snapshots and purges.
        self.retention: Retention | None = None
        # Set by the app: standbys report their applied seq there, the leader reads them.
        self.positions: StandbyPositions | None = None
        self.role = Role.STANDBY
        self.failovers = 0
        self.failed = ""  # set when following hit damage: crash-only, never leads after
        # Recovery read the stream at least this far (its tail when the journal opened).
        self.applied_stream_seq = journal.expected
        self.stream_last_seq = journal.last_seq
        self._applied = asyncio.Event()
        self._follower: concurrent.futures.Future | None = None
        self._background: list[concurrent.futures.Future] = []
        self._promotion: asyncio.Task | None = None
        self._transitions: set[asyncio.Task] = set()
        self._stopping = False
        # A standby from the start: nothing is accepted or written before start() and the lease
        # say otherwise (the listeners are bound before start(), so it can advertise them).
        journal.writable = False
        service.accepting = False
        service.refusal = self._not_leader

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, url: str, endpoints: dict[str, str] | None = None) -> None:
        """Begin as a standby; the lease loop decides the rest. `url`: this node's HTTP base,
        and `endpoints` its other listeners ("fix"/"binary" -> host:port, as bound), all
        advertised in the lease so standbys can name the leader for each protocol."""
        self.loop = asyncio.get_running_loop()  # a standby since __init__
        self.lease.url = url
        self.lease.endpoints = dict(endpoints or {})
        self.lease.on_acquired = lambda: self.loop.call_soon_threadsafe(self._on_acquired)
        self.lease.on_lost = lambda reason: self.loop.call_soon_threadsafe(self._demote_soon, reason)
        self.journal.on_fenced = lambda: self.loop.call_soon_threadsafe(self._on_fenced)
        self._start_follower()
        self._background = [self.link.submit(self.lease.run()), self.link.submit(self._watch_tail())]
        log.info("cluster: node %s started as standby at seq %d", self.node_id, self.node.engine.last_seq)

    async def stop(self) -> None:
        """Shutdown: hand the lease over at once instead of letting it expire."""
        self._stopping = True
        for task in [self._promotion, *self._transitions]:
            if task is not None:
                task.cancel()
        for future in self._background:
            future.cancel()
        await self._stop_follower()
        if self.positions is not None:
            with contextlib.suppress(Exception):
                await self.link.wait(self.positions.withdraw())
        if self.lease.held:
            with contextlib.suppress(Exception):
                await self.link.wait(self.lease.release())
        self.journal.writable = False

    # -- what the gateways and operators see ---------------------------------------------------

    def _not_leader(self) -> NotLeader:
        """The refusal of a node that does not accept orders, naming the live leader. It never
        names this node (a holder that is not leading yet, or was just fenced or demoted, is
        no leader to send anyone to), nor a holder that stopped renewing: both mean an
        election is due, and the answer says when to try again."""
        view = self.lease.view
        about = f"this node ({self.node_id}) is a {self.role}"
        if view.holder and view.holder != self.node_id and self.lease.holder_live():
            leader = {
                "node": view.holder,
                "epoch": view.epoch,
                "url": view.url,
                "fix": view.fix,
                "binary": view.binary,
            }
            return NotLeader(about, leader)
        unread = self.lease.unread_for()
        if unread > self.lease.ttl:  # the silence may be this node's own, not the holder's
            about += f"; it has not read the lease for {unread:.1f} s, so the leader is unknown here"
        empty = {"node": "", "epoch": 0, "url": "", "fix": "", "binary": ""}
        return NotLeader(about, empty, round(self.lease.election_wait(), 1))

    @property
    def lag(self) -> int:
        """Commands in the stream this node has not applied yet."""
        return max(0, max(self.stream_last_seq, self.journal.last_seq) - self.node.engine.last_seq)

    def status(self) -> dict:
        view = self.lease.view
        return {
            "node": self.node_id,
            "role": str(self.role),
            "leader": view.holder,
            "leader_url": view.url,
            "leader_fix": view.fix,
            "leader_binary": view.binary,
            "leader_live": self.lease.holder_live(),
            "epoch": view.epoch,
            "lease_held": self.lease.held,
            "applied_seq": self.node.engine.last_seq,
            "stream_last_seq": max(self.stream_last_seq, self.journal.last_seq),
            "lag": self.lag,
            "failovers": self.failovers,
            "leader_changes": self.lease.leader_changes,
            "fencing_rejections": self.journal.fenced,
            "failed": self.failed,
            **self._retention_status(),
        }

    def _retention_status(self) -> dict:
        journal = self.journal
        recovered = self.node.recovered
        out = {
            "recovered_from": recovered.snapshot_source or "journal",
            "recovered_snapshot_seq": recovered.snapshot_seq,
            "stream_messages": journal.stream_messages,
            "stream_bytes": journal.size_bytes,
            "stream_first_command_seq": journal.stream_first_command_seq,
        }
        if self.retention is not None:
            newest = self.retention.store.newest
            stats = self.retention.stats
            out["replicated_snapshot_seq"] = newest.seq if newest else 0
            out["purges"] = stats.purges
            out["purged_messages"] = stats.purged_messages
            out["retention_rounds"] = stats.rounds
            out["retention_round_seq"] = stats.last_round_seq
            out["purges_held_back"] = stats.held_back
        if self.positions is not None and self.leading():
            positions = self.positions.last
            out["standbys"] = {
                p.node: {"applied_seq": p.applied_seq, "age_s": round(p.age_s, 2), "live": p.live}
                for p in positions
            }
            out["purge_floor_seq"] = self.positions.floor(positions)
        return out

    def leading(self) -> bool:
        """Leader with a live lease: the only node that replicates snapshots and purges."""
        return self.role == Role.LEADER and self.lease.held

    def promote(self) -> dict:
        """Runbook hook: try to take the lease now (it is taken only if vacant or expired;
        a live leader is never robbed). Returns the status to verify against."""
        self.lease.hold_off(0)
        self.lease.poke()
        return self.status()

    async def step_down(self) -> dict:
        """Runbook hook: the leader stops accepting, finishes its batch in flight and
        releases the lease so a standby takes over without waiting for expiry."""
        if self.role not in (Role.LEADER, Role.CANDIDATE):
            return {**self.status(), "stepped_down": False}
        await self._demote("step down requested")
        await self.link.wait(self.lease.release())
        return {**self.status(), "stepped_down": True}

    def automation_actions(self) -> dict[str, Callable[[], str]]:
        """Runbook automation hooks (alert label `automation=<name>`)."""

        def describe(status: dict) -> str:
            return (
                f"{self.node_id} is {status['role']}; leader {status['leader'] or 'none'} "
                f"(epoch {status['epoch']}), lag {status['lag']} commands"
            )

        def step_down() -> str:
            if self.role != Role.LEADER:
                return f"not stepping down: {describe(self.status())}"
            self._spawn(self.step_down())
            return f"stepping down: {describe(self.status())}"

        return {"promote-standby": lambda: describe(self.promote()), "step-down": step_down}

    # -- following ---------------------------------------------------------------------------

    def _start_follower(self) -> None:
        if self._follower is None or self._follower.done():
            deliver = lambda msgs: self.loop.call_soon_threadsafe(self._apply, msgs)  # noqa: E731
            self._follower = self.link.submit(self.journal.follow(self.applied_stream_seq + 1, deliver))
            self._follower.add_done_callback(self._follower_ended)

    def _follower_ended(self, future: concurrent.futures.Future) -> None:
        """Following ends only by cancellation; anything else (damage in the stream) is
        fatal for this node's right to lead."""
        if not future.cancelled() and future.exception() is not None:
            self.loop.call_soon_threadsafe(self._fail, future.exception())

    async def _stop_follower(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            self._follower = None
            # A round trip through the link's loop, then one through ours: every batch the
            # follower had handed over is applied before we go on.
            await self.link.wait(asyncio.sleep(0))
            await asyncio.sleep(0)

    def _apply(self, msgs: list[StreamMessage]) -> None:
        if self.role == Role.LEADER or self.failed:
            return  # late deliveries of messages already applied
        node = self.node
        for msg in msgs:
            if msg.stream_seq <= self.applied_stream_seq:
                continue
            commands = msg.commands
            if commands is not None and commands[-1].seq > node.engine.last_seq:
                if commands[0].seq != node.engine.last_seq + 1:
                    # Past the leader's retention margin: the batches this node needed were
                    # purged behind a replicated snapshot. A restart recovers from it.
                    self._fail(
                        JournalCorruptError(
                            self.journal.directory,
                            msg.stream_seq,
                            node.engine.last_seq + 1,
                            f"batch {commands[0].seq}..{commands[-1].seq} does not continue "
                            f"the applied state at {node.engine.last_seq} (purged by retention "
                            f"while this node was behind? restart it to recover from the "
                            f"replicated snapshot)",
                        )
                    )
                    return
                results = node.apply_replicated(commands)
                self.service.publish_replicated(commands, results)
            self.applied_stream_seq = msg.stream_seq
            self.journal.note_applied(msg.stream_seq, node.engine.last_seq)
        self._applied.set()

    def _fail(self, exc: Exception) -> None:
        """Crash-only: a standby that cannot follow must never lead."""
        log.critical("cluster: following stopped: %s", exc)
        self.failed = str(exc)
        self.lease.eligible = False
        if self.positions is not None:  # it no longer follows: hold no purge back
            self.link.submit(self.positions.withdraw())
        if self._follower is not None:
            self._follower.cancel()

    async def _watch_tail(self) -> None:
        """The stream's last command seq, for the replication lag, its size, and the newest
        replicated snapshot (on the link's loop)."""
        polls = 0
        while True:
            with contextlib.suppress(Exception):
                self.stream_last_seq = (await self.journal.tail())[1]
            if self.retention is not None and polls % SNAPSHOT_POLL_EVERY == 0:
                with contextlib.suppress(Exception):
                    await self.retention.store.list()
            if self.positions is not None and polls % POSITION_POLL_EVERY == 0:
                try:
                    await self._position_step()
                except Exception as exc:  # NATS away: the next poll tries again
                    log.debug("cluster: position report/read failed: %s", exc)
            polls += 1
            await asyncio.sleep(TAIL_POLL_S)

    async def _position_step(self) -> None:
        """A following standby reports how far it applied; the leader reads everyone's (for
        the metrics and status; retention reads them again before purging)."""
        if self.role == Role.STANDBY and not self.failed:
            await self.positions.report(self.node.engine.last_seq)
        elif self.leading():
            await self.positions.read()

    # -- transitions ---------------------------------------------------------------------------

    def _spawn(self, coro) -> asyncio.Task:
        task = self.loop.create_task(coro)
        self._transitions.add(task)
        task.add_done_callback(self._transitions.discard)
        return task

    def _on_acquired(self) -> None:
        if self.failed:
            return
        if self._promotion is None or self._promotion.done():
            self._promotion = self._spawn(self._promote())

    def _demote_soon(self, reason: str) -> None:
        self._spawn(self._demote(reason))

    def _on_fenced(self) -> None:
        async def recover_or_follow() -> None:
            await self._demote("fenced: another writer appended to the stream")
            # Still ours? Only a write that succeeded proves it (a renewal, compare-and-set):
            # then a write of ours landed late, and catching up puts it right.
            if self.lease.held:
                await self.link.wait(self.lease.renew())
            if self.lease.held:
                self._on_acquired()

        if self.role == Role.LEADER:
            self._spawn(recover_or_follow())

    async def _promote(self) -> None:
        self.role = Role.CANDIDATE
        log.warning("cluster: %s promoting (epoch %d)", self.node_id, self.lease.epoch)
        while True:
            if not self.lease.held:
                await self._demote("lease lost while promoting")
                return
            try:
                tail, _ = await self.link.wait(self.journal.tail())
            except Exception as exc:  # the stream is electing a leader, or NATS is away
                log.warning("cluster: the stream's tail is unknown (%s); retrying", exc)
                await asyncio.sleep(0.2)
                continue
            while self.applied_stream_seq < tail and self.lease.held:
                self._start_follower()
                self._applied.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._applied.wait(), 0.5)
            if not self.lease.held:
                continue
            await self._stop_follower()
            self.journal.note_applied(self.applied_stream_seq, self.node.engine.last_seq)
            marker = json.dumps({"node": self.node_id, "epoch": self.lease.epoch}).encode()
            try:
                self.applied_stream_seq = await self.link.wait(self.journal.write_marker(marker))
                break
            except FencedError:
                log.warning("cluster: the stream moved past %d while promoting; catching up", tail)
            except JournalWriteError as exc:
                log.warning("cluster: epoch marker not written (%s); retrying", exc)
                await asyncio.sleep(0.1)
            self._start_follower()
        if self.node.engine.last_seq != self.journal.last_seq:
            self._fail(
                JournalCorruptError(
                    self.journal.directory,
                    self.applied_stream_seq,
                    self.node.engine.last_seq,
                    f"caught up to {self.node.engine.last_seq}, the stream ends at {self.journal.last_seq}",
                )
            )
            await self.link.wait(self.lease.release(hold_off=float("inf")))
            self.role = Role.STANDBY
            return
        self.node.resume_sequencing()
        self.journal.writable = True
        for stage in self.setup:  # in order: a stage's commands may need the one before
            if missing := stage(self.node.engine):
                self.node.submit(missing)
        self.role = Role.LEADER
        self.failovers += 1
        if self.positions is not None:  # a leader needs nothing kept for itself
            self.link.submit(self.positions.withdraw())
        self.service.refusal = None
        self.service.accepting = True
        log.warning(
            "cluster: %s is the leader (epoch %d) at seq %d, state hash %s",
            self.node_id,
            self.lease.epoch,
            self.node.engine.last_seq,
            state_hash(self.node.engine)[:16],
        )

    async def _demote(self, reason: str) -> None:
        promotion = self._promotion
        if promotion is not None and not promotion.done() and promotion is not asyncio.current_task():
            promotion.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await promotion
        self.service.refusal = self._not_leader
        self.service.accepting = False
        self.journal.writable = False
        if self.role != Role.STANDBY:
            log.warning("cluster: %s demoted to standby: %s", self.node_id, reason)
        self.role = Role.STANDBY
        while self.journal.in_flight:  # the batch being replicated finishes (or fails) first
            await asyncio.sleep(0.002)
        await asyncio.sleep(0)  # the commit loop finishes (refuses) that batch first
        self.node.refusals.ended(f"demoted: {reason}")
        self.applied_stream_seq = max(self.applied_stream_seq, self.journal.expected)
        if not self._stopping:
            self._start_follower()
