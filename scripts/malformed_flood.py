"""1,000 malformed HTTP requests without a key against a fresh `loom run` of the repo at
REPO (default: this one): how long they took, how much the log grew, how many tracebacks.
Compare two checkouts side by side:
    python scripts/malformed_flood.py /path/to/old/checkout; python scripts/malformed_flood.py
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = (
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"POST /v1/orders HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n",
)
RUN = (sys.executable, "-m", "engine.cli", "run")
CONFIG = (
    'host = "127.0.0.1"\nhttp_port = 0\nfix_port = -1\nbinary_port = -1\n'
    '[[instruments]]\nsymbol = "BTC-USD"\ntick_size = 5\n'
)


def main() -> None:
    repo = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "loom.toml").write_text(CONFIG)
        log = root / "log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [*RUN, "--config", str(root / "loom.toml"), "--data-dir", str(root / "data")],
                cwd=repo,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"},
            )
        try:
            while not (m := re.search(r"ready on \S+ \(http (\d+)", log.read_text())):
                assert proc.poll() is None, log.read_text()
                time.sleep(0.05)  # polling for the readiness line
            port, before = int(m.group(1)), log.stat().st_size
            started = time.perf_counter()
            for i in range(1000):
                with socket.create_connection(("127.0.0.1", port)) as s:
                    s.sendall(CASES[i % len(CASES)])
                    s.recv(65536)
            took = time.perf_counter() - started
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        text = log.read_text()
        grew = log.stat().st_size - before
        tracebacks = text.count("Traceback")
        print(f"{repo}: 1000 malformed requests in {took:.2f} s; log +{grew} bytes, {tracebacks} tracebacks")


if __name__ == "__main__":
    main()
