"""Which SenderCompIDs an account may log on with, decided before its store exists.

Each SenderCompID has a store directory (sequence numbers, sent messages), created at its
first Logon: any logged-on user could create one per made-up SenderCompID, without end.
An account's SenderCompIDs are bound in the config (`[[accounts]] fix_comp_ids = [...]`):
any other is refused at Logon, before a directory is made. An account with none bound
keeps working as before, but with at most `max_per_account` SenderCompIDs (those already
on disk count), so the directories stay bounded.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_MAX_PER_ACCOUNT = 16


class CompIdBinding:
    def __init__(
        self,
        bound: dict[str, str] | None = None,
        max_per_account: int = DEFAULT_MAX_PER_ACCOUNT,
        store_dir: Path | None = None,
    ) -> None:
        self.bound = dict(bound or {})  # SenderCompID -> account, from the config
        self.accounts_bound = set(self.bound.values())
        self.max_per_account = max_per_account
        self.seen: dict[str, set[str]] = {}  # account -> SenderCompIDs with a store (unbound accounts)
        if store_dir is not None and Path(store_dir).is_dir():
            for path in Path(store_dir).iterdir():
                account_file = path / "account"
                if account_file.is_file():  # a store records its account at the first Logon
                    self.seen.setdefault(account_file.read_text().strip(), set()).add(path.name)

    def problem(self, comp_id: str, account: str, dir_name: str) -> str | None:
        """Why `account` may not log on as `comp_id` (None: it may). `dir_name` is the
        SenderCompID's store directory name (how the stores on disk are counted)."""
        owner = self.bound.get(comp_id)
        if owner is not None:
            return None if owner == account else f"SenderCompID {comp_id} is not bound to this account"
        if account in self.accounts_bound:
            return f"SenderCompID {comp_id} is not bound to this account (fix_comp_ids in the config)"
        seen = self.seen.setdefault(account, set())
        if dir_name not in seen and len(seen) >= self.max_per_account:
            return (
                f"this account already has {len(seen)} SenderCompIDs; bind the ones it uses in the "
                "config (fix_comp_ids)"
            )
        seen.add(dir_name)
        return None
