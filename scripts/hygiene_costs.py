"""Per-call costs of the hygiene checks on the order path (issue 13), side by side in one
process: API key lookup (digest + constant-time compare, against the old plaintext cache
hit), the JSON nesting check on a typical WebSocket order, and the WebSocket mask check on
one frame. Usage (from the repo):
    git show 9e18fd5:engine/auth.py > /tmp/old_auth.py
    PYTHONPATH=. python scripts/hygiene_costs.py /tmp/old_auth.py"""

from __future__ import annotations

import importlib.util
import os
import sys
import timeit

from engine.auth import Accounts
from engine.gateways.json_depth import too_deep
from engine.gateways.ws_masking import MaskedFramesOnly

KEY = "alice-key-0123456789abcdef"
ORDER = b'{"op":"order","req_id":17,"symbol":"BTC-USD","side":"buy","qty":1,"price":100,"tif":"gtc"}'


ORDER_TEXT = ORDER.decode()  # aiohttp hands text frames over as str


def per_call_us(stmt, number: int = 200_000) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=5)) / number * 1e6


def show(what: str, stmt) -> None:
    print(f"{what:<48} {per_call_us(stmt):.2f} us")


def main() -> None:
    keys = {f"key-{i:04d}-0123456789abcdef": f"acct{i}" for i in range(1000)} | {KEY: "alice"}
    new = Accounts(keys)
    show("authenticate (digest, key id, compare_digest)", lambda: new.authenticate(KEY))
    if len(sys.argv) > 1:
        spec = importlib.util.spec_from_file_location("old_auth", sys.argv[1])
        old_mod = sys.modules["old_auth"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old_mod)
        old = old_mod.Accounts(keys)
        show("authenticate (old: plaintext cache hit)", lambda: old.authenticate(KEY))
    show(f"too_deep on a {len(ORDER)}-byte order message (str)", lambda: too_deep(ORDER_TEXT))
    mask = os.urandom(4)
    frame = bytes((0x81, 0x80 | len(ORDER))) + mask + ORDER

    class Sink:
        def feed_data(self, data):
            return False, b""

    check = MaskedFramesOnly(Sink(), None)
    show(f"mask check of one {len(frame)}-byte frame", lambda: check.feed_data(frame))


if __name__ == "__main__":
    main()
