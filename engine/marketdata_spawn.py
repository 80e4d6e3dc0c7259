"""Throwaway `loom marketdata` processes beside a one-node cluster (a local NATS cluster and
`loom run --cluster`), for `loom bench fanout --marketdata K`."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from engine.cluster.drill import http, wait_for
from engine.cluster.natsserver import LocalNatsCluster
from engine.load.spawn import _limit_nofile, spawned_exchange

_READY = re.compile(r"loom: ready on (\S+) \(http (\d+)\)")


@contextmanager
def marketdata_process(urls: list[str], stream: str, nofile: int, timeout: float = 60.0) -> Iterator[tuple]:
    """One `loom marketdata`: yields (host, http port, pid) once it is in sync."""
    argv = [sys.executable, "-m", "engine.cli", "marketdata", "--cluster", ",".join(urls)]
    argv += ["--stream", stream, "--http-port", "0"]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: _limit_nofile(nofile),
    )
    stdout = proc.stdout
    assert stdout is not None  # started with stdout=PIPE
    try:
        deadline = time.monotonic() + timeout
        found = None
        while found is None and time.monotonic() < deadline:
            line = stdout.readline()
            if not line:
                raise RuntimeError(f"loom marketdata exited with {proc.wait()} before it was ready")
            found = _READY.search(line)
        if found is None:
            raise RuntimeError("loom marketdata did not listen in time")
        threading.Thread(target=lambda: [None for _ in stdout], daemon=True).start()  # keep draining
        host, port = found.group(1), int(found.group(2))
        wait_for(
            "loom marketdata in sync", lambda: http("GET", f"http://{host}:{port}/readyz")[0] == 200, timeout
        )
        yield host, port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def clustered_marketdata(config_text: str, count: int, nofile: int) -> Iterator[tuple[dict, list[tuple]]]:
    """A one-node cluster (node "a", leading) with `config_text`, and `count` marketdata
    processes: yields the node's spawn info and every server [(host, http port, pid)],
    the node first."""
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="loom-fanout-")))
        nats = stack.enter_context(LocalNatsCluster(tmp / "nats"))
        stream = f"FANOUT{uuid.uuid4().hex[:8].upper()}"
        head = f'cluster = "{",".join(nats.urls)}"\nnode_id = "a"\ncluster_stream = "{stream}"\n'
        info = stack.enter_context(
            spawned_exchange(config_text=head + config_text, nofile=nofile, fix_port=-1)
        )
        base = f"http://{info['host']}:{info['http']}"
        wait_for("the node to lead", lambda: http("GET", base + "/readyz")[0] == 200, 60)
        servers = [(info["host"], info["http"], info["pid"])]
        for _ in range(count):
            servers.append(stack.enter_context(marketdata_process(nats.urls, stream, nofile)))
        yield info, servers
