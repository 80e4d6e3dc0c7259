"""Structured logs and the access log (issue 12), from a real `loom run --log-format json
--access-log-sample 1`: every line on stdout and stderr is one JSON object with ts (RFC 3339
UTC, ms), level, logger and msg; the ids that apply (trace_id, order_id, seq, account) are
fields; the access log has REST requests and WebSocket sessions and never a key or a query."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from serverproc import stop

from engine.access_log import AccessLog
from engine.logfmt import JsonFormatter, TextFormatter, fields, log_fields

REPO = Path(__file__).resolve().parent.parent
TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
ALICE_KEY = "alice-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"
SECRET = "query-secret-0123456789"
RUN = [sys.executable, "-m", "engine.cli", "run"]
FLAGS = ["--log-format", "json", "--access-log-sample", "1", "--event-loop", "asyncio"]
CONFIG = f"""
host = "127.0.0.1"
http_port = 0
fix_port = -1
binary_port = -1
admin_key = "{ADMIN_KEY}"
[[instruments]]
symbol = "BTC-USD"
tick_size = 5
[[accounts]]
name = "alice"
api_key = "{ALICE_KEY}"
"""


def request(base: str, method: str, path: str, body: dict | None = None, key: str = ALICE_KEY):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("X-API-Key", key)
    if data:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers


def wait_ready(proc: subprocess.Popen, stdout: Path, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(r"loom: ready on \S+ \(http (\d+)", stdout.read_text())
        if m:
            return f"http://127.0.0.1:{m.group(1)}"
        assert proc.poll() is None, f"loom run exited {proc.returncode}: {stdout.read_text()[-2000:]}"
        time.sleep(0.05)  # polling the readiness line, not waiting a fixed time
    raise AssertionError("loom run printed no readiness line in time")


async def websocket_session(base: str) -> None:
    headers = {"X-API-Key": ALICE_KEY}
    async with aiohttp.ClientSession() as http, http.ws_connect(base + "/v1/ws", headers=headers) as ws:
        await ws.send_json({"op": "ping", "req_id": 1})
        assert (await ws.receive_json(timeout=10))["type"] == "pong"
        await ws.send_json({"op": "ping", "req_id": 2})
        assert (await ws.receive_json(timeout=10))["type"] == "pong"


def test_loom_run_json_logs_and_access_log(tmp_path):
    conf = tmp_path / "loom.toml"
    conf.write_text(CONFIG)
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [*RUN, "--config", str(conf), "--data-dir", str(tmp_path / "d"), *FLAGS],
            cwd=REPO,
            stdout=stdout,
            stderr=stderr,
            env={"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"},
        )
    try:
        base = wait_ready(proc, out)
        order = {"symbol": "BTC-USD", "side": "buy", "qty": 1, "price": 100}
        status, accepted, headers = request(base, "POST", "/v1/orders", order)
        assert status == 201
        order_id, accepted_trace = accepted["order"]["order_id"], headers["X-Trace-Id"]
        status, _, headers = request(base, "POST", "/v1/orders", {**order, "price": 101})
        assert status == 422
        rejected_trace = headers["X-Trace-Id"]
        status, _, _ = request(base, "GET", f"/v1/orders/{order_id}?api_key={SECRET}")
        assert status == 200
        faults = {"journal_write_errors": True}
        assert request(base, "POST", "/v1/admin/faults", faults, key=ADMIN_KEY)[0] == 200
        status, _, headers = request(base, "POST", "/v1/orders", order)
        assert status == 503
        refused_trace = headers["X-Trace-Id"]
        faults = {"journal_write_errors": False}
        assert request(base, "POST", "/v1/admin/faults", faults, key=ADMIN_KEY)[0] == 200
        assert request(base, "POST", "/v1/orders", order)[0] == 201  # the run of refusals ends
        asyncio.run(websocket_session(base))
    finally:
        stop(proc)
    assert proc.returncode == 0
    lines = [(name, line) for name in (out, err) for line in name.read_text().splitlines() if line.strip()]
    records = []
    for name, line in lines:
        record = json.loads(line)  # every line of both streams: JSON, else this raises
        assert {"ts", "level", "logger", "msg"} <= record.keys(), (name.name, line)
        assert TS.fullmatch(record["ts"]) and record["level"] in ("INFO", "WARNING", "ERROR"), line
        records.append(record)
    text = "\n".join(line for _, line in lines)
    assert ALICE_KEY not in text and ADMIN_KEY not in text and SECRET not in text
    msgs = [r["msg"] for r in records]
    assert any(m.startswith("loom: ready on") for m in msgs) and any("recovered to seq" in m for m in msgs)
    drill = "drill: journal write errors injected"
    assert any(r["logger"] == "loom.http" and drill in r["msg"] for r in records)
    assert any("journal writes failing" in m for m in msgs) and any("succeed again" in m for m in msgs)
    final = next(r for r in records if r["msg"].startswith("final snapshot at seq"))
    assert final["seq"] == int(final["msg"].rsplit(" ", 1)[1])
    access = [r for r in records if r["logger"] == "loom.access"]
    rest: dict = {}
    for r in access:
        if r.get("protocol") == "http":
            rest.setdefault((r["method"], r["status"]), r)  # the first of each
    placed = rest["POST", 201]
    assert placed["path"] == "/v1/orders" and placed["trace_id"] == accepted_trace
    assert placed["order_id"] == order_id and placed["account"] == "alice"
    assert placed["remote"] == "127.0.0.1" and placed["duration_ms"] >= 0
    assert rest["POST", 422]["trace_id"] == rejected_trace
    assert rest["POST", 503]["trace_id"] == refused_trace != accepted_trace
    read = rest["GET", 200]
    assert read["path"] == f"/v1/orders/{order_id}" and read["order_id"] == str(order_id)
    ws = {r["event"]: r for r in access if r.get("protocol") == "websocket"}
    assert ws["open"]["account"] == "alice"
    assert ws["close"]["messages_in"] == 2 and ws["close"]["messages_out"] == 2
    assert ws["close"]["close_code"] == 1000


def test_json_lines_hold_an_exception_in_one_field_and_context_ids():
    log = logging.getLogger("loom.test")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        import sys as _sys

        exc_info = _sys.exc_info()
    record = log.makeRecord("loom.test", logging.ERROR, __file__, 1, "failed %s", ("x",), exc_info)
    with log_fields(trace_id="ab" * 16, account="alice"):
        line = JsonFormatter().format(record)
        text = TextFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["msg"] == "failed x" and parsed["trace_id"] == "ab" * 16 and parsed["account"] == "alice"
    assert parsed["exc"].startswith("Traceback") and "ValueError: boom" in parsed["exc"]
    assert "trace_id=" + "ab" * 16 in text.splitlines()[0]
    ids = fields(order_id=7, seq=9)
    own = log.makeRecord("loom.test", logging.INFO, __file__, 1, "m", (), None, extra=ids)
    assert {"order_id": 7, "seq": 9}.items() <= json.loads(JsonFormatter().format(own)).items()


def test_access_log_sampling_is_off_by_default_and_checked():
    assert not any(AccessLog().sampled() for _ in range(1000))
    assert all(AccessLog(1).sampled() for _ in range(1000))
    assert 200 < sum(AccessLog(0.5).sampled() for _ in range(1000)) < 800
    with pytest.raises(ValueError):
        AccessLog(1.5)
