"""The optional extras (pyproject.toml [project.optional-dependencies]) and the clear error
a command that needs one gives when it is not installed: `loom run` needs none of them."""

from __future__ import annotations

import importlib


class MissingExtra(RuntimeError):
    """A command needs a package of an extra that is not installed; `loom` prints the
    message and exits 2."""


def missing_extra_message(what: str, package: str, extra: str) -> str:
    return (
        f"{what} needs {package}, which `make run` does not install: "
        f"pip install 'loom-exchange[{extra}]' (or `make test`, which installs every extra)"
    )


def require(module: str, package: str, extra: str, what: str) -> None:
    """Import `module`, or raise MissingExtra naming the extra that installs it."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise MissingExtra(missing_extra_message(what, package, extra)) from None
