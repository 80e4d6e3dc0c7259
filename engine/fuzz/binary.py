"""Binary-protocol cases: a connection that logs in (or tries to), sends frames of every
type with odd field values, wrong lengths, unknown types and raw garbage, then a Heartbeat
whose echo proves the session alive (or the server closes: never a hang)."""

from __future__ import annotations

import asyncio
import random
import struct

from engine.fuzz.io import read_to_eof
from engine.fuzz.mutate import ODD_INTS, garbage, mutate
from engine.fuzz.node import ALICE_KEY
from engine.gateways.binary import protocol as p

ALIVE = 0xF022_A11E


def _i64(rng: random.Random) -> int:
    value = rng.choice((*ODD_INTS, rng.randint(-100, 10**6)))
    return max(-(2**63), min(2**63 - 1, value))


def frame(rng: random.Random) -> bytes:
    kind = rng.randrange(7)
    if kind == 0:
        return garbage(rng, 1, 300)
    if kind == 1:  # a header promising any length and type, then whatever
        return struct.pack("<HB", rng.randrange(65536), rng.randrange(256)) + garbage(rng, 0, 64)
    if kind == 2:
        sym = rng.choice(("BTC-USD", "NOPE", "", "A" * 16))
        data = p.encode_new_order(
            rng.randrange(2**64), sym, rng.randrange(256), rng.randrange(256), rng.randrange(256),
            rng.random() < 0.5, rng.randrange(256), _i64(rng), _i64(rng),
        )  # fmt: skip
    elif kind == 3:
        data = p.encode_cancel(rng.randrange(2**64), rng.randrange(2**64))
    elif kind == 4:
        data = p.encode_amend(
            rng.randrange(2**64), rng.randrange(2**64), _i64(rng), _i64(rng), rng.randrange(2**64)
        )
    elif kind == 5:
        data = p.encode_login(rng.choice((ALICE_KEY, "nope", "")), rng.randrange(65536))
    else:
        data = p.encode_cancel_all(rng.choice(("", "BTC-USD", "ZZZ")))
    return mutate(rng, data) if rng.random() < 0.3 else data


async def session(port: int, rng: random.Random, frames: int, timeout: float) -> dict:
    out: dict = {"hung": False, "closed": False, "data": b""}
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if rng.random() < 0.9:
            writer.write(p.encode_login(ALICE_KEY if rng.random() < 0.9 else "wrong-key-0123456789"))
        for _ in range(frames):
            writer.write(frame(rng))
        writer.write(p.encode_heartbeat(ALIVE))
        writer.write_eof()  # the server must answer what it can read, then close: never hang
        await writer.drain()
        alive = p.encode_heartbeat(ALIVE)
        out["hung"] = not await read_to_eof(reader, timeout, out)
        out["closed"] = alive not in out.pop("data")
    except (ConnectionError, OSError):
        out["closed"] = True
    finally:
        writer.close()
    return out
