"""Accounts, API keys and per-session rate limits.

Keys are kept only as SHA-256 digests (no plaintext, not even a cache), found by a key id
that says nothing about the key (the digest's first 8 bytes) and compared whole with
`hmac.compare_digest` (constant time). One API key names
one account; the admin key (a separate credential) is for admin endpoints only and trades
for nobody. An ops key (role "ops", for on-call staff and dashboards) is read-only: it may
read any account's orders and traces and the admin views, and can neither trade nor change
anything.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class _KeyTable:
    """Key digests by key id: the first 8 bytes of the digest, which say nothing about the
    key. A lookup finds the candidates by id, then compares whole digests in constant time;
    no plaintext key is kept, not even in a cache."""

    def __init__(self) -> None:
        self._by_id: dict[bytes, list[tuple[bytes, str]]] = {}

    def add(self, digest: bytes, name: str) -> None:
        bucket = self._by_id.setdefault(digest[:8], [])
        bucket[:] = [(d, n) for d, n in bucket if d != digest] + [(digest, name)]

    def find(self, digest: bytes) -> str | None:
        found = None
        for held, name in self._by_id.get(digest[:8], ()):
            if hmac.compare_digest(held, digest):
                found = name
        return found

    def __contains__(self, digest: bytes) -> bool:
        return self.find(digest) is not None

    def names(self) -> set[str]:
        return {name for bucket in self._by_id.values() for _, name in bucket}


class Accounts:
    def __init__(
        self, keys: dict[str, str] | None = None, admin_key: str = "", ops_keys: dict[str, str] | None = None
    ) -> None:
        """`keys` maps api key -> account name; `ops_keys` maps ops key -> operator name."""
        self._accounts = _KeyTable()
        self._admin = _digest(admin_key) if admin_key else None
        self._ops = _KeyTable()
        for key, account in (keys or {}).items():
            self.add(account, key)
        for key, name in (ops_keys or {}).items():
            self.add_ops(name, key)

    def add(self, account: str, key: str) -> None:
        if not account or len(account) > 64:
            raise ValueError(f"account name must be 1-64 characters: {account!r}")
        if len(key) < 16:
            raise ValueError(f"API key for {account} is too short (at least 16 characters)")
        self._accounts.add(_digest(key), account)

    def add_ops(self, name: str, key: str) -> None:
        if not name or len(name) > 64:
            raise ValueError(f"ops key name must be 1-64 characters: {name!r}")
        if len(key) < 16:
            raise ValueError(f"ops key {name} is too short (at least 16 characters)")
        digest = _digest(key)
        if digest in self._accounts or (self._admin is not None and hmac.compare_digest(digest, self._admin)):
            raise ValueError(f"ops key {name} is also an account's or the admin key")
        self._ops.add(digest, name)

    def operator(self, key: str | None) -> str | None:
        """The name of an ops (read-only) key, or None."""
        return self._ops.find(_digest(key)) if key else None

    def authenticate(self, key: str | None) -> str | None:
        """The account an API key belongs to, or None."""
        return self._accounts.find(_digest(key)) if key else None

    def is_admin(self, key: str | None) -> bool:
        return bool(key) and self._admin is not None and hmac.compare_digest(_digest(key), self._admin)

    @property
    def names(self) -> list[str]:
        return sorted(self._accounts.names())


def new_key() -> str:
    return secrets.token_urlsafe(24)


@dataclass
class TokenBucket:
    """`rate` requests per second on average, bursts up to `burst`. The caller passes the
    time in, so it is trivially testable."""

    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float = 0.0

    def allow(self, now: float, cost: float = 1.0) -> bool:
        if self.rate <= 0:
            return True  # unlimited
        if self.tokens < 0:
            self.tokens, self.stamp = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False
