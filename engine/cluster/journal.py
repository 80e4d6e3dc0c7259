"""The replicated journal: the Journal protocol on a JetStream stream (R3, fsync always).

    stream LOOM_JOURNAL, subjects:
      <prefix>.batch   one group-commit batch per message, the bytes of
                       engine/journal/format.encode_record (CRC and all)
      <prefix>.epoch   a leader's fence: written once on promotion, read past by readers

Every publish carries `Nats-Expected-Last-Sequence` = the last stream sequence this writer
has seen. A deposed leader's next append is therefore refused by the stream itself
(err_code 10071) as soon as anyone else has written, which surfaces as FencedError. The
PubAck of an R3 stream means a majority has the batch on disk: that is the durability point
before any order in the batch is acknowledged.

One message per batch keeps the stream sequence and the command sequence apart: headers
name each batch's first and last command seq, so a reader can find the batch holding any
seq by bisecting stream sequences.

An append whose PubAck never came (a timeout, the connection lost) has an unknown outcome:
the batch may be in the stream. The journal keeps it as unresolved, appends nothing after
it, and `resolve` reads the stream to decide (see `_decide`): the batch landed (the journal
moves past it, the node applies it), or a void message took its place (it never can land).

Retention (engine/cluster/retention.py) purges the batches a replicated snapshot covers, so
the stream may begin past seq 1: `first_command_seq` says where, reads that would need a
purged batch raise RecoveryGapError instead of skipping it, and every batch carries the
venue id (the ts of the venue's first command, the prefix of derived trace ids) in a
header, because the first command itself may be gone.
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js import api

from engine.cluster.link import NatsLink
from engine.core.commands import Command
from engine.journal import (
    JournalCorruptError,
    JournalError,
    JournalWriteError,
    OutcomeUnknownError,
    RecoveryGapError,
)
from engine.journal.format import FORMAT_VERSION, BatchMeta, decode_record, encode_record, parse_record

log = logging.getLogger("loom.cluster.journal")

DEFAULT_STREAM = "LOOM_JOURNAL"
DEFAULT_PREFIX = "loom.journal"
WRONG_LAST_SEQUENCE = 10071  # JSStreamWrongLastSequenceErrF
NO_MESSAGE = 10037  # JSNoMessageFoundErr (vs. 10059, the stream itself not found)
FIRST_SEQ = "Loom-First-Seq"
LAST_SEQ = "Loom-Last-Seq"
FORMAT = "Loom-Format"  # the record's journal format version, for the upcasters
VENUE = "Loom-Venue"  # ts of the venue's first command (it may have been purged)
EXPECTED_LAST = "Nats-Expected-Last-Sequence"
RESOLVE_RETRY_S = 0.05  # between reads of the stream while an append's outcome is unknown
FETCH = 512  # messages per pull


class FencedError(JournalWriteError):
    """Someone else wrote to the stream since this writer last looked: it is no longer (or
    not yet) the leader, and must not append."""


@dataclass(frozen=True, slots=True)
class _Unknown:
    """A batch published without a PubAck: what deciding its fate needs."""

    first: int
    last: int
    record: bytes  # the message body: a landed copy is byte for byte this
    expected: int  # the stream seq it was fenced on: it can only ever land at expected + 1
    void: bytes  # the body of the void message that closes its slot (unique to this batch)


@dataclass(frozen=True, slots=True)
class StreamMessage:
    """One message read from the stream: a batch (commands) or an epoch marker (None)."""

    stream_seq: int
    commands: list | None
    marker: bytes = b""
    meta: BatchMeta | None = None  # the batch's timings (format v2), for the order lookup
    consumer_seq: int = 0  # the reader's delivery number: gapless unless a delivery was lost


class DeliveryLost(Exception):
    """A reader's consumer sent messages that never arrived (a pull consumer without acks
    loses what it sends while the client reconnects to another server): read again from
    the last message received."""


def _received(msgs: list[StreamMessage], delivered: int) -> int:
    """The consumer seq of the last of `msgs`, checking none was skipped since `delivered`."""
    for msg in msgs:
        if msg.consumer_seq != delivered + 1:
            raise DeliveryLost(
                f"delivery {delivered + 1} lost (got {msg.consumer_seq}, stream seq {msg.stream_seq})"
            )
        delivered = msg.consumer_seq
    return delivered


NOT_WRITABLE = (
    nats.errors.Error,  # timeouts, no responders, connection closed
    asyncio.TimeoutError,
    TimeoutError,
    OSError,
)


class NatsJournal:
    """The journal on a JetStream stream. `link` is shared with the lease (one connection
    per node); `owns_link` closes it with the journal."""

    remote = True  # the service awaits append_async instead of blocking its loop
    fsync = False  # no local fdatasync to time (publish→PubAck is its own histogram)
    last_fsync_ns = 0
    torn_tail_truncations = 0
    segments: tuple = ()  # no segment files: recovery replays from seq 1
    fsync_ns: tuple = ()

    def __init__(
        self,
        link: NatsLink,
        stream: str = DEFAULT_STREAM,
        prefix: str = DEFAULT_PREFIX,
        replicas: int = 3,
        publish_timeout: float = 2.0,
        owns_link: bool = False,
    ) -> None:
        self.link = link
        self.stream = stream
        self.batch_subject = f"{prefix}.batch"
        self.epoch_subject = f"{prefix}.epoch"
        self.void_subject = f"{prefix}.void"  # closes the slot of a batch whose PubAck was lost
        self.all_subjects = f"{prefix}.>"
        self.replicas = replicas
        self.publish_timeout = publish_timeout
        self.owns_link = owns_link
        self.directory = f"nats stream {stream}"  # what errors name in place of a path
        self.on_publish: Callable[[float], None] | None = None  # publish→PubAck seconds
        self.on_fenced: Callable[[], None] | None = None  # called on the link's loop
        self.fenced = 0
        self.write_errors = 0
        self.writable = True  # False on a cluster standby: appends are refused before publishing
        self.in_flight = 0  # appends awaiting their PubAck
        self._inject_errno: int | None = None
        self._inject_at = "publish"
        self._unknown: _Unknown | None = None  # a batch whose outcome is not known yet
        self._closed = False
        self._consumers = 0
        self._venue = 0
        # The stream as last seen by `tail` (scrape-time gauges): messages, first command seq.
        self.stream_messages = 0
        self.stream_first_command_seq = 1
        opened = link.call_retrying(self._open, f"opening stream {stream}")
        self.expected, self._last_seq, self.size_bytes = opened

    # -- set-up ------------------------------------------------------------------------------

    async def _open(self) -> tuple[int, int, int]:
        js = self.link.js
        config = api.StreamConfig(
            name=self.stream,
            subjects=[self.all_subjects],
            storage=api.StorageType.FILE,
            num_replicas=self.replicas,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.NEW,
            max_msg_size=-1,
            duplicate_window=0,
            allow_direct=False,  # reads go to the stream leader: never a stale tail
        )
        try:
            info = await js.add_stream(config)
        except nats.js.errors.BadRequestError:  # exists with another config: use it as it is
            info = await js.stream_info(self.stream)
        tail = info.state.last_seq
        self.stream_messages = info.state.messages
        last = await self._last_batch()
        return tail, (last[2] if last else 0), info.state.bytes

    async def _last_batch(self) -> tuple[int, int, int] | None:
        """(stream seq, first seq, last seq) of the newest batch, or None."""
        msg = await self._batch_msg()
        return None if msg is None else (msg.seq, *_seq_range(msg.headers, msg.data))

    async def _batch_msg(self, at_or_after: int | None = None):
        """The first batch message at or after stream seq `at_or_after`, or the newest one
        (None): None when there is no such message."""
        try:
            if at_or_after is None:
                return await self.link.js.get_msg(self.stream, subject=self.batch_subject)
            return await self.link.js.get_msg(
                self.stream, seq=at_or_after, subject=self.batch_subject, next=True
            )
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code == NO_MESSAGE:
                return None
            raise

    # -- retention: where the stream begins, the venue id, purging -------------------------------

    def first_command_seq(self) -> int:
        """The seq of the first command the stream still holds (last_seq + 1 when it holds no
        batch): recovery needs a snapshot at first_command_seq - 1 or later."""
        return self.link.call(self._first_command_seq())

    async def _first_command_seq(self) -> int:
        info = await self.link.js.stream_info(self.stream)
        msg = await self._batch_msg(max(info.state.first_seq, 1))
        return self._last_seq + 1 if msg is None else _seq_range(msg.headers, msg.data)[0]

    @property
    def venue_id(self) -> int:
        """The ts of the venue's first command (0 while the stream holds none)."""
        if not self._venue and self._last_seq:
            self._venue = self.link.call(self._read_venue())
        return self._venue

    async def _read_venue(self) -> int:
        last = await self._batch_msg()
        if last is None:
            return 0
        if last.headers and VENUE in last.headers:
            return int(last.headers[VENUE])
        # Batches from before the header: the stream is then never purged, so seq 1 is here.
        first = await self._batch_msg(1)
        rec = parse_record(memoryview(first.data), 0)
        if isinstance(rec, str) or rec.first_seq != 1:
            problem = "the venue's first command is not in the stream"
            raise JournalCorruptError(self.directory, first.seq, 1, problem)
        version = int(first.headers[FORMAT]) if first.headers and FORMAT in first.headers else 2
        return decode_record(rec.payload, version)[1][0].ts

    async def purge_covered(
        self, snapshot_seq: int, keep_commands: int, keep_after: int | None = None
    ) -> int:
        """Remove the batches a snapshot at `snapshot_seq` makes unnecessary, keeping every
        batch that holds a seq above snapshot_seq - keep_commands, or above `keep_after`
        (the slowest live standby's applied seq), and always the batch that holds
        snapshot_seq itself (so the stream never loses its last batch, whose headers name
        the tail and the venue). Returns how many messages went.

        The caller must have made the snapshot durable elsewhere first (the replicated
        snapshot store): from here on, it alone holds the state before the stream begins."""
        if snapshot_seq > self._last_seq:
            raise JournalError(
                f"snapshot at seq {snapshot_seq} is beyond the stream's last seq {self._last_seq}"
            )
        boundary = min(snapshot_seq - 1, snapshot_seq - keep_commands)  # the last seq that may go
        if keep_after is not None:
            boundary = min(boundary, keep_after)
        if boundary < 1:
            return 0
        last = await self._batch_msg()
        if last is None or not (last.headers and VENUE in last.headers):
            return 0  # the venue id would go with the first command: not before a batch names it
        info = await self.link.js.stream_info(self.stream)
        keep_from = await self._first_batch_reaching(boundary + 1, info.state.first_seq, last.seq)
        if keep_from <= info.state.first_seq:
            return 0
        # JetStream's purge {"seq": N} removes every message below stream seq N (batches and
        # epoch markers): each is older than the batch at N.
        resp = await self.link.nc.request(
            f"$JS.API.STREAM.PURGE.{self.stream}", json.dumps({"seq": keep_from}).encode(), timeout=5.0
        )
        body = json.loads(resp.data)
        if "error" in body:
            refused = body["error"]
            raise JournalError(f"purge of {self.stream} below stream seq {keep_from} refused: {refused}")
        purged = int(body.get("purged", 0))
        # The gauges move now, not at the next tail poll.
        kept = await self._batch_msg(keep_from)
        if kept is not None:
            self.stream_first_command_seq = _seq_range(kept.headers, kept.data)[0]
        after = await self.link.js.stream_info(self.stream)
        self.stream_messages, self.size_bytes = after.state.messages, after.state.bytes
        log.info(
            "purged %d messages of %s below stream seq %d (commands through %d; snapshot at %d)",
            purged,
            self.stream,
            keep_from,
            boundary,
            snapshot_seq,
        )
        return purged

    # -- the Journal interface ---------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def append(self, commands: Sequence[Command], meta: BatchMeta | None = None) -> int:
        record = self._prepare(commands, meta)
        if record is None:
            return 0
        try:
            return self.link.call(self._publish(record, commands[0], commands[-1].seq), None)
        except RuntimeError as exc:  # the link's loop is gone
            raise JournalWriteError(f"journal write failed: {exc}") from exc

    async def append_async(self, commands: Sequence[Command], meta: BatchMeta | None = None) -> int:
        """append, awaited from another event loop (the service's commit loop)."""
        record = self._prepare(commands, meta)
        if record is None:
            return 0
        self.in_flight += 1
        try:
            return await self.link.wait(self._publish(record, commands[0], commands[-1].seq))
        finally:
            self.in_flight -= 1

    def read(self, from_seq: int = 1) -> Iterator[Command]:
        for _meta, batch in self.read_records(from_seq):
            yield from batch

    def read_batches(self, from_seq: int = 1) -> Iterator[list[Command]]:
        for _meta, batch in self.read_records(from_seq):
            yield batch

    def read_records(self, from_seq: int = 1) -> Iterator[tuple[BatchMeta, list[Command]]]:
        """(BatchMeta, commands) of the batches holding seq >= from_seq (the first trimmed
        to start there), as the stream stood when reading began."""
        if self._closed:
            raise JournalError("journal is closed")
        plan = self.link.call(self._plan_read(max(from_seq, 1)))
        if plan is None:
            return
        start, end, last_seq = plan
        # Someone may have appended since this journal opened (a leader, while a standby
        # recovers): what the stream holds is durable, so last_seq moves up to it.
        self._last_seq = max(self._last_seq, last_seq)
        expected = from_seq
        for msg in self.messages(start, end, self.batch_subject):
            commands = msg.commands
            if commands[-1].seq < expected:
                continue
            if commands[0].seq > expected:  # purged (retention) before or while we read
                raise RecoveryGapError(
                    self.directory,
                    expected,
                    commands[0].seq,
                    f"the stream continues at seq {commands[0].seq} (stream seq {msg.stream_seq})",
                )
            if commands[0].seq < expected:
                commands = commands[expected - commands[0].seq :]
            expected = commands[-1].seq + 1
            yield msg.meta, commands

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.owns_link:
            self.link.close()

    def fail_writes(self, errno: int | None = errno_mod.EIO, at: str = "publish") -> None:
        """Fault injection until called again with None: every append fails `at`
        "publish" (refused before publishing, with `errno`), "request" (the publish is lost
        on its way and its PubAck never comes: the batch did not land) or "ack" (the batch
        lands, its PubAck is lost)."""
        if at not in ("publish", "request", "ack"):
            raise ValueError(f"fail_writes at {at!r}: expected publish, request or ack")
        self._inject_errno = errno
        self._inject_at = at

    @property
    def unresolved(self) -> tuple[int, int] | None:
        """(first, last) seq of the batch whose outcome is unknown, or None."""
        u = self._unknown
        return None if u is None else (u.first, u.last)

    def note_applied(self, stream_seq: int, last_seq: int) -> None:
        """A follower applied messages up to `stream_seq` (commands up to `last_seq`): the
        position a promoted writer continues from. A batch of this node's whose outcome was
        unknown is the stream's to decide from here on (the follower applies it if it landed)."""
        self.expected = stream_seq
        self._last_seq = last_seq
        self._unknown = None

    # -- writing -----------------------------------------------------------------------------

    def _prepare(self, commands: Sequence[Command], meta: BatchMeta | None = None) -> bytes | None:
        if self._closed:
            raise JournalError("journal is closed")
        if not commands:
            return None
        if self._unknown is not None:  # nothing is published: a true refusal
            raise JournalWriteError(
                f"journal write of seq {commands[0].seq}..{commands[-1].seq} refused: the outcome of "
                f"seq {self._unknown.first}..{self._unknown.last} is not resolved yet"
            )
        expected = self._last_seq + 1
        for i, cmd in enumerate(commands):
            if cmd.seq != expected + i:
                raise JournalError(
                    f"batch seq {commands[0].seq}..{commands[-1].seq} ({len(commands)} commands) "
                    f"does not continue the journal at {self._last_seq}: command {i} has seq "
                    f"{cmd.seq}, expected {expected + i}"
                )
        if not self.writable:
            raise FencedError("this node is not the leader: the journal is read-only here")
        if self._inject_errno is not None and self._inject_at == "publish":
            self.write_errors += 1
            raise JournalWriteError(
                f"journal write of seq {expected}..{commands[-1].seq} failed: "
                f"{os.strerror(self._inject_errno)}"
            )
        return encode_record(commands, meta)

    async def _publish(self, record: bytes, head: Command, last: int) -> int:
        first = head.seq
        if not self._venue:
            self._venue = head.ts if first == 1 else await self._read_venue()
        headers = {
            EXPECTED_LAST: str(self.expected),
            FIRST_SEQ: str(first),
            LAST_SEQ: str(last),
            FORMAT: str(FORMAT_VERSION),
            VENUE: str(self._venue),
        }
        started = time.perf_counter()
        what = f"seq {first}..{last}"
        try:
            if self._inject_errno is not None and self._inject_at != "publish":
                ack = await self._publish_losing_ack(record, headers)
            else:
                ack = await self._publish_fenced(self.batch_subject, record, headers, what)
        except OutcomeUnknownError:
            void = json.dumps({"void": [first, last], "id": uuid.uuid4().hex}).encode()
            self._unknown = _Unknown(first, last, record, self.expected, void)
            raise
        if self.on_publish is not None:
            self.on_publish(time.perf_counter() - started)
        self.expected = ack.seq
        self._last_seq = last
        self.size_bytes += len(record)
        self.stream_messages += 1
        return len(record)

    async def _publish_losing_ack(self, record: bytes, headers: dict) -> api.PubAck:
        """fail_writes at "request" or "ack": a PubAck that never comes, after the batch
        was (ack) or was not (request) really published."""
        if self._inject_at == "ack":
            await self.link.js.publish(
                self.batch_subject, record, timeout=self.publish_timeout, headers=headers
            )
        raise OutcomeUnknownError(f"journal write failed: PubAck lost (injected at {self._inject_at})")

    # -- an append whose outcome is unknown ----------------------------------------------------

    def resolve(self, within: float) -> bool:
        """Decide the unresolved batch's fate, trying for up to `within` seconds: True it
        landed (the journal now ends with it), False it never will. Raises
        OutcomeUnknownError when the stream cannot be read meanwhile, FencedError when
        another writer's message took the batch's place (it never will land either)."""
        return self.link.call(self._resolve(within), None)

    async def resolve_async(self, within: float) -> bool:
        """resolve, awaited from another event loop (the service's commit loop). Counted in
        `in_flight`: a demotion waits for it, so the node has applied a batch found landed
        before its follower starts after the journal's tail."""
        self.in_flight += 1
        try:
            return await self.link.wait(self._resolve(within))
        finally:
            self.in_flight -= 1

    async def _resolve(self, within: float) -> bool:
        u = self._unknown
        if u is None:
            raise JournalError("no append has an unknown outcome")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            try:
                return await asyncio.wait_for(self._decide(u), max(deadline - loop.time(), 0.001))
            except NOT_WRITABLE as exc:
                if loop.time() >= deadline:
                    raise OutcomeUnknownError(
                        f"the outcome of journal write of seq {u.first}..{u.last} is still unknown: "
                        f"the stream cannot be read ({type(exc).__name__} {exc})"
                    ) from None
                await asyncio.sleep(RESOLVE_RETRY_S)

    async def _decide(self, u: _Unknown) -> bool:
        """Whether the batch `u` landed, settled for good.

        Every copy of the batch (the publish itself, a copy the NATS client still holds in
        its reconnect buffer and sends later, or one queued on a paused server) carries
        Nats-Expected-Last-Sequence = u.expected, so it can only ever be stored at stream
        seq u.expected + 1, and only while that slot is free. Reading that the stream ends
        at u.expected is therefore not enough to refuse: a copy may still arrive and take
        the slot (the next batch, fenced on the same u.expected, would then be refused as
        fenced, and the refused batch would stand in the stream). So this writer takes the
        slot itself with a void message fenced the same way: once the void is stored, no
        copy of the batch can ever land; if the void is refused as fenced, something took
        the slot first, and it is read. Whichever of the two took the slot decides, and
        both are recognised byte for byte (the void's body is unique to this batch)."""
        js = self.link.js
        while True:
            info = await js.stream_info(self.stream)
            tail = info.state.last_seq
            if tail < u.expected:
                raise JournalError(
                    f"the stream {self.stream} ends at {tail}, before stream seq {u.expected} "
                    f"this writer saw acknowledged"
                )
            if tail == u.expected:
                try:
                    ack = await js.publish(
                        self.void_subject,
                        u.void,
                        timeout=self.publish_timeout,
                        headers={EXPECTED_LAST: str(u.expected)},
                    )
                except nats.js.errors.APIError as exc:
                    if exc.err_code == WRONG_LAST_SEQUENCE:
                        continue  # the slot was taken meanwhile: read what took it
                    raise
                return self._settle(u, ack.seq, landed=False)
            msg = await js.get_msg(self.stream, seq=u.expected + 1)
            if msg.subject == self.batch_subject and msg.data == u.record:
                return self._settle(u, msg.seq, landed=True)
            if msg.subject == self.void_subject and msg.data == u.void:
                return self._settle(u, msg.seq, landed=False)
            # Another writer's message (a new leader's epoch marker): the batch can never
            # land, and this writer is fenced.
            self._unknown = None
            raise self._fenced(
                f"journal write of seq {u.first}..{u.last} did not land: another writer's message "
                f"took stream seq {u.expected + 1} (subject {msg.subject})"
            )

    def _settle(self, u: _Unknown, stream_seq: int, landed: bool) -> bool:
        self._unknown = None
        self.expected = stream_seq
        self.stream_messages += 1
        if landed:
            self._last_seq = u.last
            self.size_bytes += len(u.record)
        # INFO: the node's refusal log has the one WARNING for an outcome it answered unknown.
        log.info(
            "journal write of seq %d..%d, whose PubAck was lost, %s at stream seq %d",
            u.first,
            u.last,
            "landed" if landed else "did not land: its slot is void",
            stream_seq,
        )
        return landed

    async def write_marker(self, body: bytes) -> int:
        """A promoted leader's fence: one message after the tail it caught up to. From here
        on nobody whose view of the stream is older can append. Returns its stream seq."""
        ack = await self._publish_fenced(
            self.epoch_subject, body, {EXPECTED_LAST: str(self.expected)}, "epoch"
        )
        self.expected = ack.seq
        return ack.seq

    def _fenced(self, message: str) -> FencedError:
        """Count and report that another writer moved the stream on; the error to raise."""
        self.fenced += 1
        if self.on_fenced is not None:
            self.on_fenced()
        return FencedError(message)

    async def _publish_fenced(self, subject: str, payload: bytes, headers: dict, what: str) -> api.PubAck:
        try:
            return await self.link.js.publish(subject, payload, timeout=self.publish_timeout, headers=headers)
        except nats.js.errors.APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise self._fenced(
                    f"journal write of {what} fenced: the stream moved past {self.expected} "
                    f"(another leader wrote): {exc.description}"
                ) from None
            self.write_errors += 1
            raise JournalWriteError(f"journal write of {what} refused: {exc}") from None
        except NOT_WRITABLE as exc:
            # No PubAck: the message may yet land (or have landed). Never guessed: a batch
            # is kept unresolved until `resolve` reads the stream (an epoch marker is
            # simply written again, fenced on the same tail).
            raise OutcomeUnknownError(
                f"journal write of {what} has an unknown outcome: no PubAck ({type(exc).__name__} {exc})"
            ) from None

    # -- reading -----------------------------------------------------------------------------

    async def _plan_read(self, from_seq: int) -> tuple[int, int, int] | None:
        """(first stream seq to read, stream seq of the last batch, its last command seq)
        for commands from `from_seq`, or None when there is nothing to read."""
        last = await self._last_batch()
        if last is None or last[2] < from_seq:
            return None
        info = await self.link.js.stream_info(self.stream)
        return await self._first_batch_reaching(from_seq, info.state.first_seq, last[0]), last[0], last[2]

    async def _first_batch_reaching(self, from_seq: int, lo: int, hi: int) -> int:
        """The stream seq to read from for commands from `from_seq` on: the first batch
        between stream seqs lo..hi that ends at or past it (hi: a batch that does)."""
        lo = max(lo, 1)
        # Bisect on "the first batch at or after stream seq p ends at or past from_seq",
        # which is false and then true as p grows; start reading at the first true p.
        while lo < hi:
            mid = (lo + hi) // 2
            msg = await self.link.js.get_msg(self.stream, seq=mid, subject=self.batch_subject, next=True)
            if _seq_range(msg.headers, msg.data)[1] >= from_seq:
                hi = mid
            else:
                lo = msg.seq + 1
        return lo

    def messages(self, start: int, end: int, subjects: str) -> Iterator[StreamMessage]:
        """Stream messages start..end on `subjects`, decoded (a synchronous generator)."""
        next_seq = start
        while True:
            sub = self.link.call(self._subscribe(next_seq, subjects))
            delivered = 0
            try:
                while True:
                    batch = self.link.call(self._fetch(sub))
                    try:
                        delivered = _received(batch, delivered)
                    except DeliveryLost as exc:
                        log.warning("journal reader resubscribing at stream seq %d: %s", next_seq, exc)
                        break
                    for msg in batch:
                        if msg.stream_seq > end:
                            return
                        yield msg
                        next_seq = msg.stream_seq + 1
                        if msg.stream_seq == end:
                            return
            finally:
                self.link.submit(self._unsubscribe(sub))

    async def _subscribe(self, start: int, subjects: str):
        self._consumers += 1
        name = f"reader-{os.getpid()}-{id(self):x}-{self._consumers}"
        config = api.ConsumerConfig(
            name=name,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(start, 1),
            ack_policy=api.AckPolicy.NONE,
            filter_subject=subjects,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=10.0,  # a reader that vanished is cleaned up by the server
        )
        await self.link.js.add_consumer(self.stream, config)
        return await self.link.js.pull_subscribe_bind(stream=self.stream, name=name)

    async def _unsubscribe(self, sub) -> None:
        try:
            await sub.unsubscribe()
            await self.link.js.delete_consumer(self.stream, sub._consumer)
        except Exception:  # the server removes idle consumers by itself
            log.debug("could not remove reader consumer", exc_info=True)

    async def _fetch(self, sub, timeout: float = 2.0) -> list[StreamMessage]:
        for attempt in range(1, 40):
            try:
                msgs = await sub.fetch(FETCH, timeout=timeout)
                break
            except nats.js.errors.ServiceUnavailableError:
                # A consumer just created on another server: its interest takes a moment
                # to reach ours ("no responders"). Not an error yet.
                await asyncio.sleep(0.005 * attempt)
        else:
            msgs = await sub.fetch(FETCH, timeout=timeout)
        return [self._decode(m.metadata.sequence, m.subject, m.headers, m.data) for m in msgs]

    def _decode(self, seqs, subject: str, headers: dict | None, data: bytes) -> StreamMessage:
        stream_seq = seqs.stream
        if subject != self.batch_subject:
            return StreamMessage(stream_seq, None, data, consumer_seq=seqs.consumer)
        rec = parse_record(memoryview(data), 0)
        if isinstance(rec, str):
            raise JournalCorruptError(self.directory, stream_seq, None, f"message {stream_seq}: {rec}")
        # A message without the header predates it: format 2, the first replicated one.
        version = int(headers[FORMAT]) if headers and FORMAT in headers else 2
        meta, commands = decode_record(rec.payload, version)
        return StreamMessage(stream_seq, commands, meta=meta, consumer_seq=seqs.consumer)

    async def follow(self, start: int, deliver: Callable[[list[StreamMessage]], None]) -> None:
        """Every message from stream seq `start` on, forever (a standby's feed), handed to
        `deliver` in order. Runs on the link's loop until cancelled; survives a server
        going away by resubscribing after the last message delivered, and a delivery lost
        in a reconnect (seen as a gap in the consumer's delivery numbers, or, on a quiet
        stream, as the consumer having sent more than arrived) the same way."""
        next_seq = start
        while True:
            try:
                sub = await self._subscribe(next_seq, self.all_subjects)
            except (*NOT_WRITABLE, nats.js.errors.Error):
                await asyncio.sleep(0.2)
                continue
            try:
                idle = 0
                delivered = 0
                while True:
                    try:
                        msgs = await self._fetch(sub, timeout=1.0)
                    except (TimeoutError, nats.errors.TimeoutError):
                        idle += 1
                        if idle % 3 == 0:  # a quiet stream, or a consumer lost with its server?
                            info = await self.link.js.consumer_info(self.stream, sub._consumer)
                            sent = (info.delivered.consumer_seq or 0) if info.delivered else 0
                            if sent > delivered:
                                raise DeliveryLost(
                                    f"the consumer sent {sent} messages, {delivered} arrived"
                                ) from None
                        continue
                    idle = 0
                    if msgs:
                        delivered = _received(msgs, delivered)
                        next_seq = msgs[-1].stream_seq + 1
                        deliver(msgs)
            except asyncio.CancelledError:
                await self._unsubscribe(sub)
                raise
            except (*NOT_WRITABLE, nats.js.errors.Error, DeliveryLost) as exc:
                log.warning("journal follower resubscribing at stream seq %d: %s", next_seq, exc)
                await self._unsubscribe(sub)
                await asyncio.sleep(0.1)

    async def tail(self) -> tuple[int, int]:
        """(stream last seq, last command seq in the stream); notes the stream's size and
        where it begins for the scrape-time gauges."""
        info = await self.link.js.stream_info(self.stream)
        last = await self._last_batch()
        first = await self._batch_msg(max(info.state.first_seq, 1)) if last is not None else None
        self.stream_messages = info.state.messages
        self.size_bytes = info.state.bytes
        self.stream_first_command_seq = (
            _seq_range(first.headers, first.data)[0] if first is not None else self._last_seq + 1
        )
        return info.state.last_seq, (last[2] if last else 0)


def _seq_range(headers: dict | None, data: bytes) -> tuple[int, int]:
    """(first, last) command seq of a batch message: from its headers, else its record."""
    if headers and FIRST_SEQ in headers:
        return int(headers[FIRST_SEQ]), int(headers[LAST_SEQ])
    rec = parse_record(memoryview(data), 0)
    if isinstance(rec, str):
        raise JournalCorruptError(DEFAULT_STREAM, 0, None, rec)
    return rec.first_seq, rec.last_seq
