"""Start a throwaway `loom run` in a subprocess for `loom load` (server and load generator
on one machine, each its own process)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

LOAD_ACCOUNTS = {"load-trader-a-key-0000": "load-a", "load-trader-b-key-0000": "load-b"}
LOAD_ADMIN_KEY = "load-admin-key-000000"
_READY = re.compile(r"loom: ready on (\S+) \((.*)\);")


def parse_ready(line: str) -> tuple[str, dict[str, int]] | None:
    """(host, {protocol: port}) from `loom run`'s readiness line, or None for another line."""
    m = _READY.search(line)
    if m is None:
        return None
    return m.group(1), {name: int(port) for name, port in (part.split() for part in m.group(2).split(", "))}


def suite_comp_ids(account: str, n: int) -> list[str]:
    """FIX SenderCompIDs bound to a load account (an account may use 16 unbound ones)."""
    return [f"S-{account}-{i}" for i in range(n)]


def _config_text(
    snapshot_every_s: float = 0, snapshot_writer: str = "follower", fix_sessions: int = 0
) -> str:
    """`fix_sessions`: that many SenderCompIDs bound to each account (suite_comp_ids)."""
    lines = [
        'host = "127.0.0.1"',
        f'admin_key = "{LOAD_ADMIN_KEY}"',
        "rate_limit = 0",  # the load generator measures the exchange, not its limits
        "binary_rate_limit = 0",
        "[snapshots]",
        "every_commands = 0",
        f"every_seconds = {snapshot_every_s}",
        f'writer = "{snapshot_writer}"',
        "[[instruments]]",
        'symbol = "LOAD-USD"',
        "tick_size = 1",
        "lot_size = 1",
        "min_qty = 1",
        "max_qty = 1000000",
    ]
    for key, name in LOAD_ACCOUNTS.items():
        lines += ["[[accounts]]", f'name = "{name}"', f'api_key = "{key}"']
        if fix_sessions:
            lines.append(f"fix_comp_ids = {suite_comp_ids(name, fix_sessions)!r}".replace("'", '"'))
    return "\n".join(lines) + "\n"


@contextmanager
def spawned_exchange(
    timeout: float = 60.0,
    event_loop: str | None = None,
    snapshot_every_s: float = 0,
    seed_data: Path | None = None,
    config_text: str | None = None,
    nofile: int | None = None,
    fix_port: int = 0,
):
    """Yields {"host": ..., "http": port, "fix": port, "binary": port, "data_dir": path}.
    `event_loop` is the server's `--event-loop` (default: its own default); `seed_data`: a
    data directory to start from (copied; e.g. a prepared deep book); `config_text`: the
    node's TOML instead of the load generator's; `nofile`: the node's RLIMIT_NOFILE, soft
    and hard (as `ulimit -n` sets it); `fix_port` -1 leaves FIX off (its share of the
    descriptors goes to the other listeners)."""
    tmp = Path(tempfile.mkdtemp(prefix="loom-load-"))
    config = tmp / "load.toml"
    config.write_text(config_text if config_text is not None else _config_text(snapshot_every_s))
    if seed_data is not None:
        shutil.copytree(seed_data, tmp / "data")
    cmd = [
        sys.executable,
        "-m",
        "engine.cli",
        "run",
        "--config",
        str(config),
        "--data-dir",
        str(tmp / "data"),
        "--http-port",
        "0",
        "--fix-port",
        str(fix_port),
        "--binary-port",
        "0",
        *(["--event-loop", event_loop] if event_loop else []),
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ},
        preexec_fn=None if nofile is None else lambda: _limit_nofile(nofile),
    )
    try:
        deadline = time.monotonic() + timeout
        info: dict = {}
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"loom run exited with {proc.wait()} before it was ready")
            ready = parse_ready(line)
            if ready:
                info["host"] = ready[0]
                info.update(ready[1])
                break
        else:
            raise RuntimeError("loom run did not become ready in time")
        info["data_dir"] = tmp / "data"
        info["pid"] = proc.pid
        # Keep draining the server's output so it never blocks on a full pipe.
        import threading

        log: list[str] = []  # the server's lines from here on (bounded)
        info["log"] = log
        threading.Thread(
            target=lambda: [log.append(line) for line in proc.stdout if len(log) < 10_000], daemon=True
        ).start()
        yield info
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _limit_nofile(n: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
