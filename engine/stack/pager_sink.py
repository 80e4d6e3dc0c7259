"""The pager sink: records every Alertmanager webhook notification as one JSON line.

    python -m engine.stack.pager_sink --host 127.0.0.1 --port 9101 --out pages.jsonl

Any POST path is accepted (the stack points each person's receiver at its own path, e.g.
/page and /ticket; the payload names the receiver anyway). A line holds when it arrived
(`time`, Unix seconds), `receiver`, `status` (firing or resolved: the group's), the group's
`alertnames`, and per alert its name, status, instance, startsAt and endsAt. GET /-/ready
answers 200. `loom stack pages` lists the lines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MAX_BODY = 4 * 1024 * 1024


def record(payload: dict, path: str, now: float) -> dict:
    """The line for one notification (Alertmanager webhook payload, version 4)."""
    alerts = payload.get("alerts") or []
    return {
        "time": round(now, 3),
        "path": path,
        "receiver": payload.get("receiver", ""),
        "status": payload.get("status", ""),
        "alertnames": sorted({a.get("labels", {}).get("alertname", "") for a in alerts}),
        "group_key": payload.get("groupKey", ""),
        "alerts": [
            {
                "alertname": a.get("labels", {}).get("alertname", ""),
                "status": a.get("status", ""),
                "instance": a.get("labels", {}).get("instance", ""),
                "startsAt": a.get("startsAt", ""),
                "endsAt": a.get("endsAt", ""),
            }
            for a in alerts
        ],
    }


def read_pages(path: Path) -> list[dict]:
    """Every recorded notification, oldest first (none if the file does not exist yet)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


class _Handler(BaseHTTPRequestHandler):
    server: _Sink

    def do_GET(self) -> None:
        self._answer(200 if self.path == "/-/ready" else 404, b"ok\n" if self.path == "/-/ready" else b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            return self._answer(400, b"a JSON body (at most 4 MiB) is required\n")
        try:
            payload = json.loads(self.rfile.read(length))
            if not isinstance(payload, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            return self._answer(400, f"not an Alertmanager webhook payload: {exc}\n".encode())
        self.server.append(record(payload, self.path, time.time()))
        self._answer(200, b"ok\n")

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # one line per request on stderr
        sys.stderr.write(f"pager_sink: {self.address_string()} {format % args}\n")


class _Sink(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], out: Path) -> None:
        super().__init__(address, _Handler)
        self.out = out
        self.lock = threading.Lock()

    def append(self, line: dict) -> None:
        with self.lock, open(self.out, "a") as f:  # one whole line per write, readers never see half
            f.write(json.dumps(line) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.stack.pager_sink", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True, help="the JSON-lines file to append to")
    args = parser.parse_args(argv)
    try:
        sink = _Sink((args.host, args.port), Path(args.out))
    except OSError as exc:
        print(f"pager_sink: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"pager_sink: listening on {args.host}:{args.port}, recording to {args.out}", file=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        sink.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
