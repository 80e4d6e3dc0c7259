"""Framing a REST connection's raw bytes into whole requests, strictly, so that a plain new
order its connection cannot admit is refused before aiohttp's parser sees it
(engine/gateways/http_errors.py, `QuietRequestHandler._read`).

At 4x capacity three requests in four are refused, and aiohttp's C parser cost ~5.5 us each
(its RawRequestMessage, CIMultiDict of headers, yarl URL and payload StreamReader) against
~1 us for the rule and the refusal (BENCHMARKS.md "Session 10: REST refusals before the
parser"). What is skipped here must be exactly one request as llhttp would frame it, so the
grammar is a conservative subset of HTTP/1.1 (request smuggling is a disagreement on
framing): origin-form target, `HTTP/1.1`, CRLF lines of ASCII only, token header names, at
most one Content-Length of digits, no Transfer-Encoding, Expect, Upgrade or Connection other
than keep-alive, a head within aiohttp's line limits. A request outside it (`DOUBT`) ends
the framing of its connection: from there on every byte goes to the parser, as before. A
request inside it that is not a keyed plain new order (or whose key or trace id headers are
odd: repeated, trailing blanks) is framed, so the framing goes on, and handed to the parser.
"""

from __future__ import annotations

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
_NAMES = re.compile(rb"\n([^:]*):")
# Headers that change how llhttp frames a request or what aiohttp does with the connection.
_FRAMING = (b"\ntransfer-encoding:", b"\nexpect:", b"\nupgrade:")
# aiohttp answers 400 for a repeated Host (or other singleton), a missing Host and
# Sec-WebSocket-Key1, and decodes a Content-Encoding body (which may fail): its rules.
_PARSER_RULES = frozenset((b"content-encoding", b"sec-websocket-key1"))
_REFUSAL = (b"x-api-key", b"authorization", b"traceparent")  # what PipelineShed reads

INCOMPLETE: Final = -1  # the head is not all here yet (and may still be in the grammar)
DOUBT: Final = -2  # outside the grammar: the parser frames it, and all that follows


class RawHeaders(dict):
    """The headers a refusal reads (`_REFUSAL`), by lower-case name, answering `get` as a
    CIMultiDict would, so engine.gateways.http_auth.api_key_in and
    http_context.trace_id_in read them as they read a parsed request's."""

    def get(self, name, default=None):
        return dict.get(self, name.lower(), default)

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, name.lower())


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
    low = data[pos:head_end].lower()
    for name in _FRAMING:
        if name in low:
            return DOUBT, None
    i = low.find(b"\nconnection:")
    if i >= 0 and (low.count(b"\nconnection:") > 1 or _value(low, i + 12) != b"keep-alive"):
        return DOUBT, None  # close, upgrade or a list: the parser decides what follows
    size = 0
    i = low.find(b"\ncontent-length:")
    if i >= 0:
        if low.find(b"\ncontent-length:", i + 1) >= 0:
            return DOUBT, None
        digits = _value(low, i + 16)
        if not digits.isdigit() or len(digits) > 12:
            return DOUBT, None
        size = int(digits)
    end = head_end + size
    if not data.startswith(ORDER_LINE, pos):
        return end, None
    names = _NAMES.findall(low)
    unique = set(names)
    if len(unique) != len(names) or b"host" not in unique or not unique.isdisjoint(_PARSER_RULES):
        return end, None  # a header the parser has a rule for (a 400 for some): its answer
    headers = RawHeaders()
    for name in _REFUSAL:
        i = low.find(b"\n" + name + b":")
        if i >= 0:
            start = pos + i + len(name) + 2
            value = data[start : data.index(b"\r", start)].lstrip(b" \t")
            if value.endswith((b" ", b"\t")):
                return end, None  # whether llhttp keeps trailing blanks: not decided here
            headers[name.decode()] = value.decode()
    return end, headers


def _value(low: bytes, start: int) -> bytes:
    """The value of the header line whose colon ends at `start`, without its blanks."""
    return low[start : low.index(b"\r", start)].strip(b" \t")
