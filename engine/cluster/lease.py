"""The leader lease: one key in a JetStream KV bucket (R3), compare-and-set on revisions.

    value    {"node": id, "epoch": E, "url": the holder's HTTP base, "fix": "host:port",
             "binary": "host:port"} (each protocol's endpoint, "" when its listener is off:
             what a standby names in its NOT_LEADER answers)
    acquire  create() on an absent or deleted key, or update(last=R) on a key whose revision
             R has not changed for a whole TTL (the holder stopped renewing)
    renew    update(last=my revision) every `renew_every`; refused = someone took it
    epoch    the revision of the acquiring write: grows with every change of holder

Expiry is judged by each node's own monotonic clock, not by the server: a candidate starts
its TTL when it *sees* a revision, which is after the holder sent it, and the holder gives
the lease up `margin` before TTL has passed since it sent its last successful renewal. So
the holder always stops before anyone can take over, without synchronised clocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors

from engine.cluster.link import NatsLink

log = logging.getLogger("loom.cluster.lease")

DEFAULT_BUCKET = "loom_lease"
DEFAULT_KEY = "leader"
PROMOTION_S = 0.2  # what a new holder's catch-up and epoch marker typically take (a retry-after)


@dataclass(frozen=True)
class LeaseView:
    """The lease as last observed: holder "" when vacant."""

    holder: str = ""
    epoch: int = 0
    revision: int = 0
    url: str = ""
    fix: str = ""  # host:port of the holder's FIX listener ("" when off or not advertised)
    binary: str = ""  # host:port of its binary listener


class Lease:
    def __init__(
        self,
        link: NatsLink,
        node_id: str,
        url: str = "",
        bucket: str = DEFAULT_BUCKET,
        key: str = DEFAULT_KEY,
        ttl: float = 1.2,
        renew_every: float = 0.3,
        poll_every: float = 0.1,
        replicas: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.link = link
        self.node_id = node_id
        self.url = url
        self.endpoints: dict[str, str] = {}  # "fix"/"binary" -> host:port, advertised with url
        self.key = key
        self.ttl = ttl
        self.renew_every = renew_every
        self.poll_every = poll_every
        self.margin = ttl / 4  # the holder stops this long before a candidate may take over
        self.clock = clock
        self.held = False
        self.epoch = 0
        self.revision = 0  # of this node's last write while holding
        self.view = LeaseView()
        self.eligible = True  # may this node take the lease (False: still recovering)
        self.renewals = {"ok": 0, "failed": 0}
        self.leader_changes = 0
        self.on_acquired: Callable[[], None] | None = None  # called on the link's loop
        self.on_lost: Callable[[str], None] | None = None
        self._renewed_at = 0.0  # when the last successful renewal was *sent*
        self._seen = (0, 0.0)  # (revision, when first seen) for expiry
        self.read_at = self.clock()  # when the lease key was last read
        self._hold_off_until = 0.0
        self._wake = asyncio.Event()
        self.kv = link.key_value(bucket, replicas)

    # -- the loop (on the link's event loop) -------------------------------------------------

    async def run(self) -> None:
        self._wake = asyncio.Event()
        while True:
            try:
                if self.held:
                    await self.renew()
                else:
                    await self.observe(try_acquire=True)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not silently end leadership decisions
                log.exception("lease loop step failed")
            pause = self.renew_every if self.held else self.poll_every
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause)
            self._wake.clear()

    def poke(self) -> None:
        """Run the next step now (promote, step-down); thread-safe."""
        self.link.loop.call_soon_threadsafe(self._wake.set)

    def _value(self) -> bytes:
        value = {"node": self.node_id, "epoch": self.epoch, "url": self.url, **self._advertised()}
        return json.dumps(value).encode()

    def _advertised(self) -> dict[str, str]:
        return {"fix": self.endpoints.get("fix", ""), "binary": self.endpoints.get("binary", "")}

    def unread_for(self) -> float:
        """Seconds since the lease key was last read (a holder's silence may be this node's
        own: NATS unreachable, the KV stream electing)."""
        return self.clock() - self.read_at

    def holder_live(self) -> bool:
        """Has the holder in view renewed within a TTL, by this node's clock? False while
        nobody holds the lease, and once the holder stopped renewing (an election is due)."""
        return bool(self.view.holder) and (self.held or self.clock() - self._seen[1] < self.ttl)

    def election_wait(self) -> float:
        """Seconds until a new holder should be accepting, as this node sees it: its own
        promotion (it holds the lease), the next poll (vacant, or only its own stale view),
        or the rest of the silent holder's TTL; each plus a promotion's catch-up and fencing."""
        if self.held:
            return PROMOTION_S
        if not self.view.holder or self.view.holder == self.node_id:
            return self.poll_every + PROMOTION_S
        return max(0.0, self.ttl - (self.clock() - self._seen[1])) + PROMOTION_S

    def _observe_holder(self, view: LeaseView) -> None:
        if view.holder and view.holder != self.view.holder:
            self.leader_changes += 1
            log.info("lease: held by %s (epoch %d)", view.holder, view.epoch)
        self.view = view

    async def observe(self, try_acquire: bool = False) -> LeaseView:
        """Read the key; with `try_acquire`, take the lease when vacant or expired."""
        now = self.clock()
        try:
            entry = await self.kv.get(self.key)
        except nats.js.errors.KeyNotFoundError:  # absent, deleted (stepped down) or purged
            self.read_at = now
            self._observe_holder(LeaseView())
            if try_acquire and self._may_acquire(now):
                await self._take(None)
            return self.view
        except (nats.errors.Error, TimeoutError):
            return self.view  # the KV stream is electing a leader, or we are disconnected
        self.read_at = now
        raw = json.loads(entry.value or b"{}")
        view = LeaseView(
            raw.get("node", ""),
            raw.get("epoch") or entry.revision,
            entry.revision,
            raw.get("url", ""),
            raw.get("fix", ""),
            raw.get("binary", ""),
        )
        self._observe_holder(view)
        if entry.revision != self._seen[0]:
            self._seen = (entry.revision, now)
        elif try_acquire and now - self._seen[1] >= self.ttl and self._may_acquire(now):
            log.warning(
                "lease: %s stopped renewing (revision %d for %.2f s)",
                view.holder,
                view.revision,
                now - self._seen[1],
            )
            await self._take(entry.revision)
        return self.view

    def _may_acquire(self, now: float) -> bool:
        return self.eligible and now >= self._hold_off_until

    async def _take(self, last: int | None) -> None:
        sent = self.clock()
        self.epoch = 0  # not known until the write's revision comes back
        try:
            if last is None:
                revision = await self.kv.create(self.key, self._value())
            else:
                revision = await self.kv.update(self.key, self._value(), last=last)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.errors.Error, TimeoutError) as exc:
            log.info("lease: not taken (%s)", type(exc).__name__)
            return
        self.held = True
        self.epoch = self.revision = revision
        self._renewed_at = sent
        self._observe_holder(LeaseView(self.node_id, revision, revision, self.url, **self._advertised()))
        log.warning("lease: acquired by %s, epoch %d", self.node_id, revision)
        if self.on_acquired is not None:
            self.on_acquired()

    async def renew(self) -> None:
        sent = self.clock()
        try:
            self.revision = await asyncio.wait_for(
                self.kv.update(self.key, self._value(), last=self.revision), self.renew_every
            )
        except nats.js.errors.KeyWrongLastSequenceError:
            self.renewals["failed"] += 1
            self._lose("the lease was taken or released elsewhere")
            return
        except (nats.errors.Error, TimeoutError) as exc:
            self.renewals["failed"] += 1
            if self.clock() >= self._renewed_at + self.ttl - self.margin:
                self._lose(f"no renewal for {self.clock() - self._renewed_at:.2f} s ({type(exc).__name__})")
            return
        self.renewals["ok"] += 1
        self._renewed_at = sent
        self._seen = (self.revision, sent)

    def _lose(self, reason: str) -> None:
        if not self.held:
            return
        self.held = False
        self.view = LeaseView()  # whoever holds it next is seen on the next poll
        log.warning("lease: lost by %s (epoch %d): %s", self.node_id, self.epoch, reason)
        if self.on_lost is not None:
            self.on_lost(reason)

    async def release(self, hold_off: float | None = None) -> None:
        """Give the lease up (step down) and stay out of the race for `hold_off` seconds
        (default 3 TTL) so another node takes it."""
        self._hold_off_until = self.clock() + (3 * self.ttl if hold_off is None else hold_off)
        if not self.held:
            return
        revision = self.revision
        self._lose("stepped down")
        try:
            await self.kv.delete(self.key, last=revision)
        except (nats.errors.Error, TimeoutError):
            log.warning("lease: could not delete the key; it expires after %.1f s instead", self.ttl)

    def hold_off(self, seconds: float) -> None:
        self._hold_off_until = self.clock() + seconds
