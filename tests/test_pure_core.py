"""The matching core (the package engine/core/) stays pure: no clock, no I/O, no randomness,
no telemetry.

Checked two ways: statically (every import of every module in engine/core/, function-level
ones included, is on an allowlist or names another core module) and dynamically (applying
commands with every clock patched to explode)."""

from __future__ import annotations

import ast
import pathlib
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORE_DIR = ROOT / "engine" / "core"
# Every module of the package is guarded: a module moved into engine/core/ is checked with no
# list to update, and one that cannot pass does not belong there.
CORE = sorted(p.stem for p in CORE_DIR.glob("*.py"))
ALLOWED = {"__future__", "bisect", "collections", "collections.abc", "enum", "hashlib", "msgspec",
           "operator", "typing", "dataclasses"}  # fmt: skip


def _imports(path: pathlib.Path) -> list[str]:
    """Every module a file imports, at module level or inside a function; a relative import
    is named absolutely (it can only name a module of the same package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = "engine.core"
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            if node.level and not node.module:  # `from . import x`: each x is a module
                names.extend(f"{package}.{alias.name}" for alias in node.names)
            else:
                names.append(module)
    return names


def _impure(names: list[str]) -> list[str]:
    core = {f"engine.core.{m}" for m in CORE} | {"engine.core"}
    return [n for n in names if n not in core and n not in ALLOWED]


def test_the_package_holds_the_core() -> None:
    assert {"domain", "commands", "events", "book", "matcher", "risk", "state", "replay"} <= set(CORE)
    # One match loop, in Python: no second copy of it in C (or any other compiled source).
    assert not [p.name for p in CORE_DIR.iterdir() if p.suffix in {".c", ".so", ".pyx"}]


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_only_pure_modules(module: str) -> None:
    bad = _impure(_imports(CORE_DIR / f"{module}.py"))
    assert not bad, f"engine/core/{module}.py imports impure modules: {bad}"


def test_forbidden_import_would_be_caught(tmp_path: pathlib.Path) -> None:
    """The checker itself can fail: a clock, a module of the node (even imported inside a
    function, or relatively from outside the core) are reported; core modules are not."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import time\nfrom engine.sequencer import Sequencer\nimport msgspec\n"
        "from engine.core.book import OrderBook\nfrom . import matcher\n"
        "def f():\n    import asyncio\n    from ..journal import format\n"
    )
    assert _impure(_imports(sample)) == ["time", "engine.sequencer", "asyncio", "engine.journal"]


def test_apply_reads_no_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.bench.workload import generate, make_engine

    commands = generate(3_000, seed=5).commands
    engine = make_engine()

    def boom(*_a, **_k):
        raise AssertionError("the core read a clock")

    for name in ("time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns"):
        monkeypatch.setattr(time, name, boom)
    events = [ev for cmd in commands for ev in engine.apply(cmd)]
    assert len(events) >= len(commands)
