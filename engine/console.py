"""`loom run`'s console: the lines it prints on stdout (ready, shutting down, stopped) and
its log on stderr. Either may be a pipe whose reader went away (a log shipper that died):
a write then fails with EPIPE. That must never stop the node, least of all its drain, so
a stream that fails is pointed at /dev/null from then on: no exception, no logging
traceback, and no failed flush at exit (Python exits 120 when it cannot flush stdout).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from typing import TextIO


def mute(stream: TextIO) -> None:
    """Point the stream's file descriptor at /dev/null; what its buffers still hold goes
    there too."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # closed, or not backed by a descriptor
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
    with contextlib.suppress(OSError, ValueError):
        stream.flush()


def _broken(exc: BaseException | None, stream: TextIO) -> bool:
    """Whether `exc` is the stream failing (not, say, a bad log record)."""
    return isinstance(exc, OSError) or (isinstance(exc, ValueError) and stream.closed)


_render: Callable[[str], str] | None = None  # how a console line is written (JSON mode: a log line)


def render_lines(render: Callable[[str], str] | None) -> None:
    global _render
    _render = render


def say(line: str) -> None:
    """One line on stdout, flushed; a stdout that cannot take it is muted."""
    try:
        print(_render(line) if _render is not None else line, flush=True)
    except (OSError, ValueError) as exc:
        if not _broken(exc, sys.stdout):
            raise
        mute(sys.stdout)


class ConsoleHandler(logging.StreamHandler):
    """The log on stderr. A stream that fails is muted instead of reported (logging would
    print a traceback to the same broken stream); any other error is reported as usual."""

    def handleError(self, record: logging.LogRecord) -> None:
        if _broken(sys.exc_info()[1], self.stream):
            mute(self.stream)
            return
        super().handleError(record)


def settle() -> None:
    """Flush stdout and stderr before the process exits, muting one that fails."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            mute(stream)
