"""The on-disk layout of journal segments.

    segment  := segment-header record*
    segment-header := b"LOOMJRNL" | version u16 | first_seq u64 | crc32 u32     (22 bytes)
    record   := b"LMJ1" | payload_len u32 | first_seq u64 | count u32 | crc32 u32 | payload
    payload  := [BatchMeta, [command * count]]   (msgpack; commands tagged, array-like;
                engine/core/commands.py)

One record holds one group-commit batch. Its `BatchMeta` carries the stage timings that
`loom trace` shows without a trace backend: when each submission was received and, for
the batch journaled just before, how long its journal write+fsync, match and ack took
(measured only once that batch was done, so they travel in the next record).

The CRC (zlib CRC-32) covers the record header fields after the magic and the payload, so
a flipped bit anywhere is caught. The magic lets a scanner tell a torn tail (nothing valid
after the damage) from damage in the middle (a valid record follows). Segment versions name
their payload schema; `UPCASTERS` turns an older schema's decoded payload into the current
one, and a segment only ever holds records of its own version.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from engine.core.commands import Command, ReplayCommand

FORMAT_VERSION = 2  # 1: payload = [command * count], no BatchMeta
SEGMENT_MAGIC = b"LOOMJRNL"
SEGMENT_HEADER = struct.Struct("<8sHQI")
RECORD_MAGIC = b"LMJ1"
RECORD_HEADER = struct.Struct("<4sIQII")
MAX_PAYLOAD = 256 * 1024 * 1024  # a larger length field is damage, not data


class BatchMeta(msgspec.Struct, array_like=True, gc=False):
    """Timings of a group-commit batch, journaled with it; never read by replay.
    All zero/empty when unknown (a batch written outside the service, or an old record)."""

    stamped_ns: int = 0  # epoch ns when the batch was formed, just before sequencing
    counts: list[int] = []  # commands per submission, in batch order
    waits_ns: list[int] = []  # per submission: gateway receive -> batch formed
    prev_first_seq: int = 0  # the batch the durations below belong to (the previous record)
    prev_journal_ns: int = 0  # its journal write + fdatasync
    prev_match_ns: int = 0  # its match (the engine applying every command)
    prev_ack_ns: int = 0  # its ack (answers to submitters, listeners)


NO_META = BatchMeta()


def _upcast_v1(raw: list) -> list:
    return [[], raw]  # no timings were journaled


# version -> function taking that version's decoded payload (plain lists) to version + 1.
UPCASTERS: dict[int, Callable[[list], list]] = {1: _upcast_v1}

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(tuple[BatchMeta, list[Command]])


class _SkippedMeta(msgspec.Struct, array_like=True, gc=False):
    """A BatchMeta left undecoded (replay never reads it)."""


_replay_decoder = msgspec.msgpack.Decoder(tuple[_SkippedMeta, list[ReplayCommand]])


def encode_segment_header(first_seq: int, version: int = FORMAT_VERSION) -> bytes:
    body = struct.pack("<HQ", version, first_seq)
    return SEGMENT_HEADER.pack(SEGMENT_MAGIC, version, first_seq, zlib.crc32(body))


def decode_segment_header(data: bytes) -> tuple[int, int] | None:
    """(version, first_seq), or None when the header is damaged."""
    if len(data) < SEGMENT_HEADER.size:
        return None
    magic, version, first_seq, crc = SEGMENT_HEADER.unpack_from(data)
    if magic != SEGMENT_MAGIC or zlib.crc32(struct.pack("<HQ", version, first_seq)) != crc:
        return None
    return version, first_seq


def record_crc(payload, first_seq: int, count: int) -> int:
    """A record's checksum: its header fields (length, first seq, count), then its payload."""
    return zlib.crc32(payload, zlib.crc32(struct.pack("<IQI", len(payload), first_seq, count)))


def encode_record(commands, meta: BatchMeta | None = None) -> bytes:
    payload = _encoder.encode((meta or NO_META, commands))
    first_seq = commands[0].seq
    crc = record_crc(payload, first_seq, len(commands))
    return RECORD_HEADER.pack(RECORD_MAGIC, len(payload), first_seq, len(commands), crc) + payload


@dataclass(frozen=True, slots=True)
class RecordInfo:
    offset: int
    first_seq: int
    count: int
    payload: memoryview

    @property
    def end(self) -> int:
        return self.offset + RECORD_HEADER.size + len(self.payload)

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1


def parse_record(buf: memoryview, offset: int) -> RecordInfo | str:
    """The record at `offset`, or a description of why there is none."""
    if len(buf) - offset < RECORD_HEADER.size:
        return "incomplete record header"
    magic, length, first_seq, count, crc = RECORD_HEADER.unpack_from(buf, offset)
    if magic != RECORD_MAGIC:
        return "bad record magic"
    if length > MAX_PAYLOAD or count == 0:
        return "impossible record length"
    start = offset + RECORD_HEADER.size
    if start + length > len(buf):
        return "record runs past the end of the file"
    payload = buf[start : start + length]
    if record_crc(payload, first_seq, count) != crc:
        return "checksum mismatch"
    return RecordInfo(offset, first_seq, count, payload)


def next_valid_record(buf: memoryview, offset: int) -> RecordInfo | None:
    """The first valid record that starts after `offset` (used to tell damage in the middle
    of a segment from a torn tail)."""
    data = buf.obj if isinstance(buf.obj, bytes | bytearray) else bytes(buf)
    pos = offset + 1
    while True:
        pos = data.find(RECORD_MAGIC, pos)
        if pos < 0:
            return None
        found = parse_record(buf, pos)
        if isinstance(found, RecordInfo):
            return found
        pos += 1


def decode_for_replay(payload: memoryview | bytes, version: int = FORMAT_VERSION) -> list:
    """The record's commands as replay reads them: new orders and cancels as their prefixes
    `ReplayNewOrder` and `ReplayCancel` (engine/core/commands.py), the rest as `decode_record`
    gives them. Older versions decode as `decode_record` does."""
    if version == FORMAT_VERSION:
        return _replay_decoder.decode(payload)[1]
    return decode_record(payload, version)[1]


def decode_record(payload: memoryview | bytes, version: int = FORMAT_VERSION) -> tuple[BatchMeta, list]:
    """The record's (BatchMeta, commands), older versions upcast to the current one."""
    if version == FORMAT_VERSION:
        return _decoder.decode(payload)
    if version > FORMAT_VERSION:
        raise ValueError(f"journal format version {version} is newer than this build ({FORMAT_VERSION})")
    raw = msgspec.msgpack.decode(payload)
    while version < FORMAT_VERSION:
        upcast = UPCASTERS.get(version)
        if upcast is None:
            raise ValueError(f"no upcaster from journal format version {version}")
        raw = upcast(raw)
        version += 1
    return msgspec.convert(raw, tuple[BatchMeta, list[Command]])
