"""Persistent FIX session state, one directory per counterparty SenderCompID: the next
sequence numbers in both directions, the account the session belongs to, and every
application message sent (for ResendRequest). It survives a restart of the exchange, so a
client resuming its session keeps its numbers and can ask for what it missed.

Layout of ``<store_dir>/<comp id>/``:

- ``seqnums``  one fixed-width line "<next sender> <next target>", rewritten in place
- ``messages`` records "<seq> <length>\\n<raw message>\\n", appended
- ``account``  the account that owns the SenderCompID (a different account cannot take it)

A record cut short by a crash is truncated away when the store is opened.

Writes are held in memory until `flush()`, which the session calls before any of the bytes
they number go on the wire (`FixSession.data_to_send`): one write of the records and one of
the numbers per flush instead of three system calls per message sent (under overload FIX
answers hundreds of orders per read; issue 13). Nothing the client has seen is unrecorded.

Retention: only the newest `max_messages` application messages stay available for resend.
The file is rewritten (temp file, fsync, rename) when it holds twice that, so it cannot grow
without bound over a long-lived session; a ResendRequest for older ones is answered with a
SequenceReset-GapFill, as for any message that is not resent.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_SEQNUM_LINE = 42  # "%020d %020d\n"
DEFAULT_MAX_MESSAGES = 100_000  # per session: at FIX message sizes, tens of MB at most
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


def store_dir_name(comp_id: str) -> str:
    """A file-system-safe, collision-free directory name for a SenderCompID."""
    if _SAFE_NAME.fullmatch(comp_id):
        return comp_id
    return "=" + comp_id.encode("utf-8", "surrogateescape").hex()


class MemoryStore:
    """The same interface without files (tests, or sessions that need no recovery)."""

    def __init__(self, max_messages: int = DEFAULT_MAX_MESSAGES) -> None:
        self.next_sender_seq = 1
        self.next_target_seq = 1
        self.account = ""
        self.max_messages = max_messages
        self._messages: dict[int, bytes] = {}

    def set_seqnums(self, next_sender: int, next_target: int) -> None:
        self.next_sender_seq, self.next_target_seq = next_sender, next_target

    def set_account(self, account: str) -> None:
        self.account = account

    def save_message(self, seq: int, raw: bytes) -> None:
        self._messages[seq] = raw
        if len(self._messages) > 2 * self.max_messages:
            for old in sorted(self._messages)[: -self.max_messages]:
                del self._messages[old]

    def messages(self, begin: int, end: int) -> list[tuple[int, bytes]]:
        return [(s, self._messages[s]) for s in sorted(self._messages) if begin <= s <= end]

    def reset(self) -> None:
        self.next_sender_seq = self.next_target_seq = 1
        self._messages.clear()

    def flush(self) -> None:
        pass  # nothing held

    def close(self) -> None:
        pass


class FileStore(MemoryStore):
    def __init__(
        self, root: Path, comp_id: str, sync: bool = False, max_messages: int = DEFAULT_MAX_MESSAGES
    ) -> None:
        super().__init__(max_messages)
        self.path = Path(root) / store_dir_name(comp_id)
        self.path.mkdir(parents=True, exist_ok=True)
        self.sync = sync
        self._index: dict[int, tuple[int, int]] = {}  # seq -> (offset, length) of the raw bytes
        self._pending: list[bytes] = []  # records not yet written, in order
        self._end = 0  # the messages file's length once the pending records are written
        self._seq_dirty = False  # the numbers changed since they were last written
        self._seq_fd = os.open(self.path / "seqnums", os.O_RDWR | os.O_CREAT, 0o644)
        self._msg_fd = os.open(self.path / "messages", os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self._load()

    def _load(self) -> None:
        line = os.pread(self._seq_fd, _SEQNUM_LINE, 0).split()
        if len(line) == 2 and all(part.isdigit() for part in line):
            self.next_sender_seq, self.next_target_seq = int(line[0]), int(line[1])
        else:
            self._write_seqnums()
        account_file = self.path / "account"
        if account_file.exists():
            self.account = account_file.read_text().strip()
        data = os.pread(self._msg_fd, os.fstat(self._msg_fd).st_size, 0)
        pos = 0
        while True:
            nl = data.find(b"\n", pos, pos + 48)
            parts = data[pos:nl].split() if nl >= 0 else []
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                break
            seq, length = int(parts[0]), int(parts[1])
            start = nl + 1
            if data[start + length : start + length + 1] != b"\n":
                break
            self._index[seq] = (start, length)
            pos = start + length + 1
        if pos < len(data):  # a torn tail from a crash: cut it off
            os.ftruncate(self._msg_fd, pos)
        self._end = pos

    def _write_seqnums(self) -> None:
        self._seq_dirty = False
        os.pwrite(self._seq_fd, b"%020d %020d\n" % (self.next_sender_seq, self.next_target_seq), 0)
        if self.sync:
            os.fdatasync(self._seq_fd)

    def set_seqnums(self, next_sender: int, next_target: int) -> None:
        if (next_sender, next_target) != (self.next_sender_seq, self.next_target_seq):
            super().set_seqnums(next_sender, next_target)
            self._seq_dirty = True

    def set_account(self, account: str) -> None:
        if account != self.account:
            self.account = account
            tmp = self.path / "account.tmp"
            tmp.write_text(account + "\n")
            os.replace(tmp, self.path / "account")

    def save_message(self, seq: int, raw: bytes) -> None:
        head = b"%d %d\n" % (seq, len(raw))
        self._pending.append(head + raw + b"\n")
        self._index[seq] = (self._end + len(head), len(raw))
        self._end += len(head) + len(raw) + 1
        if len(self._index) > 2 * self.max_messages:
            self._compact()

    def flush(self) -> None:
        """Write the held records, then the numbers (a crash between the two leaves numbers
        that lag the records, never records missing under a number already written)."""
        if self._pending:
            os.write(self._msg_fd, b"".join(self._pending))
            self._pending.clear()
            if self.sync:
                os.fdatasync(self._msg_fd)
        if self._seq_dirty:
            self._write_seqnums()

    def _compact(self) -> None:
        """Keep the newest `max_messages` in a rewritten file (atomic: a crash leaves the
        old file or the new one, never a mix)."""
        self.flush()
        keep = sorted(self._index)[-self.max_messages :]
        tmp = self.path / "messages.tmp"
        index: dict[int, tuple[int, int]] = {}
        with open(tmp, "wb") as out:
            pos = 0
            for seq in keep:
                start, length = self._index[seq]
                head = b"%d %d\n" % (seq, length)
                out.write(head + os.pread(self._msg_fd, length, start) + b"\n")
                index[seq] = (pos + len(head), length)
                pos += len(head) + length + 1
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path / "messages")
        dir_fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        os.close(self._msg_fd)
        self._msg_fd = os.open(self.path / "messages", os.O_RDWR | os.O_APPEND, 0o644)
        self._index = index
        self._end = pos

    def messages(self, begin: int, end: int) -> list[tuple[int, bytes]]:
        self.flush()
        wanted = sorted(s for s in self._index if begin <= s <= end)
        return [(s, os.pread(self._msg_fd, self._index[s][1], self._index[s][0])) for s in wanted]

    def reset(self) -> None:
        self._pending.clear()
        os.ftruncate(self._msg_fd, 0)
        self._index.clear()
        self._end = 0
        self.next_sender_seq = self.next_target_seq = 1
        self._write_seqnums()

    def close(self) -> None:
        if self._msg_fd >= 0:
            self.flush()
        for fd in (self._seq_fd, self._msg_fd):
            if fd >= 0:
                os.close(fd)
        self._seq_fd = self._msg_fd = -1
