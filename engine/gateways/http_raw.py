"""Framing a REST connection's raw bytes into whole requests, strictly, so that a plain new
order its connection cannot admit is refused before aiohttp's parser sees it
(engine/gateways/http_errors.py, `QuietRequestHandler._read`).

At 4x capacity three requests in four are refused, and aiohttp's C parser was most of a
refusal's cost (its RawRequestMessage, CIMultiDict of headers, yarl URL and payload
StreamReader): 5.4 us a refusal parsed, 2.9 us from raw bytes (scripts/bench_rest_refusal.py;
BENCHMARKS.md "Session 10: REST refusals before the parser"). What is skipped here must be
exactly one request as llhttp would frame it, so the grammar is a conservative subset of
HTTP/1.1 (request smuggling is a disagreement on framing): origin-form target, `HTTP/1.1`,
CRLF lines of ASCII only, token header names, at most one Content-Length of digits, no
Transfer-Encoding, Expect, Upgrade or Connection other than keep-alive, a head within
aiohttp's line limits. A request outside it (`DOUBT`) ends the framing of its connection:
from there on every byte goes to the parser, as before. A request inside it that is not a
keyed plain new order, or that aiohttp has a rule for (a repeated header, no Host), is
framed, so the framing goes on, and handed to the parser. A connection's `Framer` frames an
order whose head is its last order's but for the Content-Length and traceparent values
without the regular expressions (a client sends the same head each time).
"""

from __future__ import annotations

import itertools
import re
from typing import Final

# aiohttp's max_line_size and max_field_size (8190 each): a head within it is within both.
HEAD_MAX: Final = 8190
ORDER_LINE: Final = b"POST /v1/orders HTTP/1.1\r\n"  # engine.gateways.http_shed.ORDERS_PATH
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_LINE = _TOKEN + rb":[\t -~]*\r\n"
_REQUEST_LINE = rb"(?:GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) /[!-~]* HTTP/1\.1\r\n"
_HEAD = re.compile(_REQUEST_LINE + rb"(?:" + _LINE + rb"){0,100}\r\n")
# A head not yet complete that may still become one: whole lines of the grammar, then a
# partial line of the characters a head holds (a bare LF or a control byte is a doubt now,
# not after the client has sent the rest).
_PARTIAL = re.compile(rb"(?:" + _REQUEST_LINE + rb"(?:" + _LINE + rb")*)?[\t\r -~]*\Z")
# A head's header lines, once _HEAD has checked them: (name, value without its leading
# blanks; aiohttp strips the trailing ones too: RawHeaders strips both as a value is read).
_PAIRS = re.compile(rb"\n([^:]*):[ \t]*([^\r]*)")
# Headers that change how llhttp frames a request or what aiohttp does with the connection
# (any Connection but keep-alive), or that aiohttp has a rule for (a 400, a body to decode).
_FRAMING = frozenset((b"transfer-encoding", b"expect", b"upgrade"))
_SPECIAL = _FRAMING | {b"connection", b"content-encoding", b"sec-websocket-key1"}

INCOMPLETE: Final = -1  # the head is not all here yet (and may still be in the grammar)
DOUBT: Final = -2  # outside the grammar: the parser frames it, and all that follows


class RawHeaders:
    """A raw request's headers, by lower-case name, answering `get` as a CIMultiDict would
    (str values), so engine.gateways.http_auth.api_key_in and http_context.trace_id_in read
    them as they read a parsed request's."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[bytes, bytes]) -> None:
        self.fields = fields

    def get(self, name: str, default=None):
        value = self.fields.get(name.lower().encode())
        return default if value is None else value.strip(b" \t").decode()

    def __contains__(self, name: str) -> bool:
        return name.lower().encode() in self.fields


def frame(data: bytes, pos: int) -> tuple[int, RawHeaders | None]:
    """The request starting at `pos` of `data`: (its end, which may lie past the data when
    its body is not all here, and its RawHeaders if it is a plain new order, else None), or
    (INCOMPLETE or DOUBT, None)."""
    m = _HEAD.match(data, pos, pos + HEAD_MAX + 2)
    if m is None:
        whole = data.find(b"\r\n\r\n", pos, pos + HEAD_MAX + 2) >= 0
        if not whole and len(data) - pos <= HEAD_MAX and _PARTIAL.match(data, pos) is not None:
            return INCOMPLETE, None
        return DOUBT, None
    head_end = m.end()
    pairs = _PAIRS.findall(data, pos, head_end)
    names, values = zip(*pairs, strict=True) if pairs else ((), ())
    fields = dict(zip(b"\n".join(names).lower().split(b"\n"), values, strict=True))
    repeated = len(fields) != len(pairs)  # a header repeated: the parser's rule (a 400 for some)
    special = not _SPECIAL.isdisjoint(fields)
    if special or repeated:
        lowered = [name.lower() for name in names]
        if lowered.count(b"content-length") > 1 or lowered.count(b"connection") > 1:
            return DOUBT, None  # two lengths (llhttp refuses them), or a list of options
        if not _FRAMING.isdisjoint(fields):
            return DOUBT, None
        option = fields.get(b"connection")
        if option is not None and option.rstrip(b" \t").lower() != b"keep-alive":
            return DOUBT, None  # close or upgrade: the parser decides what follows
    end = head_end
    digits = fields.get(b"content-length")
    if digits is not None:
        digits = digits.rstrip(b" \t")
        if not digits.isdigit() or len(digits) > 12:
            return DOUBT, None
        end += int(digits)
    if repeated or b"host" not in fields or not data.startswith(ORDER_LINE, pos):
        return end, None  # not a plain new order, or the parser's rule answers it
    if special and (b"content-encoding" in fields or b"sec-websocket-key1" in fields):
        return end, None
    return end, RawHeaders(fields)


# The header values that differ from one order to the next of a client sending the same head:
# its body's length and its trace context.
_VARIABLE = (b"\ncontent-length:", b"\ntraceparent:")
_VALUE_CHARS = bytes([9, *range(0x20, 0x7F)])  # what a header value may hold (_LINE)
_VALUE_MAX = 128  # a variable value longer than this: the full framing


class Framer:
    """`frame` for one connection, remembering the head of the last plain new order framed:
    a client sends the same head each time but for its Content-Length and traceparent
    values, so a request matching that head's fixed bytes around two values of the grammar
    is the same request to llhttp but for them, framed without the regular expressions and
    header table (the cost of framing, at 4x capacity, where most orders are refused)."""

    __slots__ = ("first", "rest", "fields")

    def __init__(self) -> None:
        self.first = b""  # the head's bytes up to its first variable value (b"": none learned)
        # each variable value's header (lower case) and the head's bytes after that value
        self.rest: list[tuple[bytes, bytes]] = []
        self.fields: dict[bytes, bytes] = {}

    def frame(self, data: bytes, pos: int) -> tuple[int, RawHeaders | None]:
        if self.first and data.startswith(self.first, pos):
            found = self._same_head(data, pos)
            if found is not None:
                return found
        end, headers = frame(data, pos)
        if headers is not None:
            self._learn(data, pos, headers.fields)
        return end, headers

    def _same_head(self, data: bytes, pos: int) -> tuple[int, RawHeaders] | None:
        """The request at `pos` (which starts with the head's first fixed bytes), if the rest
        of it is the head's too."""
        p = pos + len(self.first)
        fields = self.fields.copy()
        size = 0
        for name, after in self.rest:
            q = data.find(b"\r", p, p + _VALUE_MAX)
            if q < 0 or not data.startswith(after, q):
                return None
            value = data[p:q]
            if name == b"content-length":
                if not value.isdigit() or len(value) > 12:
                    return None
                size = int(value)
            elif value.translate(None, _VALUE_CHARS):
                return None  # a byte outside the grammar (a bare LF among them)
            fields[name] = value
            p = q + len(after)
        if p - pos > HEAD_MAX:
            return None
        return p + size, RawHeaders(fields)

    def _learn(self, data: bytes, pos: int, fields: dict[bytes, bytes]) -> None:
        head_end = data.index(b"\r\n\r\n", pos) + 4
        head = data[pos:head_end]
        low = head.lower()
        spans = []
        for name in _VARIABLE:
            i = low.find(name)
            if i >= 0:
                start = i + len(name)
                while head[start] in b" \t":  # the blanks before a value stay fixed
                    start += 1
                spans.append((start, head.index(b"\r", start), name[1:-1]))
        spans.sort()
        spans.append((len(head), len(head), b""))
        self.first, self.rest = b"", []
        for (start, end, name), (after, _, _) in itertools.pairwise(spans):
            if start == end:  # an empty value: not a variable one
                return
            self.rest.append((name, head[end:after]))
        self.first = head[: spans[0][0]] if len(spans) > 1 else head
        self.fields = fields
