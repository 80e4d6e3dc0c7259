"""Daemon processes of the stack: started in their own session (so `loom stack up` may exit
and `down` can signal the whole group), identified by pid AND start time (a pid reused by
an unrelated process after a reboot or wrap-around is never signalled), stopped by group."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class StackError(RuntimeError):
    """A component failed to start, answer or stop: the message says which and why."""


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (bound to port 0, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields from the state on (field 3), or None if there is no such
    process. The command name (field 2) may hold spaces and parentheses: split after it."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22), None if gone."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def alive(pid: int, started: int | None = None) -> bool:
    """`pid` runs (a zombie does not) and, given `started`, is the process started then."""
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid` (helpers a node started stay in its group)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
                found.append(int(entry.name))
    return found


def processes_under(directory: Path) -> list[int]:
    """Live processes whose command line or working directory names a path under
    `directory`: what a stack directory must not have after `down`."""
    root = str(directory.resolve())
    found, mine = [], ancestors()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in mine or not alive(int(entry.name)):
            continue
        try:
            argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(f"/proc/{entry.name}/cwd")
        except OSError:
            continue
        names = [a.decode(errors="replace") for a in argv] + [cwd]
        if any(root == n or root + "/" in n for n in names):
            found.append(int(entry.name))
    return found


@dataclass
class Proc:
    """A started daemon as the state file records it."""

    pid: int
    started: int  # start time in clock ticks, see start_time()

    def alive(self) -> bool:
        return alive(self.pid, self.started)


def spawn(argv: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None) -> Proc:
    """Starts `argv` in a new session (its own process group) with stdout and stderr
    appended to `log`; stdin is /dev/null."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = start_time(proc.pid)
    if started is None:  # it died at once; its log says why
        proc.wait()
        raise StackError(f"{argv[0]} exited at once ({proc.returncode}):\n{tail(log)}")
    proc.returncode = 0  # detached: Popen must not reap or warn about it later; _reap does
    return Proc(proc.pid, started)


def _reap(pid: int) -> None:
    """Collects `pid`'s exit status if it is our child (else it is init's business)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop_group(proc: Proc, timeout: float = 20.0) -> bool:
    """SIGTERM the process group `proc` leads (only if `proc` is still the process started
    then), SIGKILL what is left after `timeout`; True once nothing of it runs."""
    if not proc.alive():
        _reap(proc.pid)
        if alive(proc.pid):  # the pid is another process's now, so is its group: not ours
            return True
        if not group_members(proc.pid):
            return True
        timeout = 0.0  # the leader died, its helpers linger: no drain to wait for
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(proc.pid)
            if not group_members(proc.pid):
                return True
            time.sleep(0.05)
    return not group_members(proc.pid)


def kill_group(proc: Proc) -> None:
    """SIGKILL the whole group at once (a crash, for the drill) and wait until it is gone."""
    if proc.alive():
        os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while group_members(proc.pid) and time.monotonic() < deadline:
        _reap(proc.pid)
        time.sleep(0.02)
    _reap(proc.pid)


def tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """GET `url` answers 200 (False on any other status or a connection error)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def wait_until(
    what: str,
    probe: Callable[[], object],
    timeout: float,
    interval: float = 0.1,
    proc: Proc | None = None,
    log: Path | None = None,
):
    """Polls `probe()` until it returns something truthy (returned); StackError naming
    `what` (and the log's tail) past the deadline or when `proc` has exited."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        if proc is not None and not proc.alive():
            raise StackError(f"{what}: the process exited\n{tail(log) if log else ''}")
        try:
            last = probe()
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise StackError(
                f"timed out after {timeout:g} s waiting for {what}; last: {last!r}\n"
                + (tail(log) if log else "")
            )
        time.sleep(interval)


def get_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def ancestors() -> set[int]:
    """This process and the ones that started it (never to be stopped as leftovers)."""
    found, pid = set(), os.getpid()
    while pid > 1 and pid not in found:
        found.add(pid)
        fields = _stat(pid)
        pid = int(fields[1]) if fields else 0
    return found
