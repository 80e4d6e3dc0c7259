"""Start the real `loom run` as a subprocess for a test and stop it afterwards."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from serverproc import stop

REPO = Path(__file__).resolve().parent.parent
READY = re.compile(r"loom: ready on \S+ \(http (\d+)")


PORT = re.compile(r"(\w+) (\d+)")


@contextmanager
def loom_run(args: list[str], env: dict[str, str], timeout: float = 60.0):
    """Yields the base URL of the REST port once the readiness line appears (no fixed
    sleep); SIGTERM on exit, SIGKILL if it does not stop."""
    with loom_run_ports(args, env, timeout) as ports:
        yield f"http://127.0.0.1:{ports['http']}"


@contextmanager
def loom_run_ports(args: list[str], env: dict[str, str], timeout: float = 60.0):
    """Like loom_run, but yields every listening port by protocol ({"http": 8080, ...}),
    read from the readiness line."""
    with loom_run_process(args, env, timeout) as (_proc, ports):
        yield ports


@contextmanager
def loom_run_process(args: list[str], env: dict[str, str], timeout: float = 60.0, nofile: int | None = None):
    """Like loom_run_ports, but yields (the process, its ports): for tests that signal it.
    `nofile`: the node's RLIMIT_NOFILE (soft and hard), as `ulimit -n` would set it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "run", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env, "PYTHONUNBUFFERED": "1"},
        preexec_fn=None if nofile is None else lambda: _limit_nofile(nofile),
    )
    try:
        deadline = time.monotonic() + timeout
        port = None
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"loom run exited with {proc.poll()} before it was ready")
            m = READY.search(line)
            port = int(m.group(1)) if m else None
        assert port, "loom run printed no readiness line in time"
        listed = line[line.index("(") + 1 : line.index(")")]
        yield proc, {name: int(number) for name, number in PORT.findall(listed)}
    finally:
        stop(proc)


def _limit_nofile(n: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
