"""What every test helper that runs a real server needs: a free loopback port, the
binary, readiness by polling (never a fixed sleep), the log's tail in failures, and a
clean stop (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from waiting import wait_until

from engine.stack.procs import free_port

__all__ = ["Server", "free_port", "run_server", "stop"]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Server:
    """A running server: `base` is its HTTP URL."""

    name = "server"

    def __init__(self, base: str, proc: subprocess.Popen, log: Path):
        self.base = base
        self.proc = proc
        self.log = log

    def wait_for(self, what: str, probe: Callable[[], object], timeout: float = 60.0, interval: float = 0.25):
        """Polls `probe()` until it returns something truthy (returned) or the deadline
        passes (AssertionError naming `what`, the last value and the log's tail)."""

        def running() -> None:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

        return wait_until(
            what,
            probe,
            timeout=timeout,
            interval=interval,
            retry_on=(urllib.error.URLError, ConnectionError, TimeoutError),
            guard=running,
            context=self.tail,
        )

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextmanager
def run_server(cls: type[Server], argv: Callable[[int], list[str]], workdir: Path, timeout: float):
    """Starts `argv(port)` on a free port with its output in `workdir/<name>.log`, yields a
    `cls` once GET /-/ready answers 200, and stops it on exit."""
    port = free_port()
    log = workdir / f"{cls.name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(argv(port), cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    server = cls(f"http://127.0.0.1:{port}", proc, log)
    try:

        def ready() -> bool:
            with urllib.request.urlopen(server.base + "/-/ready", timeout=5) as resp:
                return resp.status == 200

        server.wait_for(f"{cls.name} /-/ready", ready, timeout=timeout, interval=0.1)
        yield server
    finally:
        stop(proc)
