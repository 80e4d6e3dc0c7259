"""What a newcomer sees first (issue 14), on a real `loom run --demo`: the start-up banner
names the landing page, the REST API and its OpenAPI document, the WebSocket, /metrics and
the docs, and every http URL it prints answers; the landing page at `/` links the same, and
every link on it answers."""

from __future__ import annotations

import os
import queue
import re
import threading
import urllib.error
import urllib.request

from loomproc import REPO, loom_run_process

URL = re.compile(r"(?:http|ws)://[^\s),;]+")
HREF = re.compile(r'href="([^"]+)"')


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def test_banner_and_landing_page_name_every_endpoint_and_document(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    args = ["--demo", "--rate", "50", "--data-dir", str(tmp_path / "data")]
    with loom_run_process([*args, "--http-port", "0", "--fix-port", "0", "--binary-port", "0"], env) as (
        proc,
        ports,
    ):
        lines: list[str] = []
        out: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [out.put(line) for line in proc.stdout], daemon=True).start()
        while not lines or not lines[-1].startswith("loom: docs:"):
            try:
                lines.append(out.get(timeout=30).strip())
            except queue.Empty:
                raise AssertionError(f"no 'loom: docs:' line within 30 s of the last one: {lines}") from None
        banner = "\n".join(lines)
        base = f"http://127.0.0.1:{ports['http']}"
        for wanted in (
            f"{base}/",
            f"{base}/metrics",
            f"{base}/v1/openapi.json",
            f"ws://127.0.0.1:{ports['http']}/v1/ws",
        ):
            assert wanted in banner, (wanted, banner)
        for wanted in ("docs/architecture.md", "docs/websocket.md", "docs/fix.md", "examples/loom.toml"):
            assert wanted in banner
        assert f"FIX 4.4 on 127.0.0.1:{ports['fix']} (TargetCompID LOOM" in banner
        assert "GB a day" in banner  # the demo keeps its whole journal: it says what that costs
        for url in URL.findall(banner):
            if url.startswith("http"):
                status, _kind, _body = get(url)
                assert status == 200, (url, status)

        status, kind, page = get(base + "/")
        assert status == 200 and kind.startswith("text/html")
        links = HREF.findall(page)
        for wanted in (
            "/metrics",
            "/v1/openapi.json",
            "/v1/instruments",
            "/docs/architecture.md",
            "/docs/fix.md",
        ):
            assert wanted in links, (wanted, links)
        assert f"ws://127.0.0.1:{ports['http']}/v1/ws" in page
        for link in links:
            status, _kind, _body = get(base + link)
            assert status == 200, (link, status)
        assert get(base + "/docs/architecture.md")[2] == (REPO / "docs" / "architecture.md").read_text()
        assert get(base + "/docs/../README.md")[0] == 404
        assert get(base + "/docs/README.md")[0] == 404
