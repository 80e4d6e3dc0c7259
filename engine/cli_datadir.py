"""What the offline commands (`loom journal …`, `loom snapshot …`, `loom trace`) ask of the
path they are given: that it holds a journal, and, before they write, that no node is running
on it.

FIX (tests/test_cli_defects.py): `loom journal inspect` of an empty directory said
"integrity: ok" (exit 0), `journal replay` and `trace` of a missing path created it and
reported an empty journal; `journal repair --yes` and `journal replay` (which cuts a torn
tail) rewrote a live node's journal under it, and `snapshot take` on a running node died
with a DataDirLocked traceback.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from engine.exchange import DataDirLocked, lock_data_dir
from engine.journal.segments import archive_dir, list_segment_files
from engine.repair import data_paths

EXIT_USAGE = 2  # a path that holds no journal, or a node running on it


class DataDirRefused(Exception):
    """The path holds no journal, or a running node holds it; the message says which and
    what to do instead."""


def journal_dir(path: str | os.PathLike) -> Path:
    """The journal directory of `path` (a node's data directory or its journal directory),
    which must hold segment files (live or archived). Never creates anything."""
    found = data_paths(path)[0]
    if not found.is_dir():
        raise DataDirRefused(f"no journal at {path}: no such directory")
    if not list_segment_files(found) and not archive_dir(found).is_dir():
        raise DataDirRefused(
            f"no journal at {path}: {found} holds no journal segments "
            "(give a node's --data-dir, or its journal directory)"
        )
    return found


def data_dir_of(journal: Path) -> Path:
    """The node's data directory (where its LOCK is) for its journal directory."""
    return journal.parent


@contextlib.contextmanager
def node_stopped(data_dir: Path, doing: str, instead: str) -> Iterator[None]:
    """Hold the data directory's lock (the one `loom run` holds) while `doing`; refuse when a
    node has it, saying what to do `instead`."""
    try:
        fd = lock_data_dir(data_dir)
    except DataDirLocked as exc:
        raise DataDirRefused(
            f"{exc}: a running node's data directory; stop the node to {doing}, or {instead}"
        ) from None
    try:
        yield
    finally:
        os.close(fd)  # releases the lock
