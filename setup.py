"""The one compiled part: the silent replay loop (engine/core/_replay.c, see engine/core/replay.py).

Optional: without a C compiler the install succeeds and replay runs the same loop in
Python. Everything else is declared in pyproject.toml."""

from setuptools import Extension, setup

replay_loop = Extension(
    "engine.core._replay", ["engine/core/_replay.c"], optional=True, extra_compile_args=["-O2"]
)
setup(ext_modules=[replay_loop])
