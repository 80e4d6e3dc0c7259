"""FIX cases: a connection that logs on (or tries to, with odd Logon fields), sends
mutated application and session messages and raw garbage, then a TestRequest whose
Heartbeat proves the session alive (or the server closes: never a hang)."""

from __future__ import annotations

import asyncio
import random

from engine.fuzz.io import read_to_eof
from engine.fuzz.mutate import ODD_TEXT, garbage, mutate
from engine.fuzz.node import ALICE_KEY
from engine.gateways.fix.codec import utc_timestamp

MSG_TYPES = ("D", "F", "G", "H", "0", "1", "2", "4", "5", "A", "3", "j", "Z", "", "DD")


def _body(rng: random.Random, msg_type: str) -> list[tuple[int, object]]:
    fields: list[tuple[int, object]] = []
    if msg_type in ("D", "G"):
        fields = [(11, f"c{rng.randrange(10**6)}"), (55, "BTC-USD"), (54, 1), (38, 1), (40, 2), (44, 100)]
        fields.append((60, utc_timestamp(0)))
    elif msg_type in ("F", "H"):
        fields = [(11, "x"), (41, "c1"), (37, rng.randint(1, 100)), (55, "BTC-USD"), (54, 1)]
    elif msg_type == "2":
        fields = [(7, rng.randint(-5, 10)), (16, rng.randint(-5, 10))]
    elif msg_type == "4":
        fields = [(36, rng.randint(-5, 10**9)), (123, rng.choice("YN?"))]
    for _ in range(rng.randint(0, 3)):  # odd values in known and unknown tags
        fields.append((rng.choice((11, 38, 44, 54, 40, 59, 55, 1, 9999, 0)), rng.choice(ODD_TEXT)))
    return fields


def frame(fields: list[tuple[int, object]]) -> bytes:
    """A FIX frame around any fields, empty or SOH-laden values included (the codec's
    encoder refuses those): BeginString, BodyLength and CheckSum computed as a client would."""
    body = b"".join(
        f"{tag}=".encode() + str(value).encode("utf-8", "surrogatepass") + b"\x01" for tag, value in fields
    )
    head = b"8=FIX.4.4\x019=%d\x01" % len(body)
    return head + body + b"10=%03d\x01" % (sum(head + body) % 256)


class FixCase:
    def __init__(self, rng: random.Random, comp_id: str) -> None:
        self.rng = rng
        self.comp_id = comp_id
        self.seq = 1

    def message(self, msg_type: str, body: list) -> bytes:
        header = [(35, msg_type), (49, self.comp_id), (56, "LOOM"), (34, self.seq), (52, utc_timestamp(0))]
        data = frame(header + body)
        self.seq += 1
        return data

    def logon(self) -> bytes:
        rng = self.rng
        body: list[tuple[int, object]] = [(98, 0), (108, 30), (141, "Y"), (553, "alice"), (554, ALICE_KEY)]
        if rng.random() < 0.2:
            body[rng.randrange(len(body))] = (rng.choice((98, 108, 553, 554)), rng.choice(ODD_TEXT))
        return self.message("A", body)

    def fuzz(self) -> bytes:
        rng = self.rng
        kind = rng.randrange(6)
        if kind == 0:
            return garbage(rng)
        msg_type = rng.choice(MSG_TYPES)
        data = self.message(msg_type, _body(rng, msg_type))
        if kind == 1:
            return mutate(rng, data)
        if kind == 2:  # a field layout the codec must refuse: header tags odd, empty or repeated
            fields = [(35, rng.choice(MSG_TYPES)), (49, self.comp_id), (56, "LOOM"), (34, self.seq)]
            fields[rng.randrange(len(fields))] = (rng.choice((8, 9, 35, 10, 34, 52)), rng.choice(ODD_TEXT))
            return frame(fields)
        return data


async def session(port: int, rng: random.Random, messages: int, timeout: float) -> dict:
    case = FixCase(rng, rng.choice(("FUZZ", "FUZZ", "F" * 40, "../x", "é")))
    out: dict = {"hung": False, "closed": False, "data": b""}
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(case.logon())
        for _ in range(messages):
            writer.write(case.fuzz())
        writer.write(case.message("1", [(112, "fuzz-alive")]))
        writer.write_eof()  # the server must answer what it can read, then close: never hang
        await writer.drain()
        out["hung"] = not await read_to_eof(reader, timeout, out)
        out["closed"] = b"112=fuzz-alive\x01" not in out.pop("data")
    except (ConnectionError, OSError):
        out["closed"] = True
    finally:
        writer.close()
    return out
