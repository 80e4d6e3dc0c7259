"""A sans-I/O FIX 4.4 tag=value codec, in the manner of python-hyper/h11.

Input: `FixParser.receive_data(bytes)` accepts data in chunks of any size and
`FixParser.next_event()` returns the next framed `FixMessage`, a `ParseError` naming what
was wrong, or `NEED_DATA`. The parser never raises: whatever the bytes, it reports the
problem, throws the broken frame away and resynchronises on the next ``8=FIX.4.4<SOH>``.

Output: `encode_message(...)` builds a complete message (BeginString, BodyLength, the
standard header, the body and the CheckSum trailer). The caller passes SendingTime in;
nothing in this module reads a clock or touches a socket.

Values are decoded as Latin-1, so every byte string round-trips exactly.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

SOH = b"\x01"
BEGIN_STRING = "FIX.4.4"
BEGIN_MARKER = b"8=FIX.4.4\x01"
MAX_MESSAGE_BYTES = 64 * 1024
_MAX_LENGTH_DIGITS = 6  # a BodyLength under 64 KiB never needs more
_TRAILER_BYTES = 7  # "10=" + 3 digits + SOH

# Header tags every inbound message must carry (after 8 and 9): MsgType, SenderCompID,
# TargetCompID, MsgSeqNum, SendingTime.
REQUIRED_HEADER_TAGS = (35, 49, 56, 34, 52)
HEADER_TAGS = frozenset({8, 9, 35, 49, 56, 34, 43, 52, 97, 122, 115, 128, 50, 57, 142, 143})

_POSITIVE_INT = re.compile(r"[1-9][0-9]{0,17}")


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()
"""`next_event()` result when no complete message is buffered."""


class ParseErrorCode(StrEnum):
    GARBAGE = "garbage"  # bytes that are not a FIX.4.4 message start
    BAD_BODY_LENGTH = "bad_body_length"  # missing, non-numeric or wrong BodyLength (9)
    BAD_CHECKSUM = "bad_checksum"  # the CheckSum (10) does not match the bytes
    OVERSIZED = "oversized"  # the message would exceed MAX_MESSAGE_BYTES
    BAD_HEADER = "bad_header"  # a required header tag is missing, out of place or invalid
    BAD_FIELD = "bad_field"  # a body field is not tag=value (bad tag, no '=', empty value)


@dataclass(frozen=True, slots=True)
class ParseError:
    """A problem with the input. `fields` holds what could be read of a correctly framed
    message (so a session can still name the MsgSeqNum in a Reject); `ref_tag` is the tag
    at fault, when there is one."""

    code: ParseErrorCode
    text: str
    raw: bytes = b""  # the bytes thrown away (at most the first 256)
    fields: tuple[tuple[int, str], ...] = ()
    ref_tag: int = 0

    def get(self, tag: int, default: str | None = None) -> str | None:
        for t, v in self.fields:
            if t == tag:
                return v
        return default

    @property
    def msg_type(self) -> str:
        return self.get(35) or ""

    @property
    def seq_num(self) -> int | None:
        value = self.get(34)
        return int(value) if value is not None and is_positive_int(value) else None


class FixMessage:
    """An ordered list of (tag, value) fields with dict-style access to the first value of
    each tag. Values are strings; `raw` holds the bytes a parsed message came from."""

    __slots__ = ("_index", "_repeated", "fields", "raw")

    def __init__(self, fields: Iterable[tuple[int, str]] = (), raw: bytes = b"") -> None:
        self.fields: list[tuple[int, str]] = []
        self._index: dict[int, str] = {}
        self._repeated: set[int] | None = None  # tags that appear more than once
        self.raw = raw
        for tag, value in fields:
            self.append(tag, value)

    @classmethod
    def parsed(cls, fields: list[tuple[int, str]], raw: bytes) -> FixMessage:
        """A message of fields already (int, str), indexed at C speed (the parser's; field by
        field through `append`, and `count` walking every field per tag read, were a sixth
        of the node's FIX reading: py-spy, BENCHMARKS.md "Session 8: WebSocket and FIX
        under overload")."""
        msg = cls.__new__(cls)
        msg.fields = fields
        msg.raw = raw
        msg._index = index = dict(reversed(fields))  # the first value of each tag
        msg._repeated = None
        if len(index) < len(fields):
            counts = Counter(t for t, _ in fields)
            msg._repeated = {t for t, n in counts.items() if n > 1}
        return msg

    def append(self, tag: int, value: object) -> FixMessage:
        text = value if isinstance(value, str) else str(value)
        self.fields.append((tag, text))
        if tag in self._index:
            if self._repeated is None:
                self._repeated = set()
            self._repeated.add(tag)
        else:
            self._index[tag] = text
        return self

    def __getitem__(self, tag: int) -> str:
        return self._index[tag]

    def get(self, tag: int, default: str | None = None) -> str | None:
        return self._index.get(tag, default)

    def __contains__(self, tag: object) -> bool:
        return tag in self._index

    def get_all(self, tag: int) -> list[str]:
        return [v for t, v in self.fields if t == tag]

    def count(self, tag: int) -> int:
        if self._repeated is None or tag not in self._repeated:
            return 1 if tag in self._index else 0
        return sum(1 for t, _ in self.fields if t == tag)

    def __iter__(self) -> Iterator[tuple[int, str]]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FixMessage) and self.fields == other.fields

    __hash__ = None  # type: ignore[assignment]

    @property
    def msg_type(self) -> str:
        return self._index.get(35, "")

    @property
    def seq_num(self) -> int:
        return int(self._index[34])

    def body(self) -> list[tuple[int, str]]:
        """The fields after the standard header, without the trailer."""
        return [(t, v) for t, v in self.fields if t not in HEADER_TAGS and t != 10]

    def __repr__(self) -> str:
        return "FixMessage(" + "|".join(f"{t}={v}" for t, v in self.fields) + ")"


class FixParser:
    """Frames and parses inbound FIX 4.4 messages. Never raises from `receive_data` or
    `next_event`; memory stays bounded by `max_message_bytes` plus one read."""

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.max_message_bytes = max_message_bytes
        self._buf = bytearray()
        self._skipping = False  # inside a run of rejected bytes: drop quietly to the next start

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_event(self) -> FixMessage | ParseError | _NeedData:
        try:
            return self._next_event()
        except Exception as exc:  # a parser bug must not take the session down
            dropped = bytes(self._buf[:256])
            self._buf.clear()
            self._skipping = True
            return ParseError(ParseErrorCode.GARBAGE, f"internal parser error: {exc!r}", dropped)

    def events(self) -> Iterator[FixMessage | ParseError]:
        """Every event that the buffered data yields."""
        while True:
            event = self.next_event()
            if event is NEED_DATA:
                return
            yield event  # type: ignore[misc]

    # -- framing ---------------------------------------------------------------------

    def _discard(self, count: int) -> bytes:
        dropped = bytes(self._buf[: min(count, 256)])
        del self._buf[:count]
        return dropped

    def _reject_frame(self, code: ParseErrorCode, text: str) -> ParseError:
        """Throw away the broken frame's BeginString and everything up to the next message
        start (quietly, even if that start only arrives later)."""
        buf = self._buf
        nxt = buf.find(BEGIN_MARKER, 1)
        dropped = self._discard(nxt if nxt > 0 else len(buf) - _kept_prefix(buf))
        self._skipping = nxt <= 0
        return ParseError(code, text, dropped)

    def _next_event(self) -> FixMessage | ParseError | _NeedData:
        buf = self._buf
        start = buf.find(BEGIN_MARKER)
        if start != 0:
            drop = start if start > 0 else len(buf) - _kept_prefix(buf)
            if drop <= 0:
                return NEED_DATA
            quiet = self._skipping
            dropped = self._discard(drop)
            self._skipping = start < 0
            if quiet:
                return self._next_event() if start > 0 else NEED_DATA
            return ParseError(ParseErrorCode.GARBAGE, _garbage_text(dropped, drop), dropped)
        self._skipping = False

        pos = len(BEGIN_MARKER)
        head = bytes(buf[pos : pos + 2])
        if head != b"9="[: len(head)]:
            return self._reject_frame(
                ParseErrorCode.BAD_BODY_LENGTH, "BodyLength (9) must follow BeginString"
            )
        if len(head) < 2:
            return NEED_DATA
        digits_at = pos + 2
        window = bytes(buf[digits_at : digits_at + _MAX_LENGTH_DIGITS + 1])
        soh = window.find(SOH)
        digits = window if soh < 0 else window[:soh]
        if digits and not digits.isdigit():
            return self._reject_frame(
                ParseErrorCode.BAD_BODY_LENGTH, f"BodyLength (9) is not a number: {_show(digits)}"
            )
        if soh < 0:
            if len(window) > _MAX_LENGTH_DIGITS:
                return self._reject_frame(
                    ParseErrorCode.OVERSIZED,
                    f"BodyLength (9) {_show(digits)}... exceeds the {self.max_message_bytes}-byte limit",
                )
            return NEED_DATA
        if not digits:
            return self._reject_frame(ParseErrorCode.BAD_BODY_LENGTH, "BodyLength (9) is empty")
        end9 = digits_at + soh
        body_len = int(digits)
        body_start = end9 + 1
        body_end = body_start + body_len
        total = body_end + _TRAILER_BYTES
        if total > self.max_message_bytes:
            return self._reject_frame(
                ParseErrorCode.OVERSIZED,
                f"message of {total} bytes exceeds the {self.max_message_bytes}-byte limit",
            )
        if len(buf) < total:
            return NEED_DATA
        if buf.find(SOH + BEGIN_MARKER, body_start - 1, body_end + len(BEGIN_MARKER)) >= 0:
            return self._reject_frame(
                ParseErrorCode.BAD_BODY_LENGTH,
                "a new message starts inside this one: it was cut short or its BodyLength (9) is wrong",
            )
        trailer = bytes(buf[body_end:total])
        if not (
            trailer.startswith(b"10=")
            and trailer[3:6].isdigit()
            and trailer[6:7] == SOH
            and (body_len == 0 or buf[body_end - 1] == 1)
        ):
            return self._reject_frame(
                ParseErrorCode.BAD_BODY_LENGTH,
                f"BodyLength (9) {body_len} does not end where the CheckSum (10) field starts",
            )
        declared = int(trailer[3:6])
        actual = sum(buf[:body_end]) & 0xFF
        if declared != actual:
            nxt = buf.find(BEGIN_MARKER, 1, total)
            dropped = self._discard(nxt if nxt > 0 else total)
            return ParseError(
                ParseErrorCode.BAD_CHECKSUM,
                f"CheckSum (10) is {declared:03d} but the message sums to {actual:03d}",
                dropped,
            )
        raw = bytes(buf[:total])
        del buf[:total]
        return _parse_frame(raw, body_start, body_end, body_len, declared)


def _parse_frame(
    raw: bytes, body_start: int, body_end: int, body_len: int, checksum: int
) -> FixMessage | ParseError:
    fields: list[tuple[int, str]] = [(8, BEGIN_STRING), (9, str(body_len))]
    problem: tuple[ParseErrorCode, str, int] | None = None
    # Decoded once, then split (Latin-1 maps each byte to one character: the same fields
    # as splitting the bytes, at a fraction of the cost per field; issue 13).
    parts = raw[body_start : body_end - 1].decode("latin-1").split("\x01") if body_len else []
    for i, part in enumerate(parts, start=3):
        tag_text, eq, value = part.partition("=")
        if not eq or not _is_tag(tag_text):
            if problem is None:
                shown = _show(part.encode("latin-1"))
                what = "has no '='" if not eq else f"has an invalid tag {_show(tag_text.encode('latin-1'))}"
                problem = (ParseErrorCode.BAD_FIELD, f"field {i} {shown} {what}", 0)
            continue
        tag = int(tag_text)
        if not value:
            if problem is None:
                problem = (ParseErrorCode.BAD_FIELD, f"tag {tag} has no value", tag)
            continue
        fields.append((tag, value))
    fields.append((10, f"{checksum:03d}"))
    if problem is None:
        problem = _header_problem(fields)
    if problem is not None:
        code, text, ref_tag = problem
        return ParseError(code, text, raw[:256], tuple(fields), ref_tag)
    return FixMessage.parsed(fields, raw)


def _header_problem(fields: list[tuple[int, str]]) -> tuple[ParseErrorCode, str, int] | None:
    if len(fields) < 4 or fields[2][0] != 35:
        present = any(t == 35 for t, _ in fields)
        text = "MsgType (35) must be the third field" if present else "required header tag 35 is missing"
        return ParseErrorCode.BAD_HEADER, text, 35
    tags = {t for t, _ in fields}
    for tag in REQUIRED_HEADER_TAGS:
        if tag not in tags:
            return ParseErrorCode.BAD_HEADER, f"required header tag {tag} is missing", tag
    seq = next(v for t, v in fields if t == 34)
    if not is_positive_int(seq):
        return ParseErrorCode.BAD_HEADER, f"MsgSeqNum (34) must be a positive integer, got {seq!r}", 34
    return None


def _is_tag(text: str) -> bool:
    """A tag number: [1-9][0-9]{0,8}, checked without a regex call per field."""
    return 0 < len(text) < 10 and text.isascii() and text.isdigit() and text[0] != "0"


def is_positive_int(text: str) -> bool:
    """ASCII digits without a leading zero, small enough for a 64-bit counter."""
    return _POSITIVE_INT.fullmatch(text) is not None


def _kept_prefix(buf: bytearray) -> int:
    """How many trailing bytes of `buf` might begin a message start (keep them)."""
    for n in range(min(len(BEGIN_MARKER) - 1, len(buf)), 0, -1):
        if buf.endswith(BEGIN_MARKER[:n]):
            return n
    return 0


def _garbage_text(dropped: bytes, count: int) -> str:
    if dropped.startswith(b"8="):
        version = dropped[2:].split(SOH, 1)[0][:16]
        return f"unsupported BeginString {_show(version)} (only {BEGIN_STRING}): {count} bytes discarded"
    return f"{count} bytes of garbage before 8={BEGIN_STRING}: {_show(dropped[:32])}"


def _show(data: bytes) -> str:
    return repr(data.replace(SOH, b"|").decode("latin-1"))


# -- encoding -------------------------------------------------------------------------


def _text(tag: int, value: object) -> str:
    """A field's value as text, checked: non-empty and free of SOH."""
    if value.__class__ is str:
        text = value
    elif isinstance(value, bool):
        text = "Y" if value else "N"
    elif isinstance(value, int):
        text = str(int(value))
    else:
        text = value if isinstance(value, str) else str(value)
    if not text or "\x01" in text:
        raise ValueError(f"tag {tag}: a FIX value must be non-empty and free of SOH, got {text!r}")
    return text


def encode_fields(fields: Iterable[tuple[int, object]]) -> bytes:
    """A complete message from its fields (header and body, in order, without 8, 9 and
    10): adds BeginString and BodyLength in front and the CheckSum behind. Built as one
    string and encoded once (ExecutionReports are most of what FIX sends under overload;
    issue 13)."""
    body = "".join([f"{tag:d}={_text(tag, value)}\x01" for tag, value in fields if tag not in (8, 9, 10)])
    data = body.encode("latin-1")
    msg = b"%s9=%d\x01%s" % (BEGIN_MARKER, len(data), data)
    return msg + b"10=%03d\x01" % (sum(msg) & 0xFF)


def encode(message: FixMessage) -> bytes:
    return encode_fields(message.fields)


def encode_message(
    msg_type: str,
    sender_comp_id: str,
    target_comp_id: str,
    seq_num: int,
    sending_time: str,
    body: Iterable[tuple[int, object]] = (),
    *,
    poss_dup: bool = False,
    orig_sending_time: str | None = None,
) -> bytes:
    """One outbound message. `sending_time` comes from the caller (see `utc_timestamp`)."""
    header: list[tuple[int, object]] = [
        (35, msg_type),
        (49, sender_comp_id),
        (56, target_comp_id),
        (34, seq_num),
    ]
    if poss_dup:
        header.append((43, "Y"))
    header.append((52, sending_time))
    if orig_sending_time is not None:
        header.append((122, orig_sending_time))
    return encode_fields([*header, *body])


def utc_timestamp(epoch_seconds: float) -> str:
    """FIX UTCTimestamp with milliseconds, e.g. 20240102-03:04:05.678."""
    return utc_timestamp_ns(int(epoch_seconds * 1_000_000_000))


def utc_timestamp_ns(epoch_ns: int) -> str:
    ms = epoch_ns // 1_000_000
    return f"{_utc_second(ms // 1000)}.{ms % 1000:03d}"


@functools.lru_cache(maxsize=4)
def _utc_second(epoch_s: int) -> str:
    """A second's "YYYYmmdd-HH:MM:SS" (every message of a second shares it)."""
    return f"{datetime.fromtimestamp(epoch_s, tz=UTC):%Y%m%d-%H:%M:%S}"
