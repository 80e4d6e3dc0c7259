"""Seeded mutations shared by every target's case generator: byte flips, truncation,
splices, odd values. Every choice comes from the `random.Random` passed in, so a seed
reproduces a campaign exactly."""

from __future__ import annotations

import random

ODD_INTS = (0, -1, 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, -(2**63), -(2**64), 10**30)
ODD_TEXT = (
    "",
    " ",
    "\x00",
    "é",
    "\ud800",
    "💥",
    "%00",
    "../../etc/passwd",
    "A" * 300,
    "1e309",
    "NaN",
    "null",
)


def flip(rng: random.Random, data: bytes, n: int = 0) -> bytes:
    """`data` with 1..4 (or n) bytes replaced at random positions."""
    if not data:
        return bytes([rng.randrange(256)])
    buf = bytearray(data)
    for _ in range(n or rng.randint(1, 4)):
        buf[rng.randrange(len(buf))] = rng.randrange(256)
    return bytes(buf)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))] if data else data


def garbage(rng: random.Random, lo: int = 1, hi: int = 512) -> bytes:
    return rng.randbytes(rng.randint(lo, hi))


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One of: flips, truncation, garbage appended or inserted, a repeated slice."""
    kind = rng.randrange(5)
    if kind == 0:
        return flip(rng, data)
    if kind == 1:
        return truncate(rng, data)
    if kind == 2:
        return data + garbage(rng)
    if kind == 3:
        at = rng.randrange(len(data) + 1)
        return data[:at] + garbage(rng, 1, 32) + data[at:]
    at = rng.randrange(len(data) + 1)
    return data[:at] + data[at : at + 16] * rng.randint(2, 64) + data[at:]


def odd_value(rng: random.Random) -> object:
    """A JSON value a field does not expect."""
    kind = rng.randrange(7)
    if kind == 0:
        return rng.choice(ODD_INTS)
    if kind == 1:
        return rng.choice(ODD_TEXT)
    if kind == 2:
        return rng.random() * 10 ** rng.randint(-5, 30)
    if kind == 3:
        return [rng.choice(ODD_INTS) for _ in range(rng.randint(0, 5))]
    if kind == 4:
        return {"x": rng.choice(ODD_TEXT)}
    if kind == 5:
        return rng.choice((True, False, None))
    return nested(rng, rng.randint(2, 400))  # json.dumps recurses: deeper ones are nested_json


def nested(rng: random.Random, depth: int) -> object:
    value: object = rng.choice((1, "x", None))
    for _ in range(depth):
        value = [value] if rng.random() < 0.5 else {"a": value}
    return value


def nested_json(rng: random.Random, depth: int) -> str:
    """JSON text nested `depth` deep, built without recursion (any depth)."""
    opens = [rng.random() < 0.5 for _ in range(depth)]
    head = "".join("[" if is_list else '{"a":' for is_list in opens)
    return head + "1" + "".join("]" if is_list else "}" for is_list in reversed(opens))
