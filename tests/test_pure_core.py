"""The matching core stays pure: no clock, no I/O, no randomness, no telemetry.

Checked two ways: statically (every import of a core module is on an allowlist, and an
engine import may only name another core module) and dynamically (applying commands with
every clock patched to explode)."""

from __future__ import annotations

import ast
import pathlib
import re
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORE = ["domain", "commands", "events", "book", "matcher", "risk", "state", "invariants", "replay"]
COMPILED_CORE = ["_replay"]  # engine/_replay.c, the replay loop in C
ALLOWED = {"__future__", "bisect", "collections", "collections.abc", "enum", "hashlib", "msgspec",
           "typing", "dataclasses"}  # fmt: skip


def _imports(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    return names


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_only_pure_modules(module: str) -> None:
    bad = []
    for name in _imports(ROOT / "engine" / f"{module}.py"):
        if name.startswith("engine."):
            if name.removeprefix("engine.") not in CORE + COMPILED_CORE:
                bad.append(name)
        elif name not in ALLOWED:
            bad.append(name)
    assert not bad, f"engine/{module}.py imports impure modules: {bad}"


def test_the_compiled_core_includes_only_the_python_api() -> None:
    """The C replay loop may use the Python C API and nothing else: no libc headers, so
    no clock, file or socket calls can creep in."""
    for module in COMPILED_CORE:
        source = (ROOT / "engine" / f"{module}.c").read_text()
        includes = re.findall(r"^\s*#\s*include\s*[<\"]([^>\"]+)", source, re.MULTILINE)
        assert includes and set(includes) <= {"Python.h", "structmember.h"}, includes
        assert not re.search(r"\b(time|clock|gettimeofday|fopen|open|read|write|rand)\s*\(", source)


def test_forbidden_import_would_be_caught(tmp_path: pathlib.Path) -> None:
    """The checker itself can fail: a module importing time is reported."""
    sample = tmp_path / "sample.py"
    sample.write_text("import time\nfrom engine.sequencer import Sequencer\nimport msgspec\n")
    names = _imports(sample)
    assert "time" in names and "engine.sequencer" in names
    assert [n for n in names if n not in ALLOWED and n.removeprefix("engine.") not in CORE] == [
        "time",
        "engine.sequencer",
    ]


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
