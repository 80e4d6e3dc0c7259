"""The mypy ratchet beyond engine/core: the count of type errors may fall, never rise.

`make test` runs `mypy --strict engine/core` (clean), then this script: mypy with the project's
[tool.mypy] config over the packages below, its error count compared with the committed
baseline. More errors than the baseline fails (the new ones are printed); fewer passes with
a request to lower the baseline, so the gain cannot be lost later.

    .venv/bin/python scripts/mypy_ratchet.py          # check
    .venv/bin/python scripts/mypy_ratchet.py --write  # record the current count as the baseline
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "telemetry", "alerts", "dashboards")
BASELINE = REPO / ".ci" / "mypy-baseline.txt"

_FOUND = re.compile(r"^Found (\d+) errors? in \d+ files?", re.MULTILINE)
_CLEAN = re.compile(r"^Success: no issues found", re.MULTILINE)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    message: str


def count_errors(mypy_output: str) -> int:
    """The error count of mypy's summary line; a run without one (mypy crashed, or its
    arguments were wrong) is an error, not zero."""
    if found := _FOUND.search(mypy_output):
        return int(found.group(1))
    if _CLEAN.search(mypy_output):
        return 0
    raise ValueError(f"no mypy summary line in its output:\n{mypy_output[-2000:]}")


def judge(count: int, baseline: int, baseline_path: str = str(BASELINE)) -> Verdict:
    """Above the baseline fails; below it passes but asks for the baseline to be lowered."""
    if count > baseline:
        return Verdict(
            False,
            f"mypy ratchet: {count} errors, above the baseline of {baseline} ({baseline_path}). "
            f"Fix the {count - baseline} new one(s) listed above (prefer a real type to `# type: ignore`).",
        )
    if count < baseline:
        return Verdict(
            True,
            f"mypy ratchet: {count} errors, below the baseline of {baseline}: well done. Lower the baseline "
            f"to keep the gain: write {count} to {baseline_path} "
            f"(or run `python scripts/mypy_ratchet.py --write`) and commit it.",
        )
    return Verdict(True, f"mypy ratchet: {count} errors, at the baseline ({baseline_path}).")


def read_baseline(path: Path = BASELINE) -> int:
    text = path.read_text().split("#", 1)[0].strip()
    if not text.isdigit():
        raise ValueError(f"{path}: expected an error count (a whole number), found {text!r}")
    return int(text)


def run_mypy() -> str:
    done = subprocess.run(
        [sys.executable, "-m", "mypy", *PACKAGES], cwd=REPO, capture_output=True, text=True, check=False
    )
    return done.stdout + done.stderr


def main(argv: list[str]) -> int:
    output = run_mypy()
    try:
        count = count_errors(output)
    except ValueError as exc:
        print(f"mypy ratchet: {exc}", file=sys.stderr)
        return 2
    if argv[1:] == ["--write"]:
        BASELINE.write_text(f"{count}\n")
        print(f"mypy ratchet: baseline set to {count} ({BASELINE})")
        return 0
    verdict = judge(count, read_baseline(), str(BASELINE.relative_to(REPO)))
    if not verdict.ok:
        print(output, end="")
    print(verdict.message, file=sys.stdout if verdict.ok else sys.stderr)
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
