"""The tests' /proc readers survive what a live process does between a listing and a read: a
thread that ends, a descriptor that closes (a CI run failed on the first: FileNotFoundError
reading /proc/<pid>/task/<tid>/children)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from test_snapshot_child import _children, open_files


def test_a_thread_that_ends_between_the_listing_and_the_read_is_skipped(monkeypatch):
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    done = threading.Event()
    thread = threading.Thread(target=done.wait)
    thread.start()
    try:
        me = os.getpid()
        ended = str(thread.native_id)  # as if it ended once listed
        read_text = Path.read_text

        def racing(path: Path, *args, **kwargs) -> str:
            if path.name == "children" and path.parent.name == ended:
                raise FileNotFoundError(path)
            return read_text(path, *args, **kwargs)

        monkeypatch.setattr(Path, "read_text", racing)
        assert child.pid in _children(me)
    finally:
        done.set()
        thread.join()
        child.communicate(b"")


def test_a_descriptor_closed_between_the_listing_and_its_readlink_is_skipped(monkeypatch, tmp_path):
    held = tmp_path / "held"
    with open(held, "w"), open(tmp_path / "closing", "w"):
        readlink = os.readlink

        def racing(path: str) -> str:
            target = readlink(path)
            if target.endswith("/closing"):  # closed once listed
                raise FileNotFoundError(path)
            return target

        monkeypatch.setattr(os, "readlink", racing)
        files = open_files(os.getpid())
    assert str(held) in files and not any(f.endswith("/closing") for f in files)
