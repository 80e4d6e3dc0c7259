"""Trace and span ids: W3C `traceparent` parsing and formatting, fresh ids, and the ids
derived from the journal (an order's trace from its seq, its root span from its order id).

Pure functions with no I/O or process state, kept apart from the trace shipper
(telemetry/tracing.py) so the node (engine/exchange.py), the order history and the gateways
name traces without importing the machinery that exports them.
"""

from __future__ import annotations

import random
import re

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def new_trace_id() -> str:
    """A random, non-zero W3C trace id: 32 lowercase hex digits."""
    while True:
        bits = random.getrandbits(128)
        if bits:
            return f"{bits:032x}"


_M64 = (1 << 64) - 1


def derived_trace_id(venue: int, seq: int) -> str:
    """The trace id of an order that came without one: a function of the venue (the
    timestamp of the journal's first command) and the order's sequence number, both in
    the journal. Costs nothing per order (computed only when asked for), survives restart
    and failover, and its low 64 bits are well mixed (splitmix64), so ratio sampling on
    them behaves as on random ids."""
    z = (seq + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    z ^= z >> 31
    return f"{(venue & _M64) or 1:016x}{z or 1:016x}"


def root_span_id(trace_id: str, order_id: int) -> str:
    """The span id of an order's root ("order") span: a function of its trace id and order
    id, so a later record (a fill of the order while it rests) can name that span as its
    parent without either process remembering it, across restarts of either."""
    try:
        z = (int(trace_id[16:], 16) ^ (order_id * 0x9E3779B97F4A7C15)) & _M64
    except ValueError:
        z = order_id & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    z ^= z >> 31
    return f"{z or 1:016x}"


def parse_traceparent(header: str) -> tuple[str, str] | None:
    """`(trace_id, parent_span_id)` from a W3C `traceparent` header, or None when it is invalid
    (malformed, uppercase hex, version ff, an all-zero id, or version 00 with extra fields)."""
    if not header:
        return None
    m = _TRACEPARENT.fullmatch(header.strip())
    if m is None:
        return None
    version, trace_id, span_id, _flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id


def format_traceparent(trace_id: str, span_id: str, sampled: bool = True) -> str:
    """The `traceparent` header to send on (e.g. in a response)."""
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"
