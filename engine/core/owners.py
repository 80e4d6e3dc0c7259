"""Beneficial owners: which accounts belong to one owner (the `owner` of an `[[accounts]]`
entry). An account nobody grouped is its own owner, so two unrelated accounts never match."""

from __future__ import annotations

from collections.abc import Mapping


class Owners:
    def __init__(self, owner_of: Mapping[str, str] | None = None) -> None:
        self._owner_of = dict(owner_of or {})
        # `get(account, account)`: the owner without a Python call (the detectors' hot path)
        self.get = self._owner_of.get

    def __call__(self, account: str) -> str:
        return self._owner_of.get(account, account)

    def accounts(self, owner: str) -> list[str]:
        """The configured accounts of `owner` (the owner itself when it is an ungrouped account)."""
        grouped = sorted(a for a, o in self._owner_of.items() if o == owner)
        return grouped or [owner]
