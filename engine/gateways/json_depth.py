"""A nesting limit for JSON from clients, checked without recursion.

msgspec decodes nested JSON recursively: about 1,000 levels raise RecursionError, which
ended a WebSocket session with a "normal" close and no error message. No request of the API
nests beyond a few levels, so anything deeper than MAX_DEPTH is refused before decoding.
"""

from __future__ import annotations

import re

MAX_DEPTH = 32
# A string (skipped whole, escapes included; an unterminated one runs to the end, so each
# byte is scanned once whatever the input) or one bracket.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.?)*+(?:"|\Z)|[\[\]{}]', re.S)


def too_deep(raw: str | bytes, limit: int = MAX_DEPTH) -> bool:
    """True when `raw` nests arrays/objects deeper than `limit` (strings are skipped)."""
    # Depth can exceed the limit only with more opening brackets than it: a C-speed count
    # keeps the check off the order path for every ordinary message.
    if isinstance(raw, str):
        if raw.count("[") + raw.count("{") <= limit:
            return False
        data = raw.encode("utf-8", "surrogatepass")
    else:
        if raw.count(b"[") + raw.count(b"{") <= limit:
            return False
        data = raw
    depth = 0
    for m in _TOKENS.finditer(data):
        token = m.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif token in (b"]", b"}"):
            depth -= 1
    return False
