"""Progress bars for long commands (`loom bench ...`, `loom load`), shown on a terminal only.

The command wraps its work in `shown(enabled)`; the work calls `phase(...)` when it starts a
stage and `advance`/`update` as it goes, without knowing whether a bar is on screen: with
none (`--json`, stdout not a terminal, or a library caller) they cost a global lookup. The bar
is transient (it leaves no trace in the output) and draws on stdout from rich's refresh
thread, so the work itself only stores numbers.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

_bar: Any = None  # the rich Progress on screen, if any
_task: Any = None  # its current phase


def wanted(json_output: bool) -> bool:
    """A bar on a terminal, never with --json or when stdout is a pipe or a file."""
    return not json_output and sys.stdout.isatty()


@contextlib.contextmanager
def shown(enabled: bool) -> Iterator[None]:
    global _bar, _task
    if not enabled:
        yield
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
        refresh_per_second=4,  # drawn by rich's thread: kept rare beside what a bench measures
    )
    with bar:
        _bar, _task = bar, None
        try:
            yield
        finally:
            _bar, _task = None, None


def phase(description: str, total: float | None) -> None:
    """A new stage of the work, `total` steps long (None: unknown)."""
    global _task
    if _bar is None:
        return
    if _task is not None:
        _bar.remove_task(_task)
    _task = _bar.add_task(description, total=total)


def advance(steps: float = 1) -> None:
    if _task is not None:
        _bar.advance(_task, steps)


def update(completed: float) -> None:
    if _task is not None:
        _bar.update(_task, completed=completed)
