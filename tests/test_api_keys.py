"""API keys in memory (issue 13): only SHA-256 digests, found by a non-secret key id and
compared whole with hmac.compare_digest; no plaintext key anywhere, no plaintext cache."""

from __future__ import annotations

import engine.auth as auth
from engine.auth import Accounts

ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdefgh"
OPS = "ops-key-0123456789abcdef00"


def _strings_held(obj, seen=None) -> set[str]:
    """Every str (and bytes decoded) reachable from `obj`'s attributes and containers."""
    seen = seen if seen is not None else set()
    if id(obj) in seen:
        return set()
    seen.add(id(obj))
    if isinstance(obj, str):
        return {obj}
    if isinstance(obj, bytes):
        return {obj.decode("latin-1")}
    found: set[str] = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            found |= _strings_held(k, seen) | _strings_held(v, seen)
    elif isinstance(obj, list | tuple | set | frozenset):
        for v in obj:
            found |= _strings_held(v, seen)
    elif hasattr(obj, "__dict__"):
        found |= _strings_held(vars(obj), seen)
    return found


def test_no_plaintext_key_is_held_even_after_use():
    accounts = Accounts({ALICE: "alice", BOB: "bob"}, "admin-key-0123456789abcdef", {OPS: "oncall"})
    for _ in range(3):  # used: a cache of recent keys held them in plaintext (up to 1,024)
        assert accounts.authenticate(ALICE) == "alice" and accounts.authenticate(BOB) == "bob"
        assert accounts.operator(OPS) == "oncall"
    held = _strings_held(accounts)
    for key in (ALICE, BOB, OPS, "admin-key-0123456789abcdef"):
        assert not any(key in text for text in held), key
    assert "alice" in held  # the walk does see what is held


def test_keys_are_compared_whole_in_constant_time(monkeypatch):
    compared = []
    real = auth.hmac.compare_digest

    def spy(a, b):
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    accounts = Accounts({ALICE: "alice", BOB: "bob"})
    compared.clear()
    assert accounts.authenticate(ALICE) == "alice"
    assert compared and all(pair == (32, 32) for pair in compared)  # whole SHA-256 digests
    compared.clear()
    assert accounts.authenticate("not-a-key-0123456789abc") is None
    assert accounts.authenticate(ALICE[:-1] + "x") is None
    assert accounts.authenticate("") is None and accounts.authenticate(None) is None


def test_keys_sharing_a_key_id_are_told_apart_by_the_whole_digest(monkeypatch):
    monkeypatch.setattr(
        auth, "_digest", lambda key: b"\x00" * 8 + auth.hashlib.sha256(key.encode()).digest()[8:]
    )
    accounts = Accounts({ALICE: "alice", BOB: "bob"})
    assert accounts.authenticate(ALICE) == "alice" and accounts.authenticate(BOB) == "bob"
    assert accounts.authenticate("carol-key-0123456789abcd") is None
    assert accounts.names == ["alice", "bob"]
