"""Write constraints.txt: the exact versions, in the venv this runs in, of every package the
project needs (its dependencies and every extra's, and theirs in turn).

pyproject.toml states lower bounds only (a library must not pin); constraints.txt records
what was tested, so `make run`, `make test` and CI on a fresh machine install the same.
Regenerate after a tested upgrade:

    .venv/bin/python scripts/constraints.py > constraints.txt

`--check` exits 1 naming any declared dependency that constraints.txt does not pin
(tests/test_packaging.py runs it), so a new dependency cannot skip the file.
"""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "loom-exchange"


def declared() -> list[Requirement]:
    """The requirements pyproject.toml names: dependencies and every extra's (the project's
    own self-references left out)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        texts.extend(extra)
    return [r for r in map(Requirement, texts) if canonicalize_name(r.name) != PROJECT]


def closure(roots: list[Requirement]) -> dict[str, str]:
    """{name: installed version} of the roots and everything they require (markers evaluated
    for this interpreter, with the extras each requirement asks for)."""
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(r.name, frozenset(r.extras)) for r in roots if r.marker is None or r.marker.evaluate()]
    while todo:
        name, extras = todo.pop()
        name = canonicalize_name(name)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            sys.exit(f"{name} is not installed in {sys.prefix}: install the project with every extra first")
        found[name] = dist.version
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ("", *extras)):
                todo.append((sub.name, frozenset(sub.extras)))
    return found


def pinned(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = version
    return out


def main(argv: list[str]) -> int:
    if argv[1:] == ["--check"]:
        pins = pinned(ROOT / "constraints.txt")
        missing = [str(r) for r in declared() if canonicalize_name(r.name) not in pins]
        for req in missing:
            print(f"constraints.txt does not pin {req}: regenerate it (scripts/constraints.py)")
        return 1 if missing else 0
    print("# The versions tested (scripts/constraints.py writes this file from a venv with every extra).")
    print("# make run / make test / CI install with `-c constraints.txt`; pyproject.toml keeps lower bounds.")
    for name, version in sorted(closure(declared()).items()):
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
